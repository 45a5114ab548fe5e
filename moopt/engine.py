"""NSGA-II over the search space through pymoo's ask/tell interface.

Pitfalls handled (see shared/reference/search-engine.md): mixed variables with binary tournament
kept; ``algorithm.evaluator`` used so n_eval counts; ``ask`` may return fewer individuals or none;
seeded per algorithm; the whole state pickles, so the study checkpoints it after every ask/tell.

Every individual carries one inequality constraint G <= 0 (feasible). Failed trials are told with
the worst objective values seen and G = 1, infeasible ones with their memory violation, so NSGA-II
learns from them instead of dropping them.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from moopt.space import SearchSpace


def population_size(num_trials: int, parallel: int = 1) -> int:
    """Small budgets need generations more than width: ~num_trials/3, in [4, 24], a multiple of
    the parallel slots so no slot idles at generation ends."""
    size = min(max(4, math.ceil(num_trials / 3)), 24)
    return max(parallel, math.ceil(size / parallel) * parallel)


class Engine:
    def __init__(self, space: SearchSpace, n_obj: int, num_trials: int, seed: int, parallel: int = 1,
                 warm_start: list | None = None):
        """``warm_start``: TrialConfigs (e.g. an earlier study's best) placed in the first
        population right after the default, moved into this space."""
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.mixed import MixedVariableDuplicateElimination, MixedVariableMating, MixedVariableSampling
        from pymoo.core.problem import Problem
        from pymoo.core.population import Population
        from pymoo.operators.selection.tournament import TournamentSelection
        from pymoo.algorithms.moo.nsga2 import binary_tournament
        from pymoo.core.termination import NoTermination

        self.space = space
        self.n_obj = n_obj
        self.pop_size = population_size(num_trials, parallel)
        self.problem = Problem(vars={p.name: p.pymoo_var() for p in space.params}, n_obj=n_obj, n_ieq_constr=1)
        # The first individual is the well-known good default moved into the space.
        rng_sampling = MixedVariableSampling()
        initial: list[dict[str, Any]] = []
        if space.params:
            for cfg in [space.default_in_space(), *(warm_start or [])]:
                x = space.encode(cfg)
                if x not in initial and len(initial) < self.pop_size:
                    initial.append(x)
            if len(initial) < self.pop_size:
                others = rng_sampling.do(self.problem, self.pop_size - len(initial), random_state=np.random.default_rng(seed))
                initial += [dict(ind.X) for ind in others]
        sampling = Population.new(X=np.array(initial, dtype=object)) if initial else rng_sampling
        self.algorithm = NSGA2(
            pop_size=self.pop_size,
            sampling=sampling,
            mating=MixedVariableMating(
                selection=TournamentSelection(func_comp=binary_tournament),
                eliminate_duplicates=MixedVariableDuplicateElimination(),
            ),
            eliminate_duplicates=MixedVariableDuplicateElimination(),
            seed=seed,
        )
        self.algorithm.setup(self.problem, termination=NoTermination())
        self.pending = None  # the asked, not yet told population
        self.results: dict[int, tuple[np.ndarray, float]] = {}  # index in pending -> (F, G)
        self.rng = np.random.default_rng(seed + 1)

    # -- ask / tell -------------------------------------------------------------------------------
    def ask(self, tries: int = 5) -> list[dict[str, Any]]:
        """Encoded individuals of the next generation (maybe fewer than pop_size, never None)."""
        assert self.pending is None, "tell the pending generation first"
        for _ in range(tries):
            pop = self.algorithm.ask()
            if pop is not None and len(pop) > 0:
                self.pending, self.results = pop, {}
                return [dict(ind.X) for ind in pop]
        return []

    def tell_one(self, index: int, F: np.ndarray, G: float) -> None:
        self.results[index] = (np.asarray(F, dtype=float), float(G))

    @property
    def generation_done(self) -> bool:
        return self.pending is not None and len(self.results) == len(self.pending)

    def tell(self) -> None:
        """Tell a finished generation; individuals never evaluated (budget end) are dropped."""
        from pymoo.problems.static import StaticProblem

        idx = sorted(self.results)
        pop = self.pending[idx]
        F = np.array([self.results[i][0] for i in idx])
        G = np.array([[self.results[i][1]] for i in idx])
        self.algorithm.evaluator.eval(StaticProblem(self.problem, F=F, G=G), pop)
        self.algorithm.tell(infills=pop)
        self.pending, self.results = None, {}

    def random_individual(self) -> dict[str, Any]:
        from pymoo.core.mixed import MixedVariableSampling

        pop = MixedVariableSampling().do(self.problem, 1, random_state=self.rng)
        return dict(pop[0].X)

    # -- checkpointing ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        from moopt.yamlio import atomic_write_bytes

        atomic_write_bytes(path, pickle.dumps(self))

    @staticmethod
    def load(path: str | Path) -> "Engine":
        with open(path, "rb") as f:
            return pickle.load(f)
