"""``python -m compress.cli``: the same as the ``compress`` command."""

from compress.cli import app

app()
