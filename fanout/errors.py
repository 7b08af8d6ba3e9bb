"""The one exception the Python API raises; the CLI prints the same message as ``error: <message>``."""

from __future__ import annotations


class FanoutError(Exception):
    """A job that cannot run, or a run that failed; the message is the CLI's one line, naming the field and the fix.

    ``field`` names the job field (or option) at fault, when there is one; ``exit_code`` is what the CLI exits with:
    2 for an invalid job, 1 for any other failure.
    """

    def __init__(self, message: str, field: str = "", exit_code: int = 1) -> None:
        super().__init__(message)
        self.field = field
        self.exit_code = exit_code
