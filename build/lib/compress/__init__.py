"""compress: distill a teacher ensemble into a compact student, export it, check it in its runtime."""

__version__ = "0.1.0"
