"""The one exception a user sees as a message, not a traceback; and how a full disk is told from other failures."""

import errno


class ConfigError(ValueError):
    """Bad user input. The CLI prints ``str(err)`` on one line and exits with code 2."""


# a full disk (or the user's quota) stops a study in one line, and a trial that failed for it is trained again
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how a trial's error names one (Python's OSError, a native library's, e.g. safetensors': "os error 28")
FULL_DISK_TEXTS = ("No space left on device", "Disk quota exceeded")
