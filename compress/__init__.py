"""compress: distill a teacher ensemble into a compact student, export it, check it in its runtime."""

import time as _time

__version__ = "0.1.0"
STARTED = _time.perf_counter()  # when this process first imported compress: a command's own start
