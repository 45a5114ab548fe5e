"""The trial process: ``python -m moopt.worker``.

Protocol (JSON lines): the parent writes the TrialSpec on stdin's first line. The worker writes
``{"event": "progress" | "rung" | "result", ...}`` lines on its original stdout; after a ``rung``
line it reads one line ``{"continue": true|false}`` from stdin. Everything else the libraries print
goes to stderr, which the parent sends to the trial's ``log.txt``.
"""

from __future__ import annotations

import json
import os
import sys


class PipeReporter:
    def __init__(self, out, inp):
        self.out, self.inp = out, inp

    def send(self, msg: dict) -> None:
        self.out.write(json.dumps(msg, default=float) + "\n")
        self.out.flush()

    def progress(self, step: int, total: int, loss: float) -> None:
        self.send({"event": "progress", "step": step, "total": total, "loss": loss})

    def rung(self, step: int, metrics: dict, rung: int) -> bool:
        self.send({"event": "rung", "step": step, "metrics": metrics, "rung": rung})
        line = self.inp.readline()
        return bool(json.loads(line).get("continue", True)) if line else False


def die_with_parent() -> None:
    """Linux: get SIGKILL when the optimizer dies, so an orphan never writes into a resumed study."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except Exception:
        pass


def main() -> int:
    die_with_parent()
    # Keep the protocol channel private: stray prints from libraries go to stderr.
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    spec_line = sys.stdin.readline()
    from moopt.trial import TrialSpec, run_trial

    spec = TrialSpec.from_json(json.loads(spec_line))
    reporter = PipeReporter(proto, sys.stdin)
    result = run_trial(spec, reporter)
    from dataclasses import asdict

    reporter.send({"event": "result", "result": asdict(result)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
