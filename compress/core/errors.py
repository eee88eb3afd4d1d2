"""Errors a user can act on.

Every problem with the user's input (a path, a file, a recipe value) is raised as ``InputError`` with a
one-line message that names the input and what was expected; the CLI prints it and exits with code 2.
``ValidationFailed`` means the run completed but an exported model failed a check (exit code 1).
Anything else that escapes a stage is an ``InternalError`` (exit code 3); interruptions exit 130 (Ctrl-C)
or 143 (SIGTERM). Nothing half-written is left in any of these cases.
"""


class InputError(Exception):
    """Bad input: the message names the input and what was expected (CLI exit code 2)."""


class ValidationFailed(Exception):
    """The artifacts were produced but failed a parity or budget check (CLI exit code 1)."""


class TrainingDiverged(ValidationFailed):
    """Training produced a non-finite loss: the run stops before anything is exported (exit code 1)."""


class Terminated(BaseException):
    """SIGTERM (a CI runner cancelling the job), handled like Ctrl-C: clean up, exit 143."""


class InternalError(Exception):
    """An unexpected failure inside a stage (a bug or a library failure, not the user's input): exit code 3,
    one line naming the stage, the traceback saved to a file."""

    def __init__(self, stage: str, message: str, traceback_file: str | None):
        super().__init__(f"internal error in stage {stage!r}: {message}"
                         + (f" (traceback saved to {traceback_file})" if traceback_file else ""))
        self.stage, self.traceback_file = stage, traceback_file
