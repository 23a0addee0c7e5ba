"""Exceptions for mistakes a user can fix. The CLI turns them into a message and an exit code."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none): native errors run over many."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class GradfitError(Exception):
    """A problem with the user's input or environment; exit code 2 unless a subclass says otherwise."""

    exit_code = 2


class ConfigError(GradfitError):
    """The config file or a --set override is malformed, unknown or out of range."""


class DataError(GradfitError):
    """A dataset is missing, malformed, or does not fit the model."""


class DeviceError(GradfitError):
    """The requested device is not available to JAX."""


class DistributedError(GradfitError):
    """``--distributed`` could not form the group of processes."""


class RunDirError(GradfitError):
    """A run directory cannot be created or is not a gradfit run."""


class TrainingFailed(GradfitError):
    """Training ran but failed (for example it diverged); exit code 1.

    ``summary``: the run's ``gradfit.runs.rundir.Summary`` (a sweep's: what sweep.json holds)."""

    exit_code = 1

    def __init__(self, message: str, summary=None):
        super().__init__(message)
        self.summary = summary


class Interrupted(TrainingFailed):
    """Training was stopped by SIGINT/SIGTERM after saving its state; exit code 130."""

    exit_code = 130
