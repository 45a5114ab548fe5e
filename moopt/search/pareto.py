"""Pareto dominance for minimisation, on pymoo: the non-dominated front, all fronts in order, whether
one point dominates another, and the hypervolume.

``a`` dominates ``b`` when ``a <= b`` in every objective and ``a < b`` in at least one; equal points
do not dominate each other, so duplicates share a front. Rows of ``F`` are points, columns objectives
(all minimised; :meth:`moopt.search.objectives.Objectives.to_minimize` turns maximised ones round).
"""

from __future__ import annotations

import numpy as np


def fronts(F: np.ndarray) -> list[np.ndarray]:
    """Row indices of ``F`` by non-dominated front, best front first (pymoo's fast non-dominated sort;
    within a front, the order pymoo builds it in)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    return list(NonDominatedSorting().do(np.asarray(F, dtype=float)))


def nondominated(F: np.ndarray) -> np.ndarray:
    """Row indices of ``F``'s non-dominated points (the first front)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    return NonDominatedSorting().do(np.asarray(F, dtype=float), only_non_dominated_front=True)


def nondominated_mask(F: np.ndarray) -> np.ndarray:
    """Boolean mask of ``F``'s non-dominated rows."""
    mask = np.zeros(len(F), dtype=bool)
    if len(F):
        mask[nondominated(F)] = True
    return mask


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether point ``a`` dominates point ``b``."""
    from pymoo.util.dominator import Dominator

    return Dominator.get_relation(np.asarray(a, dtype=float), np.asarray(b, dtype=float)) == 1


def hypervolume(F: np.ndarray, ref_point: np.ndarray) -> float:
    """Volume dominated by the points of ``F`` and bounded by ``ref_point`` (pymoo's HV); points not
    strictly better than ``ref_point`` in every objective add nothing."""
    from pymoo.indicators.hv import HV

    return float(HV(ref_point=np.asarray(ref_point, dtype=float))(np.asarray(F, dtype=float)))
