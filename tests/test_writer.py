"""The background results writer: low priority, coalesced, flushed before the study's last write."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from moopt.study.writer import BackgroundWriter


def test_requests_coalesce_run_at_a_low_priority_and_flush_waits():
    calls = []

    def write(out, quiet=False):
        calls.append((out, quiet, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        time.sleep(0.3)
        return {}

    w = BackgroundWriter(write, Path("/nowhere"))
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    for _ in range(5):  # five trials end while the first write runs
        w.request()
        time.sleep(0.01)
    w.flush()
    assert 1 <= len(calls) <= 2  # the first write, then one for all the requests made during it
    assert all(c[:2] == (Path("/nowhere"), True) for c in calls)
    assert calls[0][2] == min(mine + 10, 19)  # the writer thread alone is niced
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
    w.request()
    w.close()
    assert len(calls) in (2, 3)


def test_a_failing_write_does_not_stop_the_writer(capsys):
    n = []

    def write(out, quiet=False):
        n.append(1)
        if len(n) == 1:
            raise ValueError("a plot failed")
        return {}

    w = BackgroundWriter(write, Path("/nowhere"))
    w.request()
    w.flush()
    w.request()
    w.close()
    assert len(n) == 2 and "a plot failed" in capsys.readouterr().err
