from pathlib import Path

import numpy as np
import pytest

from moopt.search.pruner import RUNG_EVAL_MIN, RungPruner, median_ratio, pareto_order, rung_eval_size, rung_fractions

ROOT = Path(__file__).resolve().parents[1]


def test_rungs_are_fractions_of_the_budget():
    assert rung_fractions(2) == (0.125, 0.25, 0.5)
    assert rung_fractions(3) == (1 / 9, 1 / 3)
    assert rung_fractions(None) == () and rung_fractions(1) == ()


def test_rung_evaluations_read_a_bounded_fixed_subset():
    assert rung_eval_size(60, 300, 3) == RUNG_EVAL_MIN == 16  # bundled data: 16 of 60
    assert rung_eval_size(2000, 40000, 3) == 1334  # all rungs together forward <= 10% of an epoch
    assert rung_eval_size(12, 300, 3) == 12  # never more than the set
    assert rung_eval_size(2000, 40000, 0) == 2000  # no rungs: the whole set

    from moopt.train.data import Example, TokenizedSet, subset

    ds = TokenizedSet([Example([i] * (i + 1), [i] * (i + 1)) for i in range(50)], 0, 0, 0)
    a, b = subset(ds, 10), subset(ds, 10)
    ids = [e.input_ids[0] for e in a.examples]
    assert ids == [e.input_ids[0] for e in b.examples] and len(set(ids)) == 10  # the same 10, in file order
    assert ids == sorted(ids) and ids != list(range(10))  # random, not the first 10
    assert a.n_tokens == sum(i + 1 for i in ids)
    assert subset(ds, 50) is ds


def test_pareto_order_ranks_fronts_then_crowding():
    F = np.array([[1.0, 1.0], [2.0, 2.0], [0.5, 3.0], [3.0, 0.5], [2.5, 2.5]])
    order = pareto_order(F)
    assert set(order[:3]) == {0, 2, 3}  # the non-dominated front first
    assert order[3:] == [1, 4]


def test_first_arrival_goes_on_then_top_fraction():
    p = RungPruner(eta=2)
    assert p.decide(0, 0, [1.0, -0.5])  # alone at the rung: the top 1 of 1
    assert not p.decide(0, 1, [2.0, -0.1])  # dominated by the first: not the top 1 of 2
    p.forget(1)
    assert p.decide(0, 1, [0.9, -0.6])  # better than the first: goes on
    assert not p.decide(0, 2, [3.0, -0.05])  # dominated by both: not in the top floor(3/2) = 1
    assert p.decide(0, 3, [0.5, -0.9])  # dominates everything
    assert not p.decide(0, 4, [2.5, -0.2])


def test_the_median_arrival_is_not_in_the_top_half():
    """Rank <= n / eta: of 5 trials at a rung with eta = 2, ranks 1 and 2 go on, rank 3 does not."""
    p = RungPruner(eta=2)
    for n, loss in enumerate([1.0, 2.0, 4.0, 5.0]):
        p.decide(0, n, [loss])
    assert not p.decide(0, 4, [3.0])  # rank 3 of 5
    assert p.decide(0, 5, [1.5])  # rank 2 of 6


def test_synthetic_learning_curves_prune_the_bad_ones():
    """Curves loss(t) = final + gap*(1-t): rung ranks agree with final ranks, so the worst stop."""
    rng = np.random.default_rng(0)
    finals = rng.uniform(0.5, 2.0, size=16)
    p = RungPruner(eta=2)
    survivors = []
    for n, final in enumerate(finals):
        alive = True
        for rung, t in enumerate(rung_fractions(2)):
            if alive:
                loss = final + 1.0 * (1 - t)
                alive = p.decide(rung, n, np.array([loss, -1.0 / loss]))
        if alive:
            survivors.append(n)
    kept = finals[survivors]
    assert len(survivors) < len(finals) * 0.6
    assert np.median(kept) < np.median(finals)
    assert int(np.argmin(finals)) in survivors  # the best trial is never pruned


def test_a_trial_that_cannot_catch_a_completed_one_stops_though_it_ranks_in_the_top_half():
    """The dominance bound: at the 1/4 rung, trial 2 ranks 2nd of 5 (the pool still holds two poor early
    trials), but even moved toward the ideal as far as the best completed trial moved from that rung
    (loss x0.3, error x0.2), it would end at (0.33, error 0.1), dominated by trial 0's (0.3, 0.1)."""
    ideal = np.array([0.0, -1.0])  # eval_loss 0, eval_accuracy 1
    p = RungPruner(2, ideal=ideal)
    p.record(1, 0, np.array([1.0, -0.5]))
    p.complete(0, np.array([0.3, -0.9]))  # loss x0.3, error 0.5 -> 0.1 (x0.2)
    p.record(1, 1, np.array([1.2, -0.5]))
    p.complete(1, np.array([0.4, -0.85]))  # loss x0.33, error x0.3
    p.record(1, 3, np.array([5.0, -0.1]))
    p.record(1, 4, np.array([6.0, -0.1]))
    go, why = p.judge(1, 2, np.array([1.1, -0.5]))
    assert not go and why.startswith("cannot catch trial 0") and "[0.3, -0.9]" in why, why
    from moopt.search.objectives import parse_objectives

    named = RungPruner(2, ideal=ideal, describe=parse_objectives("multi:eval_loss,eval_accuracy", None).describe)
    named.record(1, 0, np.array([1.0, -0.5]))
    named.complete(0, np.array([0.3, -0.9]))
    named.record(1, 1, np.array([1.2, -0.5]))
    named.complete(1, np.array([0.4, -0.85]))
    named.record(1, 3, np.array([5.0, -0.1]))
    named.record(1, 4, np.array([6.0, -0.1]))
    go, why = named.judge(1, 2, np.array([1.1, -0.5]))  # in the objectives' own words: accuracy positive
    assert not go and why.endswith("which trial 0's final eval_loss 0.3, eval_accuracy 0.9 dominates"), why
    go, why = p.judge(1, 5, np.array([0.9, -0.55]))  # best end (0.27, 0.09): could still join the front
    assert go and why == "rank 1 of 6 at rung 1", why
    # at the first rung (1/8 of the steps) the same arrival goes on: the bound does not act there
    p.record(0, 0, np.array([1.0, -0.5]))
    p.record(0, 1, np.array([1.2, -0.5]))
    p.record(0, 3, np.array([5.0, -0.1]))
    p.record(0, 4, np.array([6.0, -0.1]))
    assert p.bound(0, 2, np.array([1.1, -0.5])) is None and p.judge(0, 2, np.array([1.1, -0.5])) == (True, "rank 2 of 5 at rung 0")


def test_the_bound_needs_two_completed_trials_an_ideal_and_never_assumes_a_trial_improves_more():
    ideal = np.array([0.0])
    one = RungPruner(2, ideal=ideal)
    one.record(1, 0, np.array([1.0]))
    one.complete(0, np.array([0.3]))
    one.record(1, 9, np.array([9.0]))
    assert one.bound(1, 1, np.array([1.1])) is None  # one completed trial: a single curve's ratio
    # two that got worse after the rung (ratio > 1) teach nothing: the best end is the rung value itself
    worse = RungPruner(2, ideal=ideal)
    for n, (r, f) in enumerate([(0.5, 0.6), (0.4, 0.45)]):
        worse.record(1, n, np.array([r]))
        worse.complete(n, np.array([f]))
    assert worse.bound(1, 2, np.array([0.44])) is None  # 0.44 could still beat 0.45
    end, by = worse.bound(1, 2, np.array([0.7]))
    assert end[0] == pytest.approx(0.7) and by == 0  # trial 0 ended at 0.6
    no_ideal = RungPruner(2)
    no_ideal.record(1, 0, np.array([1.0]))
    no_ideal.complete(0, np.array([0.3]))
    no_ideal.record(1, 1, np.array([1.0]))
    no_ideal.complete(1, np.array([0.3]))
    assert no_ideal.bound(1, 2, np.array([5.0])) is None


def test_the_bound_reads_only_completed_trials_that_ran_at_least_as_many_steps():
    """Seed 2 of the real 30-trial runs: two 1-epoch trials completed (40 steps, rung 1 at step 10); a
    2-epoch trial (80 steps, rung 1 at step 20) must not be bounded by their curves, which had 30 steps
    left, not 60. A trial of the same length is, and steps unknown (an old journal) count as comparable."""
    ideal = np.array([0.0])
    p = RungPruner(2, ideal=ideal)
    for n, (r, f) in enumerate([(1.0, 0.5), (1.2, 0.55)]):  # 1-epoch curves: x0.5, x0.46 after the rung
        p.record(1, n, np.array([r]), step=10)
        p.complete(n, np.array([f]))
    long_trial = np.array([1.3])  # x0.46 -> 0.6: dominated by trial 0's 0.5, were it judged by them
    assert p.bound(1, 5, long_trial) is not None  # no step known for trial 5: all curves count
    p.record(1, 5, long_trial, step=20)
    assert p.bound(1, 5, long_trial) is None  # reached rung 1 at step 20: no curve ran that long
    p.record(1, 6, long_trial, step=10)  # a 1-epoch trial with the same values is stopped
    assert p.bound(1, 6, long_trial)[1] == 0
    for n, (r, f) in [(2, (1.0, 0.9)), (3, (1.1, 0.95))]:  # two 2-epoch trials complete
        p.record(1, n, np.array([r]), step=20)
        p.complete(n, np.array([f]))
    assert p.bound(1, 5, long_trial) is not None  # now judged by curves as long as its own
    p.forget(5)
    assert 5 not in p.steps[1]


def test_the_bound_rule_is_the_pruners_own_arguments_with_the_module_defaults():
    """bound_min_completed / bound_min_fraction / bound_same_budget default to the module constants and
    change only that pruner (the benchmarks' variants need no module state)."""
    from moopt.search import pruner as mod

    ideal = np.array([0.0])

    def two_curves(**kw):
        p = RungPruner(2, ideal=ideal, **kw)
        for n, (r, f) in enumerate([(1.0, 0.5), (1.2, 0.55)]):
            p.record(1, n, np.array([r]), step=10)
            p.complete(n, np.array([f]))
        return p

    default = two_curves()
    assert (default.bound_min_completed, default.bound_min_fraction, default.bound_same_budget) == (
        mod.BOUND_MIN_COMPLETED, mod.BOUND_MIN_FRACTION, mod.BOUND_SAME_BUDGET)
    assert default.bound(1, 5, np.array([1.3])) is not None  # rung 1 sits at 1/4 >= 0.2: the bound acts
    assert two_curves(bound_min_completed=3).bound(1, 5, np.array([1.3])) is None  # two curves < 3
    assert two_curves(bound_min_fraction=0.3).bound(1, 5, np.array([1.3])) is None  # 1/4 < 0.3
    longer = two_curves(bound_same_budget=False)
    longer.record(1, 5, np.array([1.3]), step=20)
    assert longer.bound(1, 5, np.array([1.3])) is not None  # shorter curves count when told so
    assert default.bound(1, 6, np.array([1.3])) is not None  # the other pruners kept the default rule


def test_the_study_gives_the_pruner_each_rung_step(tmp_path):
    """The wiring of the rule above: Study.decide_rung passes the trial's optimizer step at the rung."""
    from moopt.search.objectives import parse_objectives
    from moopt.search.space import load_space
    from moopt.study.scheduler import Study, StudyConfig

    cfg = StudyConfig(base_model="m", model_path="m", train_file=str(ROOT / "data" / "train.jsonl"),
                      validation_file=str(ROOT / "data" / "val.jsonl"), output_dir=str(tmp_path / "o"), num_trials=2,
                      objectives=parse_objectives("multi:eval_loss,eval_accuracy", None),
                      space=load_space(ROOT / "config" / "demo_search_space.yaml"), seed=0, pruning_factor=2)
    study = Study(cfg)
    study.journal = []  # decide_rung appends its event here
    assert study.decide_rung(3, 17, {"eval_loss": 1.0, "eval_accuracy": 0.5}, 1)
    assert study.pruner.steps[1][3] == 17 and study.journal[0]["step"] == 17


def test_the_bound_saves_compute_on_synthetic_curves_and_keeps_the_best_trials():
    """Curves loss(t) = final + gap*(1-t), arriving in random order: with the bound, fewer steps
    are trained than with the rank rule alone, and every trial that ends better than all before it
    still runs to its end (a better final is further from its rung value: the bound holds)."""
    rng = np.random.default_rng(1)
    finals = rng.uniform(0.2, 2.0, size=40)
    gaps = rng.uniform(0.5, 1.5, size=40)
    cost, kept = {}, {}
    for label, ideal in (("rank", None), ("bound", np.array([0.0, -1.0]))):
        p = RungPruner(eta=2, ideal=ideal)
        cost[label], kept[label] = 0.0, []
        for n, (final, gap) in enumerate(zip(finals, gaps)):
            alive, reached = True, 1.0
            for rung, t in enumerate(rung_fractions(2)):
                loss = final + gap * (1 - t)
                if not p.decide(rung, n, np.array([loss, -1.0 / (1.0 + loss)])):
                    alive, reached = False, t
                    break
            cost[label] += reached
            if alive:
                p.complete(n, np.array([final, -1.0 / (1.0 + final)]))
                kept[label].append(n)
    assert cost["bound"] < 0.9 * cost["rank"], cost
    assert set(kept["bound"]) < set(kept["rank"])
    best_so_far = [n for n in range(40) if finals[n] < finals[:n].min(initial=np.inf)]
    assert set(best_so_far) <= set(kept["bound"])  # every new best trial ran to its end


def test_forget_drops_a_requeued_trial():
    p = RungPruner(eta=2)
    p.decide(0, 0, [1.0])
    p.forget(0)
    assert p.pools[0] == {}


def test_study_with_pruning_stops_the_bad_trials_and_records_them(tiny_model, tiny_data, tmp_path, load_bench):
    """End to end: trial 0 (the default, moved to lr 3e-2) learns; lr 1e-7 trials stay at the base
    model's loss, rank below it at the first rung and stop there, as PRUNED with their step, their
    learning curve and their rung evaluation told to NSGA-II. Rungs read the same 16 of the 48
    validation examples in every trial; the final evaluation reads all 48."""
    import json

    import pandas as pd
    from click.testing import CliRunner

    from moopt.cli import main

    val = tmp_path / "val48.jsonl"
    val.write_text(tiny_data["val"].read_text() * 3)  # 48 rows

    space = tmp_path / "space.yaml"
    space.write_text("training:\n  learning_rate: {type: categorical, values: [3e-2, 1e-7]}\n  num_train_epochs: 2\n"
                     "  batch_size: 4\nlora:\n  dropout: {type: uniform, min: 0.0, max: 0.1}\ndata:\n  max_seq_length: 32\n")
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
                                  "--validation_file", str(val), "--output_dir", str(out),
                                  "--search_space", str(space), "--num_trials", "5", "--seed", "0", "--no-baseline",
                                  "--pruning_factor", "2", "--optimization_objective", "multi:eval_loss,eval_accuracy"])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "trials_summary.csv")
    assert df.loc[0, "params_learning_rate"] == 3e-2 and df.loc[0, "state"] == "COMPLETE"
    slow = df[df.params_learning_rate == 1e-7]
    assert len(slow) >= 1 and (slow.state == "PRUNED").all(), df[["number", "params_learning_rate", "state"]]
    assert (slow.steps < slow.total_steps).all() and slow.error.str.match(r"pruned at step \d+").all()
    assert slow.error.str.contains("on the rungs' 16 of 48 validation examples").all()
    assert slow.error.str.contains(r"; rank \d+ of \d+ at rung 0: not in the top \d+").all()  # why, in words
    assert slow.values_eval_loss.notna().all()  # its last evaluation is its result
    rungs = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    rungs = [e for e in rungs if e["type"] == "rung"]
    assert {e["rung"] for e in rungs if e["number"] == 0} == {0, 1, 2}  # eta 2: 1/8, 1/4, 1/2 of 24 steps
    assert all(e["reason"] for e in rungs)
    for n in slow.number:
        assert [e["decision"] for e in rungs if e["number"] == n][-1] == "prune"
        curve = json.loads((out / "trial_results" / f"trial_{n}" / "metrics.json").read_text())
        assert len(curve["curve"]) == int(df.loc[n, "steps"])
        assert [e["examples"] for e in curve["evals"]] == [16]
    m0 = json.loads((out / "trial_results" / "trial_0" / "metrics.json").read_text())
    assert [e["examples"] for e in m0["evals"]] == [16, 16, 16, 48]
    # what evaluation costs is counted: a pruned trial read the subset once (the same tokens in every
    # trial); trial 0 read it at 3 rungs, then the whole set
    sub = slow.eval_tokens.unique()
    assert len(sub) == 1 and sub[0] > 0
    assert m0["eval_tokens"] - 3 * sub[0] > sub[0] and df.loc[0, "eval_tokens"] == m0["eval_tokens"]

    # bench_prune_calls reruns the pruned trials to their end: the lr 1e-7 ones end dominated by trial 0
    bench = load_bench("bench_prune_calls")
    assert bench.main([str(out), "--all", "--out", str(tmp_path / "calls.csv")]) == 0
    calls = bench.read_calls(tmp_path / "calls.csv")
    assert sorted(calls.trial) == sorted(df[df.state == "PRUNED"].number)
    calls = calls[calls.trial.isin(slow.number)]
    assert (calls.reason == "rank").all() and calls.dominated_by_front.all()
    assert (calls.final_eval_loss > df.loc[0, "values_eval_loss"]).all()
    assert bench.main([str(tmp_path)]) == 2  # not a study folder: one line, exit 2



def test_pruning_with_peak_memory_as_an_objective(tiny_model, tiny_data, tmp_path):
    """Rung evaluations carry the trial's peak memory so far, so a study whose objectives include
    peak_memory_gb can prune. (They did not: the pruner's KeyError killed the thread that answers the rung,
    and both trials of the first generation waited for their answer until the stall watchdog.)"""
    import json

    from click.testing import CliRunner

    from moopt.cli import main

    space = tmp_path / "space.yaml"
    space.write_text("training:\n  learning_rate: {type: log_uniform, min: 1e-4, max: 3e-2}\n  num_train_epochs: 2\n"
                     "  batch_size: 4\nlora:\n  r: {type: categorical, values: [4, 8]}\ndata:\n  max_seq_length: 32\n")
    out = tmp_path / "hpo"
    r = CliRunner().invoke(
        main, ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
               "--validation_file", str(tiny_data["val"]), "--output_dir", str(out), "--search_space", str(space),
               "--num_trials", "3", "--seed", "0", "--no-baseline", "--pruning_factor", "2", "--stall_timeout", "120",
               "--optimization_objective", "multi:eval_loss,peak_memory_gb"])
    assert r.exit_code == 0, r.output
    assert "decision failed" not in r.output
    events = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    rungs = [e for e in events if e["type"] == "rung"]
    assert rungs and all(e["metrics"]["peak_memory_gb"] > 0 for e in rungs)
    ends = [e for e in events if e["type"] == "trial_end"]
    assert len(ends) == 3 and {e["state"] for e in ends} <= {"COMPLETE", "PRUNED"}


def test_a_failing_rung_decision_lets_the_trial_go_on(capsys):
    """A bug in the study's answer at a rung costs that pruning decision, not the trial (nor the study)."""
    from moopt.study.executor import ExecutorBase

    def broken(number, step, metrics, rung):
        return metrics["peak_memory_gb"] > 1

    ex = ExecutorBase(on_rung=broken)
    assert ex._rung(7, 12, {"eval_loss": 1.0}, 0) is True
    assert "trial 7: the rung 0 decision failed (KeyError: 'peak_memory_gb'); it goes on" in capsys.readouterr().err
    assert ExecutorBase(on_rung=lambda *a: False)._rung(7, 12, {}, 0) is False


def test_rung_subset_benchmark_agrees_fully_on_the_whole_set_and_less_on_noisy_small_subsets(load_bench):
    """bench_rung_subset's agreement measure: a 'subset' as large as the set makes every call of the
    whole set; with noisy per-example losses and close trials, small subsets make fewer."""
    bench = load_bench("bench_rung_subset")
    rng = np.random.default_rng(0)
    n_val, trials = 40, {}
    for t in range(8):  # trial t: mean loss 0.2 + 0.02 t per token, noisy per example
        tokens = np.full(n_val, 5.0)
        loss = tokens * np.clip(0.2 + 0.02 * t + rng.normal(0, 0.3, n_val), 0, None)
        correct = rng.binomial(5, 0.9 - 0.01 * t, n_val).astype(float)
        trials[f"trial_{t}"] = np.stack([loss, correct, tokens])
    whole, small = bench.agreement([trials], [n_val, 4], draws=50)
    assert whole["same_call"] == 1.0 and whole["same_order_good"] == 1.0 and whole["loss_regret"] == 0.0
    assert small["same_call"] < 1.0 and small["same_order_good"] < 1.0 and small["loss_regret"] > 0.0


def test_a_pruned_trial_is_projected_as_the_nearest_completed_trial_went_on_from_its_rung():
    """Per objective, the gap to the ideal (loss - 0, 1 - accuracy) shrinks by the ratio final gap /
    rung gap of the completed trial whose gap at the pruned trial's last rung was closest (a slow
    learner borrows a slow learner's improvement), never grows; median_ratio scales by the median instead."""
    p = RungPruner(2)
    p.record(0, 0, np.array([1.0, -0.5]))
    p.complete(0, np.array([0.5, -0.75]))  # loss gap x0.5, error 0.5 -> 0.25 (x0.5)
    p.record(0, 1, np.array([2.0, -0.6]))
    p.complete(1, np.array([1.8, -0.8]))  # loss x0.9, error 0.4 -> 0.2 (x0.5)
    p.record(1, 0, np.array([0.6, -0.7]))  # a later rung: not the pruned trial's
    p.record(0, 2, np.array([1.9, -0.9]))
    ideal = np.array([0.0, -1.0])
    # loss gap 1.9 is nearest trial 1's 2.0 (x0.9); error 0.1 is nearest trial 1's 0.4 (x0.5)
    np.testing.assert_allclose(p.projected(2, np.array([1.9, -0.9]), ideal), [1.71, -0.95])
    np.testing.assert_allclose(p.projected(2, np.array([1.9, -0.9]), ideal, ratio=median_ratio), [1.9 * 0.7, -0.95])
    # a completed trial that got worse from the rung lends no growth: the gap stays as measured
    p.record(0, 5, np.array([5.0, -0.5]))
    p.complete(5, np.array([6.0, -0.75]))
    p.record(0, 6, np.array([4.0, -0.5]))
    np.testing.assert_allclose(p.projected(6, np.array([4.0, -0.5]), ideal), [4.0, -0.75])
    # no completed trial at its rung, or never at a rung: as measured
    p.record(2, 3, np.array([0.3, -0.9]))
    np.testing.assert_allclose(p.projected(3, np.array([0.3, -0.9]), ideal), [0.3, -0.9])
    np.testing.assert_allclose(p.projected(4, np.array([5.0, -0.1]), ideal), [5.0, -0.1])
    p.forget(0)
    assert 0 not in p.finals


def test_engine_surrogate_learns_the_projection_while_nsga2_gets_the_measured_values():
    from moopt.search.engine import Engine
    from moopt.search.space import default_space

    eng = Engine(default_space(), n_obj=2, num_trials=12, seed=0)
    X = eng.ask()
    for i in range(len(X)):
        F = np.array([1.0 + i, -0.5])
        eng.tell_one(i, F, -1.0, F_surrogate=F / 2 if i == 0 else None)
    eng.tell()
    np.testing.assert_allclose(eng.arch_F[0], [0.5, -0.25])
    np.testing.assert_allclose(eng.arch_F[1], [2.0, -0.5])
    told = np.asarray(eng.algorithm.pop.get("F"), dtype=float)
    assert any(np.allclose(f, [1.0, -0.5]) for f in told)

def test_pruning_simulation_runs_moopts_own_study_on_a_surrogate_of_the_demo_trials(tmp_path, load_bench, monkeypatch):
    """bench_pruning_sim: the committed trial table fits a surrogate; the Study loop, engine and pruner
    run as in a real study with a simulated executor; the same configuration in the same seed gets the
    same values in both studies (as real CPU trials do)."""
    import json

    import pandas as pd

    sim = load_bench("bench_pruning_sim")
    table = pd.read_csv(sim.DATA)
    assert set(table.level) == {-1, 0, 1, 2, 3} and table.study.nunique() >= 20
    oracle = sim.Oracle(table)
    assert oracle.forest.oob_score_ > 0.8  # the surrogate explains most of what real trials showed
    default = table[table.level == 3].iloc[0][list(sim.PARAMS)].to_dict()
    a = oracle(default, 3, 0)
    assert oracle(default, 3, 0) == a and oracle(default, 3, 1) != a
    # learning as real trials showed it: a high learning rate ends far below the default's loss
    good = {**default, "learning_rate": 2e-3, "num_train_epochs": 2, "alpha": 64.0}
    losses = [oracle(good, k, 0)["eval_loss"] for k in range(4)]
    assert losses[3] < losses[0] and losses[3] < 0.5 * a["eval_loss"]
    # deviations: real trials' residual curves (all four levels), or without such trials independent normals
    assert oracle.pool.shape[1:] == (4, 2) and len(oracle.pool) >= 50
    finals_only = sim.Oracle(table[table.level.isin([-1, 3])])
    assert finals_only.pool is None and finals_only(default, 3, 0) == finals_only(default, 3, 0)

    out = tmp_path / "sim.csv"
    assert sim.main(["--seeds", "2", "--trials", "8", "--out", str(out)]) == 0
    rows = pd.DataFrame(sim.read_studies(out))  # benchmarks/common.py's long rows, one record per study again
    assert len(rows) == 4 and (rows.hv_base > 0).all()
    pr, base = rows[rows.provider == "eta_2"], rows[rows.provider == "no_pruning"]
    assert (pr.n_pruned > 0).all() and (base.n_pruned == 0).all() and (base.n_complete == 8).all()
    assert pr.compute_tokens.sum() < 0.8 * base.compute_tokens.sum()
    assert out.with_suffix(".png").stat().st_size > 0
    assert "median_hv_base_loss_ci95_pct" in out.with_suffix(".json").read_text()
    # the loss split: the pruned trials' would-be ends can only add to the front, and they add exactly
    # what the calls cost; without pruning there is nothing to add
    assert (base.hv_calls == base.hv_base).all() and (pr.hv_calls >= pr.hv_base).all()
    assert (pr.n_wrong_calls <= pr.n_pruned).all() and ((pr.hv_calls > pr.hv_base) == (pr.n_wrong_calls > 0)).all()
    split = json.loads(out.with_suffix(".json").read_text())
    loss = 100 * (1 - pr.hv_base.to_numpy() / base.hv_base.to_numpy())
    assert abs(split["mean_loss_from_calls_pct"] + split["mean_loss_from_path_pct"] - loss.mean()) < 1e-9
    assert sim.main(["--summarize", "--out", str(out)]) == 0
    assert sim.main(["--summarize", "--out", str(tmp_path / "none.csv")]) == 2

    # the simulated studies' journals are real ones: --collect reads them back
    f = sim.run_sim_study(oracle, tmp_path / "s", 0, 8, 2.0)
    assert {e["state"] for e in f.values()} == {"COMPLETE", "PRUNED"}
    assert sim.main(["--collect", str(tmp_path), "--table", str(tmp_path / "t.csv")]) == 0
    t = pd.read_csv(tmp_path / "t.csv")
    assert set(t.level) == {0, 1, 2, 3} and (t.level == 3).sum() == sum(e["state"] == "COMPLETE" for e in f.values())
    assert sim.main(["--collect", str(tmp_path / "nowhere")]) == 2
    assert sim.main(["--table", str(tmp_path / "none.csv")]) == 2

    # bench_prune_calls --twins reads a pruned trial's end from the same seed's study without pruning
    w = tmp_path / "w"
    for label, eta in (("s4_eta_2", 2.0), ("s4_no_pruning", None)):
        sim.run_sim_study(oracle, w / label, 4, 8, eta)  # a seed whose pruned trials have twins and not
    calls = load_bench("bench_prune_calls")
    assert calls.main([str(w / "s4_eta_2"), "--all", "--twins", "--out", str(tmp_path / "tw.csv")]) == 0
    tw = calls.read_calls(tmp_path / "tw.csv")
    ends = calls.twin_finals(w / "s4_eta_2")
    assert len(tw) >= 1 and set(tw.reason) <= {"rank", "bound"}
    first = tw.iloc[0]
    _, starts, _ = calls.read_study(w / "s4_eta_2")
    twin = ends[json.dumps(starts[int(first.trial)]["config"], sort_keys=True)]
    assert first.final_eval_loss == twin["eval_loss"]
    assert calls.main([str(w / "s4_no_pruning"), "--twins", "--out", str(tmp_path / "x.csv")]) == 2
    # --rerun-rest retrains the pruned trials without a twin (here: the oracle's end of the configuration,
    # as the simulation knows it), and the study's loss splits into the calls' cost and the path
    flat = load_bench("demo_study")._flat
    monkeypatch.setattr(calls, "rerun", lambda start, header, work: oracle(flat(start["config"]), 3, 3))
    base_file = tmp_path / "baseline.json"  # the base model's values: the hypervolume's reference
    base_file.write_text(json.dumps({"state": "COMPLETE", "metrics": oracle.base}))
    assert calls.main([str(w / "s4_eta_2"), "--all", "--twins", "--rerun-rest", "--baseline", str(base_file),
                       "--out", str(tmp_path / "all.csv")]) == 0
    every = calls.read_calls(tmp_path / "all.csv")
    _, _, ends = calls.read_study(w / "s4_eta_2")
    assert sorted(every.trial) == sorted(n for n, e in ends.items() if e["state"] == "PRUNED")
    assert set(every.end_from) == {"twin", "rerun"} and (every.end_from == "twin").sum() == len(tw)
    assert (tmp_path / "all_studies.png").stat().st_size > 0
    common = load_bench("common")
    st = pd.DataFrame(common.wide(common.read_rows(tmp_path / "all_studies.csv"))).iloc[0]
    fronts = {}
    for label in ("s4_eta_2", "s4_no_pruning"):
        _, _, e = calls.read_study(w / label)
        fronts[label] = np.array([[m["metrics"]["eval_loss"], -m["metrics"]["eval_accuracy"]] for m in e.values()
                                  if m["state"] == "COMPLETE"])
    ref = np.array([oracle.base["eval_loss"], -oracle.base["eval_accuracy"]])
    hv = load_bench("bench_pruning").hv
    h_pr, h_base = hv(fronts["s4_eta_2"], ref), hv(fronts["s4_no_pruning"], ref)
    would = np.array([[r.final_eval_loss, r.final_eval_accuracy] for r in every.itertuples()])
    assert st.n_pruned == len(every) and abs(st.loss_pct - 100 * (1 - h_pr / h_base)) < 1e-9
    assert abs(st.calls_cost_pct - 100 * (hv(np.vstack([fronts["s4_eta_2"], would]), ref) - h_pr) / h_base) < 1e-9
    assert st.calls_cost_pct >= 0 and abs(st.calls_cost_pct + st.path_pct - st.loss_pct) < 1e-9
    assert calls.main([str(w / "s4_eta_2"), "--rerun-rest", "--out", str(tmp_path / "y.csv")]) == 2
    # bench_projection: each pruned trial's last rung values (as journaled), its projection, its real end
    proj = load_bench("bench_projection")
    assert proj.main([str(tmp_path / "all.csv"), str(w), "--out", str(tmp_path / "proj.csv")]) == 0
    pj = pd.DataFrame(common.wide(common.read_rows(tmp_path / "proj.csv")))
    from moopt.journal import replay

    rec = replay(w / "s4_eta_2")
    last = {r["number"]: r["metrics"] for r in rec.rungs}  # rung events in order: the last one wins
    assert sorted(pj.trial) == sorted(every.trial) and np.isfinite(pj.log_ratio_projected).all()
    for r in pj.itertuples():
        assert r.rung_eval_loss == last[r.trial]["eval_loss"]
        assert r.end_eval_loss == every.set_index("trial").final_eval_loss[r.trial]
        if r.completed_then == 0:  # nothing completed yet: nothing to project from
            assert r.projected_eval_loss == r.rung_eval_loss == r.median_eval_loss
        else:  # the code's rule scales the gap by one completed trial's improvement, never above 1
            assert 0 <= r.projected_eval_loss <= r.rung_eval_loss
    assert proj.main([str(tmp_path / "none.csv"), str(w)]) == 2 and proj.main([str(tmp_path / "all.csv"), str(tmp_path)]) == 2


def test_a_rung_falls_at_or_after_its_fraction_of_the_steps():
    """Rounded down, the 1/4 rung of a 6-step trial fell on step 1 (17%), merged with the 1/8 one, and the bound,
    which acts only from rungs at >= 1/5, stopped a trial at 17% of its steps (the guide's basic study)."""
    from moopt.train.recipe import rung_steps

    fractions = rung_fractions(2)
    assert rung_steps(6, fractions) == {1: 0, 2: 1, 3: 2}
    for total in range(2, 200):
        for step, i in rung_steps(total, fractions).items():
            assert step / total >= fractions[i] - 1e-12 and step < total
    assert rung_steps(40, (0.1, 0.25, 0.5)) == {4: 0, 10: 1, 20: 2}  # exact products stay (0.1 * 40 is not 4.0000001)
