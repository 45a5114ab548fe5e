"""The surrogate's LoRA features (moopt/search/engine.py LORA_FEATURES): what they compute, when they
are left out, and that the engine still pickles with them."""

import math
import pickle

import numpy as np

from moopt.search.engine import LORA_FEATURES, Engine
from moopt.search.space import parse_space

SPACE = {
    "training": {"learning_rate": {"type": "log_uniform", "min": 1e-5, "max": 3e-3},
                 "batch_size": {"type": "categorical", "values": [4, 8, 16]},
                 "num_train_epochs": {"type": "int", "min": 1, "max": 3},
                 "gradient_accumulation_steps": 2},
    "lora": {"r": {"type": "categorical", "values": [4, 8, 16, 32]},
             "alpha": {"type": "categorical", "values": [8, 16, 32, 64]},
             "dropout": {"type": "uniform", "min": 0.0, "max": 0.1}},
}


def expected(cfg) -> dict[str, float]:
    t, lo = cfg.training, cfg.lora
    step = math.log(t.learning_rate * lo.alpha / math.sqrt(lo.r))
    steps = math.log(t.num_train_epochs / (t.batch_size * t.gradient_accumulation_steps))
    return {"step_scale": step, "steps": steps, "travel": step + steps}


def bounds() -> dict[str, tuple[float, float]]:
    lr, a, r = (math.log(1e-5), math.log(3e-3)), (math.log(8), math.log(64)), (math.log(4), math.log(32))
    ep, bs, ga = (0.0, math.log(3)), (math.log(4), math.log(16)), math.log(2)
    step = (lr[0] + a[0] - 0.5 * r[1], lr[1] + a[1] - 0.5 * r[0])
    steps = (ep[0] - bs[1] - ga, ep[1] - bs[0] - ga)
    return {"step_scale": step, "steps": steps, "travel": (step[0] + steps[0], step[1] + steps[1])}


def test_features_are_the_logs_of_the_decoded_values_scaled_over_the_space():
    space = parse_space(SPACE)
    eng = Engine(space, 2, 10, 0)
    X = [eng.random_individual() for _ in range(20)]
    V = np.array([eng._vec(x) for x in X])
    F = eng._features(V)
    assert F.shape == (20, V.shape[1] + len(LORA_FEATURES))
    assert np.array_equal(F[:, : V.shape[1]], V)
    b = bounds()
    for row, x in zip(F, X):
        want = expected(space.decode(x))
        for j, name in enumerate(LORA_FEATURES):
            lo, hi = b[name]
            assert abs(row[V.shape[1] + j] - (want[name] - lo) / (hi - lo)) < 1e-4, name


def test_no_features_when_the_space_searches_none_of_their_fields_or_when_off():
    only_dropout = parse_space({"lora": {"dropout": {"type": "uniform", "min": 0.0, "max": 0.1}}})
    eng = Engine(only_dropout, 2, 10, 0)
    V = np.array([eng._vec(eng.random_individual()) for _ in range(5)])
    assert np.array_equal(eng._features(V), V)
    off = Engine(parse_space(SPACE), 2, 10, 0, lora_features=False)
    V = np.array([off._vec(off.random_individual()) for _ in range(5)])
    assert np.array_equal(off._features(V), V)


def test_a_searched_learning_rate_alone_gives_step_scale_and_travel_from_the_fixed_fields():
    space = parse_space({"training": {"learning_rate": {"type": "log_uniform", "min": 1e-5, "max": 1e-3}}})
    eng = Engine(space, 2, 10, 0)
    V = np.array([[0.0], [1.0]])
    F = eng._features(V)
    assert F.shape == (2, 3)  # step_scale and travel; "steps" reads no searched field
    assert np.allclose(F[:, 1:], [[0.0, 0.0], [1.0, 1.0]])


def test_engine_with_features_pickles_and_keeps_proposing():
    space = parse_space(SPACE)
    eng = Engine(space, 2, 12, 0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        X = eng.ask()
        for i, x in enumerate(X):
            cfg = space.decode(x)
            travel = expected(cfg)["travel"]
            eng.tell_one(i, np.array([(travel + 9.0) ** 2 + rng.normal(0, 0.01), cfg.lora.r / 32]), -1.0)
        eng.tell()
    again = pickle.loads(pickle.dumps(eng))
    assert again.ask()


def test_near_copies_of_evaluated_points_are_not_proposed_while_novel_candidates_remain():
    from moopt.search.engine import NOVELTY

    space = parse_space(SPACE)
    eng = Engine(space, 2, 12, 0)
    X = eng.ask()
    for i, x in enumerate(X):
        eng.tell_one(i, np.array([float(i), -float(i)]), -1.0)
    eng.tell()
    done = eng.arch_X[0]
    near = done.copy()
    near[-1] = min(1.0, near[-1] + NOVELTY / 3)  # dropout a third of NOVELTY away
    far = 1.0 - done
    C = np.array([near, far, done + 0.0])
    assert eng._novel(C, 1).tolist() == [1]
    # fewer novel candidates than asked for: the farthest ones, near-copies last
    assert eng._novel(C, 2).tolist() == [1, 0]


def _travel_data(eng, n, rng):
    """n random individuals' feature rows (the engine's surrogate inputs) and their travel feature."""
    V = np.array([eng._vec(eng.random_individual()) for _ in range(n)])
    F = eng._features(V)
    return F, F[:, -1]


def test_the_objective_trend_extrapolates_past_the_best_seen_and_trees_alone_do_not(monkeypatch):
    import moopt.search.engine as engine

    eng = Engine(parse_space(SPACE), 2, 10, 0)
    rng = np.random.default_rng(0)
    F, travel = _travel_data(eng, 400, rng)
    train, far = np.flatnonzero(travel < 0.5)[:8], np.flatnonzero(travel > 0.8)[:20]
    y = 1.0 - travel + rng.normal(0, 0.01, len(travel))  # loss falls as the adapter travels further
    n_feat = F.shape[1] - len(eng.problem.vars)
    mu, _ = eng._forest(F[train], y[train], F[far], trend=n_feat)
    assert np.all(mu < y[train].min()), "the trend predicts better than the best seen where travel is larger"
    assert np.corrcoef(mu, y[far])[0, 1] > 0.5
    monkeypatch.setattr(engine, "TREND_RIDGE", None)
    mu_trees, _ = eng._forest(F[train], y[train], F[far], trend=n_feat)
    assert np.all(mu_trees >= y[train].min() - 1e-12), "trees average the values seen"


def test_the_pick_goes_past_the_best_seen_along_the_trend():
    space = parse_space(SPACE)
    eng = Engine(space, 1, 12, 0)
    X = [eng.random_individual() for _ in range(200)]
    F = eng._features(np.array([eng._vec(x) for x in X]))
    travel = F[:, -1]
    told = np.flatnonzero(travel < 0.4)[:6]
    eng.arch_X = np.array([eng._vec(X[i]) for i in told])
    eng.arch_F = (1.0 - travel[told])[:, None]
    eng.arch_G = -np.ones((len(told), 1))
    cand = np.flatnonzero(travel >= 0.4)
    pick = eng._select(np.array([eng._vec(X[i]) for i in cand]), 1)
    assert travel[cand][pick[0]] > np.quantile(travel[cand], 0.9), travel[cand][pick]


def test_bench_surrogate_scores_both_models_on_the_real_trials(load_bench, tmp_path):
    """benchmarks/bench_surrogate.py runs the engine's own _forest on the real trial table, both models."""
    import moopt.search.engine as engine

    bench = load_bench("bench_surrogate")
    records = bench.run(draws=3, sizes=[6])
    assert {r["provider"] for r in records} == {"trees", "trees+trend"}
    assert {r["problem"] for r in records} == {"eval_loss", "-eval_accuracy"}
    for r in records:
        assert r["trials"] > 300 and 0 <= r["beat_best"] <= 1 and 0 <= r["pick_pct"] <= 1 and -1 <= r["spearman"] <= 1
    assert engine.TREND_RIDGE is not None, "the benchmark puts the engine's setting back"


def test_the_first_population_spreads_the_lora_features_too(monkeypatch):
    """DESIGN_FEATURES: the space-filling design is judged over the LoRA features as well as the raw
    parameters, so its travel (the sum of the knobs' logs, rarely at its ends in a raw hypercube) is spread
    more evenly and reaches further toward its ends."""
    from scipy.stats import qmc

    import moopt.search.engine as E

    space = parse_space(SPACE)

    def travel(seed):
        eng = Engine(space, 2, 100, seed)
        pop = eng.ask()
        return eng._features(np.array([eng._vec(x) for x in pop]))[:, -1]

    def spread(flag):
        monkeypatch.setattr(E, "DESIGN_FEATURES", flag)
        ts = [travel(seed) for seed in range(12)]
        return (np.mean([qmc.discrepancy(t.reshape(-1, 1), method="WD") for t in ts]),
                np.mean([t.max() - t.min() for t in ts]))

    (d_on, range_on), (d_off, range_off) = spread(True), spread(False)
    assert d_on < d_off
    assert range_on > range_off


def test_without_lora_features_the_first_population_is_spread_over_the_parameters_only(monkeypatch):
    """``lora_features=False`` (bench_hpo's provider moopt: variables that only sit on LoRA fields) keeps the
    features out of the design as well as the surrogate: the same first population as a design judged over
    the raw parameters, and another one than the engine's own, which spreads the features too."""
    import moopt.search.engine as E

    space = parse_space(SPACE)
    pops = {}
    for label, flag, features in (("off", True, False), ("raw", False, True), ("on", True, True)):
        monkeypatch.setattr(E, "DESIGN_FEATURES", flag)
        pops[label] = [[Engine(space, 2, 100, seed, lora_features=features).ask()] for seed in range(4)]
    assert pops["off"] == pops["raw"]
    assert pops["off"] != pops["on"]
