import numpy as np
import pytest

from moopt.search.engine import Engine, population_size
from moopt.search.space import default_space, parse_space


def run_engine(space, n_obj, num_trials, seed, f):
    """Drive the engine as the study does; return the configurations evaluated, in order."""
    eng = Engine(space, n_obj, num_trials, seed)
    seen = []
    while len(seen) < num_trials:
        X = eng.ask()
        if not X:
            break
        for i, x in enumerate(X[: num_trials - len(seen)]):
            cfg = space.decode(x)
            seen.append(cfg)
            eng.tell_one(i, f(cfg), -1.0)
        eng.tell()
    return seen


def objective(cfg):
    lr = cfg.training.learning_rate
    return np.array([(np.log10(lr) + 3.3) ** 2, cfg.lora.r / 32])


def test_exactly_num_trials_even_for_small_budgets():
    for n in (1, 5, 7, 13):
        assert len(run_engine(default_space(), 2, n, 0, objective)) == n


def test_first_trial_is_the_known_good_default():
    first = run_engine(default_space(), 2, 3, 0, objective)[0]
    assert first.training.learning_rate == 2e-4 and first.lora.r == 16 and first.lora.alpha == 32


def test_seeded_runs_are_reproducible_and_seeds_differ():
    a = run_engine(default_space(), 2, 12, 7, objective)
    b = run_engine(default_space(), 2, 12, 7, objective)
    c = run_engine(default_space(), 2, 12, 8, objective)
    assert a == b and a != c


def test_small_discrete_space_gets_short_or_empty_asks_without_crashing():
    space = parse_space({"lora": {"r": {"type": "categorical", "values": [4, 8]}}})
    seen = run_engine(space, 1, 6, 0, lambda c: np.array([c.lora.r]))
    assert 1 <= len(seen) <= 6
    assert {c.lora.r for c in seen} <= {4, 8}


def test_population_size_fits_the_budget():
    assert population_size(5) == 4 and population_size(30) == 10 and population_size(1000) == 10 and population_size(30) == population_size(100)
    assert population_size(10, parallel=3) % 3 == 0


def test_engine_learns_toward_better_learning_rates():
    seen = run_engine(default_space(), 2, 40, 1, objective)
    early = np.median([abs(np.log10(c.training.learning_rate) + 3.3) for c in seen[:10]])
    late = np.median([abs(np.log10(c.training.learning_rate) + 3.3) for c in seen[-10:]])
    assert late < early


def test_checkpoint_restores_the_pending_generation(tmp_path):
    eng = Engine(default_space(), 2, 10, 0)
    X = eng.ask()
    eng.tell_one(0, np.array([1.0, 2.0]), -1.0)
    eng.save(tmp_path / "e.pkl")
    back = Engine.load(tmp_path / "e.pkl")
    assert [dict(i.X) for i in back.pending] == X and 0 in back.results


def zdt1_like(cfg):
    """Two conflicting objectives over the default space (x0 = learning rate position)."""
    x0 = (np.log10(cfg.training.learning_rate) + 5) / 2
    g = 1 + 9 * np.mean([cfg.training.warmup_ratio * 10, cfg.training.weight_decay * 10, cfg.lora.dropout * 10])
    return np.array([x0, g * (1 - np.sqrt(x0 / g))])


def test_surrogate_offspring_are_new_and_sized_to_the_batch():
    eng = Engine(default_space(), 2, 30, 3)
    X = eng.ask()
    assert len(X) == eng.pop_size
    for i, x in enumerate(X):
        eng.tell_one(i, zdt1_like(default_space().decode(x)), -1.0)
    eng.tell()
    seen = {tuple(sorted(x.items())) for x in X}
    for _ in range(3):
        Y = eng.ask()
        assert 0 < len(Y) <= eng.batch < eng.pop_size
        assert not seen & {tuple(sorted(y.items())) for y in Y}
        seen |= {tuple(sorted(y.items())) for y in Y}
        for i, y in enumerate(Y):
            eng.tell_one(i, zdt1_like(default_space().decode(y)), -1.0)
        eng.tell()
    assert len(eng.arch_X) == len(seen)


def test_checkpoint_mid_run_continues_the_same_sequence(tmp_path):
    eng = Engine(default_space(), 2, 30, 5)
    for _ in range(2):
        X = eng.ask()
        for i, x in enumerate(X):
            eng.tell_one(i, zdt1_like(default_space().decode(x)), -1.0)
        eng.tell()
    eng.save(tmp_path / "e.pkl")
    back = Engine.load(tmp_path / "e.pkl")
    assert eng.ask() == back.ask()


def test_infeasible_only_history_still_proposes_new_individuals():
    eng = Engine(default_space(), 2, 30, 0)
    for _ in range(3):
        X = eng.ask()
        assert X
        for i, x in enumerate(X):
            lr = default_space().decode(x).training.learning_rate
            eng.tell_one(i, np.array([1.0, 1.0]), float(abs(np.log10(lr) + 4)) + 0.5)  # never feasible
        eng.tell()
    assert eng.ask()


def test_without_scikit_learn_the_engine_is_plain_nsga2(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)
    eng = Engine(default_space(), 2, 12, 0)
    assert not eng.surrogate
    # one Note line naming the install (it was a Python warning with a source path)
    assert capsys.readouterr().err == ("Note: scikit-learn is missing, so the search runs as plain NSGA-II (no surrogate "
                                       "pre-selection): pip install scikit-learn\n")
    seen = run_engine(default_space(), 2, 12, 0, objective)
    assert len(seen) == 12


def test_surrogate_beats_plain_nsga2_on_a_small_budget():
    def front_quality(surrogate, seed):
        eng = Engine(default_space(), 2, 30, seed, surrogate=surrogate)
        F = []
        while len(F) < 30:
            X = eng.ask()
            for i, x in enumerate(X[: 30 - len(F)]):
                F.append(zdt1_like(default_space().decode(x)))
                eng.tell_one(i, F[-1], -1.0)
            eng.tell()
        F = np.array(F)
        grid = np.linspace(0, 1, 21)  # mean best f2 achievable at each f1 budget (lower is better)
        return np.mean([F[F[:, 0] <= t, 1].min() if np.any(F[:, 0] <= t) else 10.0 for t in grid])

    seeds = range(6)
    assert np.median([front_quality(True, s) for s in seeds]) < np.median([front_quality(False, s) for s in seeds])


def test_several_constraints_feasible_only_when_all_hold_and_each_is_modelled():
    """Two constraints told separately: an individual violating either is infeasible, and the surrogate's
    pre-selection (one model per constraint) proposes mostly configurations that satisfy both."""
    space = default_space()

    def g(cfg):  # feasible iff 1e-4 <= lr <= 1e-3
        lr = np.log10(cfg.training.learning_rate)
        return np.array([-4 - lr, lr + 3])

    eng = Engine(space, 2, 30, 0, n_constr=2)
    told = []
    for _ in range(5):
        X = eng.ask()
        for i, x in enumerate(X):
            cfg = space.decode(x)
            told.append(g(cfg))
            eng.tell_one(i, objective(cfg), told[-1])
        eng.tell()
    told = np.array(told)
    assert eng.arch_G.shape == (len(told), 2)
    feasible = np.all(told <= 0, axis=1)
    pop_cv = eng.algorithm.pop.get("CV")[:, 0]
    pop_G = eng.algorithm.pop.get("G")
    assert np.array_equal(pop_cv <= 0, np.all(pop_G <= 0, axis=1))  # pymoo reads both constraints
    assert feasible[:eng.pop_size].mean() < feasible[eng.pop_size:].mean()  # the models steer into the band


def test_engines_pickled_with_one_scalar_constraint_still_load(tmp_path):
    import pickle

    eng = Engine(default_space(), 2, 12, 0)
    X = eng.ask()
    for i, x in enumerate(X):
        eng.tell_one(i, objective(default_space().decode(x)), -1.0)
    eng.tell()
    Y = eng.ask()  # a generation half told when the old engine was pickled: its G as floats
    eng.tell_one(0, objective(default_space().decode(Y[0])), -1.0)
    state = dict(eng.__dict__)
    del state["n_constr"]
    state["arch_G"] = state["arch_G"][:, 0]  # the layout before constraints were vectors
    state["results"] = {i: (r[0], float(r[1][0]), r[2]) for i, r in state["results"].items()}
    old = Engine.__new__(Engine)
    old.__dict__.update(state)
    (tmp_path / "old.pkl").write_bytes(pickle.dumps(old))
    back = Engine.load(tmp_path / "old.pkl")
    assert back.n_constr == 1 and back.arch_G.shape == (len(X), 1)
    for i, y in enumerate(Y[1:], start=1):
        back.tell_one(i, objective(default_space().decode(y)), -1.0)
    back.tell()
    assert back.arch_G.shape == (len(X) + len(Y), 1)


def test_improvement_far_past_the_known_front_is_credited_in_full(monkeypatch):
    """Two candidates both predicted past the known best f1: the one predicted to reach far (-0.5, 0.5) is
    chosen over the one just past it (-0.15, 0.45). A box clipped at -0.1 credits both the same on f1 and
    would pick the second."""
    eng = Engine(default_space(), 2, 30, 0)
    d = len(default_space().params)
    eng.arch_X = np.zeros((2, d))
    eng.arch_F = np.array([[0.0, 1.0], [1.0, 0.0]])
    eng.arch_G = np.full((2, 1), -1.0)
    C = np.full((2, d), 0.5)
    preds = iter([(np.full(2, -1.0), np.full(2, 1e-3)),  # constraint: surely feasible
                  (np.array([-0.5, -0.15]), np.zeros(2)),  # f1
                  (np.array([0.5, 0.45]), np.zeros(2))])  # f2
    monkeypatch.setattr(eng, "_forest", lambda X, y, C, trend=0: next(preds))
    assert list(eng._select(C, 1)) == [0]


def test_extend_adds_new_individuals_to_the_pending_generation_and_tells_them_with_it(tmp_path):
    space = default_space()
    eng = Engine(space, 2, 24, 0, parallel=2)
    X0 = eng.ask()
    assert eng.extend(0) == []
    extra0 = eng.extend(1)  # the first generation, nothing told: random, as the rest of it
    assert len(extra0) == 1 and extra0[0] not in X0 and len(eng.pending) == len(X0) + 1
    for i, x in enumerate(X0 + extra0):
        eng.tell_one(i, objective(space.decode(x)), -1.0)
    eng.tell()
    X = eng.ask()
    for i in range(len(X) - 1):  # all but the last told; it still runs
        eng.tell_one(i, objective(space.decode(X[i])), -1.0)
    more = eng.extend(2)  # chosen by the surrogate, with this generation's results in its training set
    assert 1 <= len(more) <= 2 and not any(m in X or m in X0 + extra0 for m in more)
    assert len(eng.pending) == len(X) + len(more) and not eng.generation_done
    eng.save(tmp_path / "e.pkl")
    eng = Engine.load(tmp_path / "e.pkl")  # a crash here keeps the extended generation
    for i, x in enumerate([X[-1], *more], start=len(X) - 1):
        eng.tell_one(i, objective(space.decode(x)), -1.0)
    assert eng.generation_done
    eng.tell()
    assert len(eng.arch_X) == len(X0) + 1 + len(X) + len(more)
    assert eng.ask()  # NSGA-II goes on with the larger generation told


def test_extend_waits_without_the_surrogate_past_the_first_generation():
    space = default_space()
    eng = Engine(space, 2, 24, 0, parallel=2, surrogate=False)
    X0 = eng.ask()
    for i, x in enumerate(X0):
        eng.tell_one(i, objective(space.decode(x)), -1.0)
    eng.tell()
    X = eng.ask()
    eng.tell_one(0, objective(space.decode(X[0])), -1.0)
    assert eng.extend(2) == [] and len(eng.pending) == len(X)


def test_first_population_after_the_default_is_a_latin_hypercube():
    space = parse_space({
        "training": {"learning_rate": {"type": "log_uniform", "min": 1e-5, "max": 1e-3},
                     "batch_size": {"type": "categorical", "values": [4, 8, 16]}},
        "lora": {"r": {"type": "categorical", "values": [4, 8, 16, 32]}},
    })
    eng = Engine(space, 2, 30, seed=5)  # population 10: the default + 9
    first = [space.decode(x) for x in eng.ask()]
    assert len(first) == 10 and first[0].training.learning_rate == 2e-4
    rest = first[1:]
    # each option of a choice used about equally often, each ninth of a range holding one point
    assert sorted(np.bincount([[4, 8, 16].index(c.training.batch_size) for c in rest])) == [3, 3, 3]
    assert sorted(np.bincount([[4, 8, 16, 32].index(c.lora.r) for c in rest], minlength=4)) == [2, 2, 2, 3]
    u = [(np.log(c.training.learning_rate) - np.log(1e-5)) / (np.log(1e-3) - np.log(1e-5)) for c in rest]
    assert sorted(int(v * 9) for v in u) == list(range(9))


def test_neighbour_candidates_move_one_variable_of_a_non_dominated_point():
    space = parse_space({
        "training": {"learning_rate": {"type": "log_uniform", "min": 1e-5, "max": 1e-3},
                     "num_train_epochs": {"type": "int", "min": 1, "max": 4}},
        "lora": {"r": {"type": "categorical", "values": [4, 8, 16, 32]}},
    })
    eng = Engine(space, 2, 12, seed=0)
    X = eng.ask()
    for i, x in enumerate(X):
        eng.tell_one(i, objective(space.decode(x)), -1.0)
    eng.tell()
    pop = eng.algorithm.pop
    F = np.asarray(pop.get("F"), dtype=float)
    from moopt.search.pareto import nondominated_mask

    front = [dict(pop[i].X) for i in np.flatnonzero(nondominated_mask(F))]
    moves = eng._neighbours(50)
    assert moves is not None and len(moves) > 0
    for ind in moves:
        x = dict(ind.X)
        assert min(sum(x[k] != f[k] for k in x) for f in front) == 1


def test_the_surrogate_reads_unordered_choices_in_the_order_of_their_results():
    """An unordered choice's options are re-encoded as their rank by mean result (one tree split then
    parts the good ones from the rest); an ordered choice keeps its position on its scale."""
    space = parse_space({"training": {
        "lr_scheduler_type": {"type": "categorical", "values": ["linear", "cosine", "constant"]},
        "batch_size": {"type": "categorical", "values": [2, 4, 8]},
    }})
    eng = Engine(space, 1, 10, 0)
    # columns: scheduler index / 2, batch index / 2; linear and constant are good, cosine is bad
    X = np.array([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0], [0.0, 1.0], [0.5, 0.0], [1.0, 0.5]])
    y = np.array([0.1, 0.9, 0.2, 0.1, 0.8, 0.2])
    C = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 0.5]])
    Xt, Ct = eng._target_ordered(X, y, C)
    assert Xt[:, 0].tolist() == [0.0, 1.0, 0.5, 0.0, 1.0, 0.5]  # linear (0.13) < constant (0.2) < cosine (0.85)
    assert Ct[:, 0].tolist() == [1.0, 0.5, 0.0]
    assert np.array_equal(Xt[:, 1], X[:, 1]) and np.array_equal(Ct[:, 1], C[:, 1])
    assert np.array_equal(X[:, 0], [0.0, 0.5, 1.0, 0.0, 0.5, 1.0])  # the inputs are not changed in place
    # declared ordered, the scheduler keeps its index
    ordered = parse_space({"training": {"lr_scheduler_type": {"type": "categorical", "ordered": True,
                                                               "values": ["linear", "cosine", "constant"]}}})
    Xo, _ = Engine(ordered, 1, 10, 0)._target_ordered(X[:, :1], y, C[:, :1])
    assert np.array_equal(Xo, X[:, :1])


def test_the_surrogates_trees_are_scikit_learns_extra_trees_forest():
    """_extra_trees builds the trees of ExtraTreesRegressor(N_TREES, max_features=1.0) from the same
    seeds, without the forest's per-tree overhead: the same predictions, tree by tree."""
    from sklearn.ensemble import ExtraTreesRegressor

    from moopt.search.engine import N_TREES, _extra_trees

    rng = np.random.default_rng(0)
    X, C = rng.random((40, 5)), rng.random((17, 5))
    y = np.sin(6 * X[:, 0]) + X[:, 1] ** 2
    forest = ExtraTreesRegressor(n_estimators=N_TREES, min_samples_leaf=1, max_features=1.0, random_state=123,
                                 n_jobs=1).fit(X, y)
    expected = np.stack([t.predict(C) for t in forest.estimators_])
    got = _extra_trees(X, y, C, 123)
    assert got.shape == (N_TREES, 17)
    assert np.array_equal(got, expected)
    assert not np.array_equal(got, _extra_trees(X, y, C, 124))


def test_first_population_is_more_evenly_spread_than_a_plain_latin_hypercube():
    from moopt.search.engine import _discrepancy

    space = parse_space({
        "training": {"learning_rate": {"type": "log_uniform", "min": 1e-5, "max": 1e-3},
                     "weight_decay": {"type": "uniform", "min": 0.0, "max": 0.1},
                     "warmup_ratio": {"type": "uniform", "min": 0.0, "max": 0.2}},
        "lora": {"dropout": {"type": "uniform", "min": 0.0, "max": 0.2}},
    })
    chosen, plain = [], []
    for seed in range(20):
        eng = Engine(space, 2, 30, seed=seed)
        X = eng.ask()  # the default, then the 9 chosen
        first = X[:1] + eng._latin(9, np.random.default_rng(seed))  # the first hypercube the engine drew
        # judged where the engine judges it: the encoding and the LoRA features (DESIGN_FEATURES)
        chosen.append(_discrepancy(eng._features(np.array([eng._vec(x) for x in X]))))
        plain.append(_discrepancy(eng._features(np.array([eng._vec(x) for x in first]))))
    # the kept hypercube is the most even of LHS_TRIES: on every seed at most the first one drawn, and clearly below on average
    assert all(c <= p + 1e-12 for c, p in zip(chosen, plain))
    assert np.mean(chosen) < 0.9 * np.mean(plain)


def test_log_scale_integers_are_never_proposed_twice():
    """lora.r on a log scale over 4..12 and batch_size over 1..6: reals that round to the same integers are
    one point to the engine, so no proposal repeats a configuration already asked (the study would reuse
    its result and the proposal would be spent on nothing)."""
    space = parse_space({"lora": {"r": {"type": "log_uniform", "min": 4, "max": 12}},
                         "training": {"batch_size": {"type": "log_uniform", "min": 1, "max": 6}}})
    eng = Engine(space, 1, 30, 0)
    asked = []
    while len(asked) < 30:
        X = eng.ask()
        if not X:
            break
        for i, x in enumerate(X):
            cfg = space.decode(x)
            asked.append((cfg.lora.r, cfg.training.batch_size))
            eng.tell_one(i, np.array([abs(cfg.lora.r - 8) + abs(cfg.training.batch_size - 3)]), -1.0)
        eng.tell()
    assert len(asked) >= 20  # 9 x 6 = 54 configurations: the engine is not out of new ones
    assert len(set(asked)) == len(asked), asked


@pytest.mark.parametrize("values", [[4, 8], [4, 8, 32], [8, 4], [4, 32, 8, 64]])
def test_the_default_is_the_first_trial_on_a_small_space_too(values):
    """The README's "the first trial is always the well-known default": on a space of a few configurations the initial
    design repeats the default, and pymoo keeps the later of two equal individuals, which put it out of first place."""
    from moopt.search.engine import Engine
    from moopt.search.space import parse_space

    space = parse_space({"lora": {"r": {"type": "categorical", "values": values}}}, source="<test>")
    asked = [space.decode(x).lora.r for x in Engine(space, 2, 10, 0).ask()]
    assert asked[0] == space.default_in_space().lora.r and len(set(asked)) == len(asked), asked


@pytest.mark.parametrize("seed", range(6))
def test_a_small_discrete_space_is_tried_whole_then_asks_come_back_empty(seed):
    """7 configurations, 10 trials asked for, as the study drives it (a configuration tried already is told its
    stored result again and costs no trial): pymoo's ask removed duplicates within its population only, so it kept
    proposing tried configurations that had not survived, and the study re-told them forever. Now every
    configuration is trained once, then the engine says it has none left."""
    space = parse_space({"lora": {"r": {"type": "categorical", "values": [1, 2, 4, 8, 16, 32, 64]}}})
    eng = Engine(space, 2, 10, seed)
    results: dict[int, np.ndarray] = {}
    for _ in range(50):  # asks; the old engine never stopped
        X = eng.ask()
        if not X:
            break
        for i, x in enumerate(X):
            r = space.decode(x).lora.r
            if r not in results and len(results) < 10:
                results[r] = np.array([abs(np.log2(r) - 3), r / 64])
            if r in results:
                eng.tell_one(i, results[r], -1.0)
        eng.tell()
    else:
        pytest.fail(f"50 asks and the engine still proposes: {sorted(results)} tried")
    assert sorted(results) == [1, 2, 4, 8, 16, 32, 64]


def test_failed_trials_reach_the_surrogate_as_the_worst_value_measured(monkeypatch):
    """A trial with no objectives (FAIL, INFEASIBLE untrained) is told FAILED_F. The surrogate's trees were fitted on
    it as a value, ~1e9 times the front's range, and their lower bounds ran to -2.5e8: the pick then turned on which
    candidates shared a leaf with a failure (synthetic runs found configurations 2-5x worse). The objectives' trees
    now see it as the worst value measured, nothing above Z_CAP."""
    from moopt.search import engine as engine_mod

    fitted = []
    real_forest = Engine._forest

    def forest(self, X, y, C, trend=0):
        if trend:  # the objectives' models (the constraint's take no trend features)
            fitted.append(np.asarray(y).copy())
        return real_forest(self, X, y, C, trend=trend)

    monkeypatch.setattr(Engine, "_forest", forest)
    space = default_space()
    eng = Engine(space, 2, 16, 0)
    told = 0
    while told < 16:
        X = eng.ask()
        for i, x in enumerate(X):
            cfg = space.decode(x)
            fail = cfg.training.learning_rate > 3e-4  # diverges: no metrics
            eng.tell_one(i, np.full(2, engine_mod.FAILED_F) if fail else objective(cfg), 1.0 if fail else -1.0)
            told += 1
        eng.tell()
    assert fitted and all(y.max() <= engine_mod.Z_CAP for y in fitted)
    assert any((y == y.max()).sum() > 1 for y in fitted)  # the failures share the worst value measured


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_two_picks_of_a_batch_are_not_near_copies_of_each_other(seed):
    """Each pick was kept away from every point evaluated or pending, but not from the other pick of its own batch:
    a refined study trained warmup 0.0604 and 0.0593 (all else equal) side by side, both ending at the same loss."""
    from scipy.spatial.distance import pdist

    from moopt.search.engine import NOVELTY

    space = parse_space({"training": {"learning_rate": {"type": "log_uniform", "min": 1e-5, "max": 1e-2},
                                      "warmup_ratio": {"type": "uniform", "min": 0.0, "max": 0.1}}})
    eng = Engine(space, 1, 40, seed)
    gaps = []
    while len(eng.arch_X) < 30:
        X = eng.ask()
        assisted = eng.algorithm.n_iter > 1 and len(X) == eng.batch
        for i, x in enumerate(X):  # one smooth optimum: the surrogate's best guesses crowd around it
            c = space.decode(x)
            eng.tell_one(i, np.array([(np.log10(c.training.learning_rate) + 3.5) ** 2 + c.training.warmup_ratio]), -1.0)
        eng.tell()
        if assisted:
            gaps.append(pdist(np.array([eng._vec(x) for x in X])).min())
    assert gaps and min(gaps) >= NOVELTY, gaps


def test_a_resumed_studys_new_budget_resets_the_constraints_the_engine_was_told():
    """--resume --memory_constraint lower: NSGA-II kept the survivors' G told under the old budget, bred from
    configurations the new one rules out and ranked them as feasible."""
    import pickle

    space = default_space()
    eng = Engine(space, 2, 24, 0)
    X = eng.ask()
    peaks = {i: 0.5 + 0.1 * i for i in range(len(X))}
    for i, x in enumerate(X):
        eng.tell_one(i, objective(space.decode(x)), peaks[i] - 8.0)  # all under the 8 GiB budget
    eng.tell()
    eng = pickle.loads(pickle.dumps(eng))  # as engine.pkl holds it
    assert all(ind.CV[0] == 0 for ind in eng.algorithm.pop)
    budget = 0.5 + 0.1 * (len(X) // 2)  # the resumed study's: the upper half of the peaks now over it
    told = [(x, np.array([peaks[i] - budget])) for i, x in enumerate(X)]
    assert eng.reset_constraints(told) > 0
    over = {tuple(np.round(eng._vec(x), 9)) for i, x in enumerate(X) if peaks[i] > budget}
    for ind in eng.algorithm.pop:
        assert (ind.CV[0] > 0) == (tuple(np.round(eng._vec(dict(ind.X)), 9)) in over)
    assert (eng.arch_G[:, 0] > 0).sum() == sum(p > budget for p in peaks.values())
    assert eng.reset_constraints(told) == 0  # told again: nothing left to change
    assert eng.ask()  # and it goes on
