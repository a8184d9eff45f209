"""One error hierarchy. The CLI and stage shells print ``str(err)`` and exit with ``err.exit_code``."""

from __future__ import annotations


class FrugalError(Exception):
    """An error the user can act on: the message says what is wrong and what to do."""

    exit_code = 1
    transient = False  # worth retrying as it is: the flow's tasks retry these


class ConfigError(FrugalError):
    """params.yaml, an override or a command-line argument is wrong."""

    exit_code = 2


class StorageError(FrugalError):
    """The object store cannot be reached or refused a request."""

    exit_code = 1


class TransientStorageError(StorageError):
    """A fault worth retrying: connection refused, timeout, 5xx."""

    transient = True


class Preempted(FrugalError):
    """The stage was told to stop (SIGTERM: a spot notice, a node drain) and saved what it could."""

    exit_code = 75  # EX_TEMPFAIL
    transient = True

    def __init__(self, message: str, *, lost_s: float | None = None, fit_s: float = 0.0) -> None:
        super().__init__(message)
        self.lost_s = lost_s  # seconds of work no checkpoint kept (None: the whole attempt)
        self.fit_s = fit_s  # seconds spent training before the stop


class NotFound(StorageError):
    """The object does not exist (HTTP 404 / NoSuchKey): matched by error code, never by text."""


class PreconditionFailed(StorageError):
    """A conditional write lost a race (HTTP 412)."""


class DataError(FrugalError):
    """The input data cannot be used (empty source, no classes...)."""

    exit_code = 2


class Rejected(FrugalError):
    """The pipeline ran and said no: validation failed or the gate rejected the model."""

    exit_code = 3
