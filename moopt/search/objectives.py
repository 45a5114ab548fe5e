"""Objectives: parsing ``--optimization_objective``/``--optimization_weights`` and scoring trials."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moopt.console import plural
from moopt.errors import ConfigError

# name -> (direction, description). pymoo minimises: maximised objectives are negated.
KNOWN: dict[str, tuple[str, str]] = {
    "eval_loss": ("minimize", "mean cross-entropy per completion token over the validation set"),
    "eval_accuracy": ("maximize", "next-token accuracy on completion tokens of the validation set"),
    "eval_perplexity": ("minimize", "exp(eval_loss)"),
    "peak_memory_gb": ("minimize", "peak training memory of the trial, GiB"),
}

# the best value each objective can take (where training would head with no limit)
IDEAL: dict[str, float] = {"eval_loss": 0.0, "eval_accuracy": 1.0, "eval_perplexity": 1.0, "peak_memory_gb": 0.0}


@dataclass(frozen=True)
class Objectives:
    names: tuple[str, ...]
    weights: tuple[float, ...]  # normalised to sum to 1

    @property
    def multi(self) -> bool:
        return len(self.names) > 1

    def directions(self) -> list[str]:
        return [KNOWN[n][0] for n in self.names]

    def to_minimize(self, metrics: dict[str, float]) -> np.ndarray:
        """Objective vector in pymoo's minimisation convention."""
        out = []
        for n in self.names:
            v = float(metrics[n])
            out.append(-v if KNOWN[n][0] == "maximize" else v)
        return np.asarray(out, dtype=float)

    def ideal(self) -> np.ndarray:
        """The best value of each objective, in minimisation form."""
        return self.to_minimize(IDEAL)

    def progress(self, F: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Each objective's progress from ``start`` (0) toward its ideal (1), rows of F in
        minimisation form. ``start`` is the base model's values (minimisation form): a trial that
        halves the base model's eval_loss scores 0.5 on it, one worse than the base model scores
        below 0. The scale depends only on the base model and the validation set, so scores compare
        across studies of the same task. An objective whose start already is its ideal scores 0."""
        F = np.atleast_2d(np.asarray(F, dtype=float))
        start = np.asarray(start, dtype=float)
        gap = start - self.ideal()
        return np.where(gap > 0, (start - F) / np.where(gap > 0, gap, 1.0), 0.0)

    def describe(self, F: np.ndarray) -> str:
        """A minimisation-form vector (``to_minimize``'s) in the objectives' own words: "eval_loss 0.11,
        eval_accuracy 0.89" (a maximised one's sign turned back)."""
        return ", ".join(f"{n} {(-v if d == 'maximize' else v):.4g}"
                         for n, d, v in zip(self.names, self.directions(), np.asarray(F, dtype=float)))

    def score(self, F: np.ndarray, start: np.ndarray) -> np.ndarray:
        """The weighted progress score of each row of F (higher is better; 1 = ideal on every
        objective, 0 = no better than ``start``): what the summary prints as ``Best value``."""
        return self.progress(F, start) @ np.asarray(self.weights)


def parse_objectives(objective: str, weights: str | None) -> Objectives:
    spec = objective.strip()
    if spec.startswith("multi:"):
        names = tuple(n.strip() for n in spec[len("multi:"):].split(","))
        if "" in names and len(names) > 1:  # "multi:eval_loss,,eval_accuracy": a typo, not two objectives
            raise ConfigError(f"--optimization_objective: an empty name in {objective!r}")
        names = tuple(n for n in names if n)
        if len(names) < 2:
            raise ConfigError(f"--optimization_objective: `multi:` needs at least two objectives, got {objective!r}")
    else:
        names = (spec,)
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ConfigError(f"--optimization_objective: unknown objective(s) {unknown}; known: {list(KNOWN)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--optimization_objective: objectives repeat in {objective!r}")
    if weights is None or not str(weights).strip():
        w = [1.0] * len(names)
    else:
        try:
            w = [float(x) for x in str(weights).split(",")]
        except ValueError:
            raise ConfigError(f"--optimization_weights: expected comma-separated numbers, got {weights!r}") from None
        if len(w) != len(names):
            raise ConfigError(
                f"--optimization_weights: {plural(len(w), 'weight')} for {plural(len(names), 'objective')} {list(names)}; counts "
                "must match"
            )
        if any(x < 0 or not np.isfinite(x) for x in w) or sum(w) <= 0:
            raise ConfigError(f"--optimization_weights: weights must be finite, >= 0 and not all 0, got {weights!r}")
    total = sum(w)
    return Objectives(names=names, weights=tuple(x / total for x in w))
