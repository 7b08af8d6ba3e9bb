"""Errors whose class names are part of the state machine's contract.

Lambda reports an unhandled exception with ``errorType`` set to the class
name, and the ASL's Retry/Catch match on it: keep these names stable.
"""


class InvalidJob(Exception):
    """The job cannot run as written; the message names the field and the fix."""

    def __init__(self, message: str, field: str = "") -> None:
        # one line, whatever the job's keys and values quoted in it hold: the CLI prints it, a Fail state shows it
        super().__init__(_one_line(message))
        self.field = _one_line(field)


class ModelThrottled(Exception):
    """The model kept throttling past the per-task budget; the batch is retried by the state machine."""


class BatchIncomplete(Exception):
    """The batch stopped starting calls before its Lambda time ran out; the state machine's retry continues it."""


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii") for c in text)
