"""moopt.search.pareto: the one non-dominated filter, front order, dominance test and hypervolume."""

import numpy as np

from moopt.search.pareto import dominates, fronts, hypervolume, nondominated, nondominated_mask


def brute_force_mask(F: np.ndarray) -> np.ndarray:
    le = np.all(F[:, None, :] <= F[None, :, :], axis=2)
    lt = np.any(F[:, None, :] < F[None, :, :], axis=2)
    return ~np.any(le & lt, axis=0)


def test_the_front_is_the_points_no_other_point_dominates_ties_and_duplicates_included():
    rng = np.random.default_rng(0)
    for i in range(300):
        n, m = int(rng.integers(1, 30)), int(rng.integers(1, 4))
        F = rng.integers(0, 4, (n, m)).astype(float) if i % 2 else rng.random((n, m))
        np.testing.assert_array_equal(nondominated_mask(F), brute_force_mask(F))
        assert sorted(nondominated(F)) == list(np.flatnonzero(brute_force_mask(F)))


def test_fronts_partition_the_rows_and_each_is_the_front_of_what_is_left():
    F = np.array([[1.0, 4.0], [2.0, 2.0], [4.0, 1.0], [2.0, 4.0], [3.0, 3.0], [4.0, 4.0], [2.0, 2.0]])
    fs = fronts(F)
    assert sorted(int(i) for f in fs for i in f) == list(range(len(F)))
    assert [sorted(int(i) for i in f) for f in fs] == [[0, 1, 2, 6], [3, 4], [5]]
    assert nondominated_mask(np.zeros((0, 2))).shape == (0,)


def test_dominates_needs_no_worse_everywhere_and_better_somewhere():
    assert dominates([1, 2], [1, 3]) and dominates([0, 0], [1, 1])
    assert not dominates([1, 2], [1, 2])  # equal points
    assert not dominates([1, 3], [1, 2]) and not dominates([0, 3], [1, 2])  # worse, incomparable


def test_hypervolume_of_a_staircase_and_points_past_the_reference_add_nothing():
    F = np.array([[0.25, 0.75], [0.5, 0.5], [0.75, 0.25]])
    # the union of the boxes up to (1, 1): 0.75·0.25 + 0.5·0.25 + 0.25·0.25
    assert abs(hypervolume(F, np.ones(2)) - 0.375) < 1e-12
    assert hypervolume(np.vstack([F, [[1.5, 0.0]]]), np.ones(2)) == hypervolume(F, np.ones(2))
