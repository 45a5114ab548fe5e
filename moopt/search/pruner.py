"""Multi-objective successive halving (asynchronous, like ASHA; ranked like MOASHA), with a
dominance bound.

A trial reaching rung k goes on only if it is in the top n / eta of the n trials that have reached
rung k so far (its rank <= n / eta, as ASHA promotes the top floor(n / eta)), ranked by Pareto rank
(non-dominated sorting), then by crowding distance (larger first) inside a front. At least one goes
on: the first arrival at a rung always does, the second only if it ranks first (as Optuna's
SuccessiveHalvingPruner). Objectives are in pymoo's minimisation form.

It also stops if it cannot catch up: when even its optimistic end, its values at the rung moved
toward the ideal point as far as the best of the trials that completed from that rung moved
(>= BOUND_MIN_COMPLETED of them, each at least as long as the judged trial), is dominated by a
completed trial's final values. A dominated point adds nothing to the front, so the rank rule alone
would spend a whole trial on it whenever the pool at the rung still holds the study's early, poorer
trials. That bound acts only at rungs at >= BOUND_MIN_FRACTION of a trial's steps: earlier, a
trial's values say too little about its end.
"""

from __future__ import annotations

import math

import numpy as np

# The earliest rung sits at >= 1/10 of a trial's steps: earlier evaluations of a fine-tuning run are
# mostly warm-up noise. eta=2 gives rungs at 1/8, 1/4, 1/2 (a trial stopped at the first rung costs
# 1/8 of a full one); eta=3 at 1/9, 1/3; eta=4 at 1/4.
MIN_RUNG_FRACTION = 0.1

# A rung evaluation only decides who goes on, so it reads a fixed random subset of the validation set,
# the same examples for every trial of the study (a paired comparison: the subset's sampling noise is
# shared by all trials and mostly cancels in the ranking). Its size: all of a trial's rung evaluations
# together forward at most RUNG_EVAL_SHARE of one epoch's training examples (an evaluation token costs
# ~1/2 of a LoRA training token, so <= 5% of an epoch's compute), and at least RUNG_EVAL_MIN examples.
# On the bundled data (300 train, 60 validation rows, 3 rungs) that is 16 of the 60: measured on
# finished SmolLM2 trials (benchmarks/bench_rung_subset.py), a 16-example subset makes the same
# keep/prune call as the whole set for 93% of trials (32 examples: 96%; the kept trials' eval_loss
# worse by 0.001) at half the cost; the minimum is what binds on small data (at 32 the rung
# evaluations were 7% of the demo study's compute).
RUNG_EVAL_SHARE = 0.1
RUNG_EVAL_MIN = 16

# The dominance bound needs this many completed trials with values at the rung: with one, its
# "best improvement" is a single curve's. Replayed on the journals of 26 SmolLM2 studies with pruning
# (docs/PRUNING.md, 12-trial real runs), the bound with 2 would have stopped trials worth 9-15% of
# the no-pruning studies' compute; 24 of the 26 complete fronts would have kept their hypervolume, two
# lose 1.3% and 1.5% (near-copies of a kept trial, 0.09 against 0.095 eval_loss). Run for real
# (bench_pruning, 13 seeds; docs/PRUNING.md): 50.5% of the compute saved (38.6% without the bound).
BOUND_MIN_COMPLETED = 2

# ... and acts only at rungs at >= 1/5 of a trial's steps (eta=2: at 1/4 and 1/2, not at 1/8). At 1/8 a
# trial's values say little about its end beyond what its configuration does (real SmolLM2 trials:
# residual correlation rung -> end 0.08-0.28 for eval_loss), and its calls there buy compute dearly.
# Simulated (bench_pruning_sim; "cost of the calls": the hypervolume the pruned trials' own ends would
# have added), seeds 0-399: the rank rule alone saves 43.4% (200 seeds) for 1.2% of hypervolume; the
# bound from 1/4 on, 48.2% for 1.5%; from 1/8 on (docs/PRUNING.md), 55.0% for 2.2%.
# The bound's 1/8 calls cost 0.11 points of hypervolume per point of compute saved, its later ones
# ~0.06. Paired by seed, dropping them lowers the calls' cost by 0.77 points [0.33, 1.28].
BOUND_MIN_FRACTION = 0.2

# ... and reads only completed trials that ran at least as many optimizer steps as the judged one (so at
# least as many after the rung). How far a curve still falls after a rung depends on the steps left:
# a low learning rate over 2 epochs improves far more after 1/4 of its steps than a 1-epoch trial
# does, so 1-epoch curves give a 2-epoch trial an "optimistic end" that is not optimistic.
BOUND_SAME_BUDGET = True


def rung_fractions(eta: float | None, min_fraction: float = MIN_RUNG_FRACTION) -> tuple[float, ...]:
    """Rungs at 1/eta^K ... 1/eta of a trial's steps, K the most with 1/eta^K >= ``min_fraction``
    (at least one); before the first rung is the warm-up, where nothing is pruned."""
    if not eta or eta <= 1:
        return ()
    k = max(1, math.floor(math.log(1 / min_fraction) / math.log(eta) + 1e-9))
    return tuple(1 / eta**i for i in range(k, 0, -1))


def rung_eval_size(n_val: int, n_train: int, n_rungs: int) -> int:
    """Validation examples a rung evaluation reads (the whole set when it is small)."""
    if n_rungs <= 0:
        return n_val
    return min(n_val, max(RUNG_EVAL_MIN, math.ceil(RUNG_EVAL_SHARE * n_train / n_rungs)))


def pareto_order(F: np.ndarray) -> list[int]:
    """Row indices best first: by front, then by crowding distance within the front."""
    from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance

    from moopt.search.pareto import fronts

    order: list[int] = []
    for front in fronts(F):
        cd = calc_crowding_distance(F[front]) if len(front) > 2 else np.full(len(front), np.inf)
        order += [int(front[i]) for i in np.argsort(-cd, kind="stable")]
    return order


def nearest_ratio(final_gaps: np.ndarray, rung_gaps: np.ndarray, gap: float) -> float:
    """Final gap / rung gap of the completed trial whose rung gap is closest (in log) to ``gap``, at
    most 1. On the 119 pruned trials of the 17 real SmolLM2 studies (benchmarks/bench_projection.py) it
    erred less than the median ratio (median |log(projected / real end)| 0.30 against 0.46; at the 1/8
    rung 0.56 against 0.75, where the median ratio was ~2x optimistic: the trials that go on to complete
    improve far more than the slow learners pruned there)."""
    i = int(np.argmin(np.abs(np.log(rung_gaps) - np.log(gap))))
    return min(float(final_gaps[i] / rung_gaps[i]), 1.0)


def median_ratio(final_gaps: np.ndarray, rung_gaps: np.ndarray, gap: float) -> float:
    """The median final gap / rung gap over the completed trials (the projection before nearest_ratio)."""
    return float(np.median(final_gaps / rung_gaps))


class RungPruner:
    """Decides at each rung whether a trial goes on. ``ideal``: the best value of each objective
    (minimisation form, Objectives.ideal()); without it there is no dominance bound."""

    def __init__(self, eta: float, ideal: np.ndarray | None = None, *, bound_min_completed: int = BOUND_MIN_COMPLETED,
                 bound_min_fraction: float = BOUND_MIN_FRACTION, bound_same_budget: bool = BOUND_SAME_BUDGET,
                 describe=None):
        """``describe(F)``: a minimisation-form vector in the objectives' own words for the reasons ("eval_loss 0.11,
        eval_accuracy 0.89"; Objectives.describe); without it the vector as it is."""
        self.eta = eta
        # the dominance bound's rule (see the module constants): completed trials it needs, the earliest
        # rung (fraction of the steps) it acts at, whether it reads only trials at least as long
        self.bound_min_completed = bound_min_completed
        self.bound_min_fraction = bound_min_fraction
        self.bound_same_budget = bound_same_budget
        self.fractions = rung_fractions(eta)  # rung k sits at fractions[k] of a trial's steps
        self.describe = describe or (lambda F: str(np.round(F, 4).tolist()))
        self.ideal = None if ideal is None else np.asarray(ideal, dtype=float)
        self.pools: dict[int, dict[int, np.ndarray]] = {}  # rung -> {trial number: F}
        self.steps: dict[int, dict[int, int]] = {}  # rung -> {trial number: its optimizer step there}
        self.finals: dict[int, np.ndarray] = {}  # completed trial -> its final F

    def complete(self, number: int, F: np.ndarray) -> None:
        """A trial ran to its end with final objectives F (its rung values are in the pools)."""
        self.finals[number] = np.asarray(F, dtype=float)

    def projected(self, number: int, F: np.ndarray, ideal: np.ndarray | None = None, ratio=nearest_ratio) -> np.ndarray:
        """Where a pruned trial was heading: its last rung's F moved toward the ideal point as a
        completed trial moved from that rung to its end. Per objective, the gap to the ideal (e.g.
        eval_loss - 0, 1 - eval_accuracy) is scaled by the ratio final gap / rung gap of the completed
        trial whose rung gap was closest to this one's (``nearest_ratio``): a slow learner borrows a slow
        learner's improvement. F itself when no completed trial is known at that rung.

        NSGA-II is told F (a pruned trial stays dominated, as measured); only the engine's surrogate
        learns from the projection, so a configuration cut early by a small rung pool does not
        read as a bad region (a partial loss of 0.7 that would have ended at 0.27).

        ``ratio(final_gaps, rung_gaps, gap)`` picks the scale from the completed trials' gaps
        (``nearest_ratio`` by default; ``median_ratio`` scales by the median over all completed trials;
        benchmarks/bench_projection.py scores both against real ends)."""
        F = np.asarray(F, dtype=float)
        ideal = self.ideal if ideal is None else np.asarray(ideal, dtype=float)
        rungs = [k for k, pool in self.pools.items() if number in pool]
        if ideal is None or not rungs:
            return F
        gap_r, gap_f = self._gaps(max(rungs), number, ideal)
        if not len(gap_r):
            return F
        out = F.copy()
        for j in range(len(F)):
            ok = (gap_r[:, j] > 0) & (gap_f[:, j] >= 0)
            if ok.any() and F[j] > ideal[j]:
                out[j] = ideal[j] + ratio(gap_f[ok, j], gap_r[ok, j], F[j] - ideal[j]) * (F[j] - ideal[j])
        return out

    def _gaps(self, rung: int, number: int, ideal: np.ndarray, min_step: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Gaps to the ideal at ``rung`` and at the end, one row per completed trial (other than
        ``number``) that has values at that rung (and, with ``min_step``, reached it at that step or later:
        a rung sits at the same fraction of every trial's steps, so that trial ran at least as long)."""
        pool, steps = self.pools.get(rung, {}), self.steps.get(rung, {})
        done = [c for c in self.finals if c in pool and c != number
                and (min_step is None or steps.get(c, math.inf) >= min_step)]
        if not done:
            return np.empty((0, len(ideal))), np.empty((0, len(ideal)))
        return np.array([pool[c] for c in done]) - ideal, np.array([self.finals[c] for c in done]) - ideal

    def record(self, rung: int, number: int, F: np.ndarray, step: int | None = None) -> None:
        self.pools.setdefault(rung, {})[number] = np.asarray(F, dtype=float)
        if step is not None:
            self.steps.setdefault(rung, {})[number] = int(step)

    def forget(self, number: int) -> None:
        """A re-queued trial starts over: drop what it reported."""
        for pool in [*self.pools.values(), *self.steps.values()]:
            pool.pop(number, None)
        self.finals.pop(number, None)

    def bound(self, rung: int, number: int, F: np.ndarray) -> tuple[np.ndarray, int] | None:
        """(optimistic end of F, completed trial that dominates it), or None when it can still
        reach the front. Per objective, the gap to the ideal shrinks by the smallest ratio final gap /
        gap at this rung among the completed trials that ran at least as many steps (never grows)."""
        if self.ideal is None or (rung < len(self.fractions) and self.fractions[rung] < self.bound_min_fraction):
            return None
        min_step = self.steps.get(rung, {}).get(number) if self.bound_same_budget else None
        R, E = self._gaps(rung, number, self.ideal, min_step)
        if len(R) < self.bound_min_completed:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(R > 0, np.maximum(E, 0) / R, 1.0)
        best = np.minimum(ratio.min(axis=0), 1.0)
        gap = np.asarray(F, dtype=float) - self.ideal
        end = self.ideal + np.where(gap > 0, best * gap, gap)
        for c in self.finals:
            f = self.finals[c]
            if c != number and (f <= end).all() and (f < end).any():
                return end, c
        return None

    def judge(self, rung: int, number: int, F: np.ndarray, step: int | None = None) -> tuple[bool, str]:
        """Record the arrival (at optimizer ``step``, when known); (whether the trial goes on, why, in words)."""
        self.record(rung, number, F, step)
        pool = self.pools[rung]
        nums = list(pool)
        order = pareto_order(np.array([pool[n] for n in nums]))
        top = max(1, math.floor(len(nums) / self.eta))  # rank <= n / eta
        rank = order.index(nums.index(number)) + 1
        if rank > top:
            return False, f"rank {rank} of {len(nums)} at rung {rung}: not in the top {top}"
        hit = self.bound(rung, number, F)
        if hit is not None:
            end, c = hit
            return False, (f"cannot catch trial {c}: at best it would end at {self.describe(end)}, which trial {c}'s "
                           f"final {self.describe(self.finals[c])} dominates")
        return True, f"rank {rank} of {len(nums)} at rung {rung}"

    def decide(self, rung: int, number: int, F: np.ndarray, step: int | None = None) -> bool:
        """Record the arrival and say whether the trial goes on."""
        return self.judge(rung, number, F, step)[0]
