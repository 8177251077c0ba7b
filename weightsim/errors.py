"""Error types. Every error a user can cause is a ``WeightsimError``; the CLI
turns it into one line on stderr and exit code 2."""


class WeightsimError(Exception):
    """Bad input or unusable data: reported to the user in one line."""


class DatasetError(WeightsimError):
    """A dataset is unknown, unreadable or malformed."""


class SweepNotFound(WeightsimError):
    """No sweep of that name is recorded in the store."""


class SpecError(WeightsimError):
    """An ArchSpec, state dict or training config does not fit together."""


class StoreError(WeightsimError):
    """A store URI is invalid, or the store cannot be reached or written.

    ``transient``: whether trying again may help (a dropped connection, an
    unreachable endpoint) or not (a disk full, no permission, an invalid
    name): tasks retry only transient errors."""

    def __init__(self, message: str, transient: bool = True):
        super().__init__(message)
        self.transient = transient


class TableError(WeightsimError):
    """A weight table is missing, truncated, corrupted or inconsistent.

    ``uri`` names the table, so a bad run can always be located.
    """

    def __init__(self, uri: str, reason: str):
        super().__init__(f"bad weight table {uri}: {reason}")
        self.uri = uri
        self.reason = reason


class DivergenceError(WeightsimError):
    """Training produced a non-finite loss or weight: in ``epoch`` (1-based;
    None: only the final weights) with mean training ``loss``."""

    def __init__(self, message: str, epoch: int | None = None, loss: float | None = None):
        super().__init__(message)
        self.epoch = epoch
        self.loss = loss
