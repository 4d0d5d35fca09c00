"""Errors a user can act on. The CLI prints their message alone (no traceback)."""


class AnobenchError(Exception):
    """Base class: the message names the file or key at fault and what was expected."""


class DataError(AnobenchError):
    """A dataset folder, image or mask is missing, unreadable or inconsistent."""


class ConfigError(AnobenchError):
    """A config key or value is missing or invalid."""


class WeightsNotFoundError(AnobenchError):
    """Pretrained weights were requested but are not available offline."""


class DataWarning(UserWarning):
    """A dataset oddity that does not stop a run (e.g. a mask with no image)."""


class LockWarning(UserWarning):
    """A file lock is not supported where the results live (Lustre/NFS without flock): going on without it."""
