"""The console moopt's commands print on (rich)."""

from __future__ import annotations

import errno
import os
import sys


def study_console():
    """The console a study (and moopt train, moopt report) prints on: a log line is never cut at 80 columns, and a
    reader that goes away (``| head``, a quit ``less``) does not stop the study. rich's Console raised SystemExit
    there, in whichever thread printed: from a trial's watcher thread that lost the trial's result and the study
    waited for it forever."""
    from rich.console import Console

    class StudyConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # later writes go nowhere, as rich's own handler does; no exit

        def _check_buffer(self) -> None:
            """A terminal that hung up (closed, ssh dropped: SIGHUP) fails every write with EIO: as a broken pipe.
            Raised from the live display's exit, it replaced the stop (SIGHUP) with a traceback and exit 1."""
            try:
                super()._check_buffer()
            except OSError as e:
                if e.errno not in (errno.EIO, errno.ENXIO):
                    raise
                self.on_broken_pipe()

    return StudyConsole(highlight=False, soft_wrap=True)


def plural(n: float, word: str, many: str | None = None) -> str:
    """``1 epoch``, ``2 epochs``, ``1.5 epochs``: a count and its noun, not "epoch(s)" where the count is known."""
    return f"{n:g} {word if n == 1 else many or word + 's'}"


def numbered(word: str, numbers) -> str:
    """``trial 3`` or ``trials 3, 5``."""
    numbers = list(numbers)
    return f"{word if len(numbers) == 1 else word + 's'} {', '.join(map(str, numbers))}"
