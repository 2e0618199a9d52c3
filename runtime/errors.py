"""One exception tree for all of Kiln; the CLI turns any KilnError into a one-line message.

It lives in `runtime` (the bottom of the import graph) so that runtime, calibration and exporter
raise the same types without importing each other upward.
"""


class KilnError(Exception):
    """Base of every error Kiln raises for a user mistake or an environment problem."""

    exit_code = 1


class ConfigError(KilnError, ValueError):
    """A config value is invalid: the message says what was received and what is valid."""

    exit_code = 2


class SourceError(KilnError):
    """A checkpoint/source cannot be loaded (missing, not a model, corrupt, unsafe)."""


class ArtifactError(KilnError):
    """An artifact directory is missing, invalid, or would be overwritten."""


class InputError(KilnError, ValueError):
    """A feed or request does not match what the model expects."""


class BackendError(KilnError):
    """A backend library is missing, or it cannot run where it was asked to."""


class TaskError(KilnError):
    """An operation does not apply to the artifact's task."""


class ValidationError(KilnError):
    """A candidate model disagrees with its reference beyond the stated tolerance."""


class DataError(KilnError):
    """A dataset file is unreadable or malformed."""


class ColumnError(DataError):
    """A data file lacks a column (a JSONL field) a reader needs. `role` ("text" or "label") lets the CLI
    name the option of the command at hand that chooses that column, if it has one."""

    def __init__(self, message: str, role: str, column: str) -> None:
        super().__init__(message)
        self.role, self.column = role, column


class OverloadError(KilnError):
    """The inference queue is full; the caller should retry later."""


class ModelOutputError(KilnError):
    """The model produced NaN/inf: the artifact is corrupt or numerically unstable (never an answer).

    `index` is the position of the first such input in the call that raised it (a Batcher can map it
    back to its request).
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index
