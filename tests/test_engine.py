import numpy as np

from moopt.engine import Engine, population_size
from moopt.space import default_space, parse_space


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
    assert population_size(5) == 4 and population_size(30) == 10 and population_size(1000) == 24
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
