"""The one exception a user sees as a message, not a traceback."""


class ConfigError(ValueError):
    """Bad user input. The CLI prints ``str(err)`` on one line and exits with code 2."""
