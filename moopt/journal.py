"""An append-only JSONL journal of study events: the study's source of truth.

Guarantees: each event is one line, written with a single ``write`` then flushed and fsynced
before ``append`` returns, so after ``kill -9`` at any moment the file holds every event that
counted, plus at most one torn last line, which ``replay`` ignores. One writer (the optimizer
process); readers (``moopt report``) may read while it runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moopt.records import TrialResult

JOURNAL = "journal.jsonl"


class Journal:
    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / JOURNAL
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, event: dict[str, Any] | TrialResult) -> None:
        if isinstance(event, TrialResult):
            event = event.to_event()
        self._f.write(json.dumps(event, default=float) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _drop_torn_tail(path: Path) -> None:
    """A torn last line (``kill -9`` mid-write) is cut off before the journal is appended to again: the next event
    would otherwise be glued onto it and lost with it (a --resume's new settings, a trial's start)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        start = data.rfind(b"\n") + 1  # 0 when the torn line is the only one
        try:  # a whole event whose newline alone is missing (an editor's save; a copy): kept, as replay reads it
            whole = isinstance(json.loads(data[start:]), dict)
        except ValueError:
            whole = False
        if whole:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(start)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class StudyRecord:
    """What a replay recovers: the study header and each trial's latest start/end events (ends as
    :class:`TrialResult`)."""

    header: dict[str, Any] = field(default_factory=dict)
    starts: dict[int, dict[str, Any]] = field(default_factory=dict)
    ends: dict[int, TrialResult] = field(default_factory=dict)
    rungs: list[dict[str, Any]] = field(default_factory=list)
    # the last run's "ended" event (its early stop's reason, if any) where it is the journal's last: the study ended
    # rather than was stopped (None after a stop, a kill, or a run still going)
    ended: dict[str, Any] | None = None
    # lines that are not JSON, or not an event of the study, before the last one (a torn last line is a crash's normal
    # leftover: ``torn``, its number): damaged since
    damaged: list[int] = field(default_factory=list)
    torn: int | None = None
    # the base model's evaluation ({"state", "metrics", "error"}), as baseline.json holds it: `moopt report` and
    # --resume put a lost baseline.json back from it (every score starts from it)
    baseline: dict[str, Any] | None = None

    def damaged_note(self, live: bool = False) -> str | None:
        """A note naming the damaged lines a replay skipped (what they recorded is not in the results), and a torn last
        line (unless the study is ``live``: a line being written), else None."""
        notes = []
        if self.damaged:
            lines = ", ".join(map(str, self.damaged[:5])) + (f" and {len(self.damaged) - 5} more" if len(self.damaged) > 5 else "")
            many = len(self.damaged) > 1
            notes.append(f"line{'s' if many else ''} {lines} {'are' if many else 'is'} damaged (not an event of the study) "
                         f"and skipped: what {'they' if many else 'it'} recorded is missing from the results (a trial "
                         "whose start it was is left out; one whose end it was reads as interrupted)")
        if self.torn is not None and not live:
            notes.append(f"its last line ({self.torn}) was cut off mid-write (a crash or a kill): what it recorded is "
                         "missing from the results (a trial whose end it was reads as interrupted; --resume trains it "
                         "again)")
        return f"{JOURNAL}: " + "; ".join(notes) if notes else None

    @property
    def finished(self) -> dict[int, TrialResult]:
        return {n: e for n, e in self.ends.items() if n in self.starts}

    @property
    def running(self) -> list[int]:
        return sorted(n for n in self.starts if n not in self.ends)


# What a --resume may change of the study's header (Scheduler journals a "settings" event; replay merges it): the
# weights that choose the best trial, the memory budget, the trial count and the recorded command-line options.
RESUME_SETTINGS = ("weights", "memory_constraint_gb", "num_trials", "options")


def replay(output_dir: str | Path) -> StudyRecord:
    rec = StudyRecord()
    path = Path(output_dir) / JOURNAL
    if not path.is_file():
        return rec
    bad: list[int] = []
    lineno, torn = 0, False
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                bad += [lineno] if line.strip() else []
                torn = not line.endswith("\n")  # torn by a crash mid-write: no newline at its end
                continue
            if not isinstance(ev, dict) or "type" not in ev or \
                    ("number" not in ev and ev["type"] in ("trial_start", "trial_end", "rung")):
                bad.append(lineno)  # JSON, but no event of the study (an event of a newer moopt has a type: skipped)
                torn = not line.endswith("\n")
                continue
            kind = ev.get("type")
            rec.ended = ev if kind == "ended" else None
            if kind == "study":
                rec.header = ev
            elif kind == "settings":  # a --resume with other weights, budget, trial count or options: they apply now
                rec.header = {**rec.header, **{k: v for k, v in ev.items() if k in RESUME_SETTINGS}}
            elif kind == "moved":  # a --resume from a moved copy of the data files or model folder (the same content):
                moved = {k: v for k, v in ev.items() if k in ("train_file", "validation_file", "base_model")}
                rec.header = {**rec.header, "fingerprint": {**(rec.header.get("fingerprint") or {}), **moved},  # their
                              **({"base_model": moved["base_model"]} if "base_model" in moved else {})}  # paths now
            elif kind == "data":  # the data files a run read, and what its start said of them (the latest run's)
                rec.header = {**rec.header, "data": {k: v for k, v in ev.items() if k != "type"}}
            elif kind == "trial_start":
                rec.starts[ev["number"]] = ev
                rec.ends.pop(ev["number"], None)  # a re-queued trial starts afresh
                rec.rungs = [r for r in rec.rungs if r["number"] != ev["number"]]
            elif kind == "trial_end" and "state" in ev:
                rec.ends[ev["number"]] = TrialResult.from_event(ev)
            elif kind == "rung":
                rec.rungs.append(ev)
            elif kind == "baseline":
                rec.baseline = {k: ev.get(k) for k in ("state", "metrics", "error")}
    rec.damaged = [n for n in bad if n < lineno or not torn]  # (lineno: the file's last line)
    rec.torn = lineno if bad and bad[-1] == lineno and torn else None
    return rec


BASELINE = "baseline.json"


def read_baseline(output_dir: str | Path, rec: StudyRecord | None = None) -> dict[str, Any] | None:
    """The study's base model evaluation ({"state", "metrics", "error"}): its baseline.json, else the journal's copy
    (a lost file; ``rec``: the study's replayed journal, where the caller has it). None when it has neither."""
    try:
        base = json.loads((Path(output_dir) / BASELINE).read_text(encoding="utf-8"))
        if isinstance(base, dict):
            return base
    except (OSError, ValueError):
        pass
    return (rec if rec is not None else replay(output_dir)).baseline
