"""The results a study rewrites after each trial, written by a background thread at a low priority.

Rewriting trials_summary.csv, best_config.yaml and the plots takes ~1 s of CPU; a warm worker's next
trial trains meanwhile, on the same cores. The writer thread lowers its own priority (Linux: nice +10
applies to the thread alone) so the training keeps the cores, and coalesces requests: several trials
ending while it writes cost one more write, of the latest state. ``flush`` waits until it is idle; the
study's final write is made by the study itself, after a flush.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Callable


class BackgroundWriter:
    def __init__(self, write: Callable[..., dict], output_dir: Path, niceness: int = 10):
        self.write, self.out, self.niceness = write, output_dir, niceness
        self._cv = threading.Condition()
        self._pending = self._busy = self._stop = False
        self._thread = threading.Thread(target=self._loop, name="moopt-results-writer", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Write the results once more, soon (returns at once)."""
        with self._cv:
            self._pending = True
            self._cv.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every requested write is done."""
        with self._cv:
            self._cv.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self) -> None:
        self.flush()
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.niceness)
        except (AttributeError, OSError):  # not Linux, or not allowed: the writer runs at the study's priority
            pass
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending or self._stop)
                if not self._pending:  # stopped, nothing left to write
                    return
                self._pending, self._busy = False, True
            try:
                self.write(self.out, quiet=True)
            except Exception as e:  # a plot that fails does not stop the study; the final write retries
                print(f"Note: writing the result files failed (the study goes on; they are written again at its end): "
                      f"{type(e).__name__}: {e}", file=sys.stderr)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
