"""The study's checkpoint (engine.pkl): the search engine and which trial number took which individual
of its pending generation.

Both are written in one atomic write (``moopt.yamlio.atomic_write_bytes``: a temporary file renamed
over the old one) after every ask, extension, assignment and tell, so after ``kill -9`` at any
moment ``--resume`` finds them consistent with each other and with the journal: a trial number whose
``trial_end`` is journaled is told again from the journal; one that was running is re-queued with
the same individual.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

from moopt.search.engine import Engine

ENGINE_FILE = "engine.pkl"


@dataclass
class Checkpoint:
    engine: Engine
    assigned: dict[int, int] = field(default_factory=dict)  # trial number -> index in engine.pending

    def number_of(self, idx: int) -> int | None:
        """The trial number that took pending individual ``idx``, if one did."""
        return next((n for n, i in self.assigned.items() if i == idx), None)

    def tell(self) -> None:
        """Tell the engine its finished generation; the next one has no trial numbers yet."""
        self.engine.tell()
        self.assigned = {}

    def save(self, path: str | Path) -> None:
        from moopt.yamlio import atomic_write_bytes

        atomic_write_bytes(path, pickle.dumps(self))

    @staticmethod
    def load(path: str | Path) -> "Checkpoint":
        """Reads engine.pkl; one written before this class existed (a bare Engine carrying the map as
        an ``assigned`` attribute) loads as well."""
        with open(path, "rb") as f:
            obj = pickle.load(f)
        if isinstance(obj, Checkpoint):
            return obj
        assigned = obj.__dict__.pop("assigned", None) or {}
        return Checkpoint(obj, dict(assigned))
