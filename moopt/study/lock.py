"""One owner per study: an exclusive ``flock`` on ``<output_dir>/study.lock``.

The kernel drops the lock when its process ends, however it ends (``kill -9`` and the OOM killer
included), so ``--resume`` after a crash needs no clean-up; the file itself stays and only says who
held it last. flock works across hosts on NFSv4 and Lustre, the shared file systems of Ray clusters.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime
from pathlib import Path

from moopt.errors import ConfigError

LOCK_FILE = "study.lock"


class StudyLock:
    held: set[Path] = set()  # locks this process holds (``check`` passes on them)

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise one ConfigError naming its holder (pid, host, since when)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a read-only or virtual file system (/proc), a full disk, ...
            raise ConfigError(f"--output_dir {self.path.parent}: cannot create the study's folder or its lock file ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise self._busy(holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": datetime.now().isoformat(timespec="seconds")}).encode() + b"\n")
        os.fsync(fd)
        self._fd = fd
        StudyLock.held.add(self.path.resolve())

    def check(self) -> None:
        """Raise as ``acquire`` would if another process holds the lock; create and hold nothing."""
        if self.path.resolve() in StudyLock.held:
            return
        try:
            fd = os.open(self.path, os.O_RDWR)
        except (FileNotFoundError, NotADirectoryError):  # (no study there: its own check says so)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise self._busy(_holder(fd)) from None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
            StudyLock.held.discard(self.path.resolve())

    def _busy(self, holder: str) -> ConfigError:
        return ConfigError(f"{self.path.parent}: the study is running in another process ({holder}); "
                           "wait for it to end or stop it first")

    def __enter__(self) -> "StudyLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def is_live(output_dir: str | Path) -> bool:
    """Whether a process (this one or another) holds the study's lock: a study running now. A stopped study's
    started trials with no end were interrupted; a live one's are running."""
    lock = StudyLock(output_dir)
    if lock.path.resolve() in StudyLock.held:
        return True
    try:
        lock.check()
    except ConfigError:
        return True
    return False


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"
