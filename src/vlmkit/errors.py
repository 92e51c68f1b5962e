"""User-facing errors: every mistake a user can make raises `VlmkitError` with a message naming the fix."""


class VlmkitError(Exception):
    """An error caused by user input (config, data, files). The CLI prints it without a traceback."""


class ConfigError(VlmkitError, ValueError):
    """A configuration value is unknown, missing or of the wrong type."""


class CheckpointError(VlmkitError):
    """A model directory is missing files, or a file in it is unreadable or inconsistent."""
