"""The one exception type for bad user input (configs, CLI values, data files)."""


class ConfigError(ValueError):
    """A user-facing error: one line that names the bad value and what is allowed.

    The CLI prints ``str(error)`` on one line to stderr and exits with code 2.
    """
