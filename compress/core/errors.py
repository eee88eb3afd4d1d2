"""Errors a user can act on.

Every problem with the user's input (a path, a file, a recipe value) is raised as ``InputError`` with a
one-line message that names the input and what was expected; the CLI prints it and exits with code 2.
``ValidationFailed`` means the run completed but an exported model failed a check (exit code 1).
"""


class InputError(Exception):
    """Bad input: the message names the input and what was expected (CLI exit code 2)."""


class ValidationFailed(Exception):
    """The artifacts were produced but failed a parity or budget check (CLI exit code 1)."""
