"""refined_space.yaml, the guide's coarse -> refined search, on synthetic studies whose answers are known:
learning_rate alone drives the score (synthetic_trials: lower is better)."""

from __future__ import annotations

import io
import json
import random

import yaml
from test_analysis import TARGETS, synthetic_trials, write_fake_study

from moopt.report.analysis import Importance, RangeEdge, load_space_spec, range_edges
from moopt.report.refine import REFINED, refine, refined_command, write_refined
from moopt.report.table import load_study
from moopt.search.space import load_space


def _spec(out):
    return yaml.safe_load((out / "search_space.yaml").read_text())


def _worst(trials, k: int) -> float:
    """The eval_loss of the k-th worst COMPLETE trial."""
    return sorted(t["metrics"]["eval_loss"] for t in trials if t.get("state", "COMPLETE") == "COMPLETE")[-k]


def _with_header(out, **extra):
    """The study header a real study writes: its fixed values (fingerprint) and options."""
    path = out / "journal.jsonl"
    lines = path.read_text().splitlines()
    header = json.loads(lines[0]) | extra
    path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    return out


def test_ranges_narrow_around_the_best_trials_and_the_file_is_a_search_space(tmp_path):
    out = _with_header(write_fake_study(tmp_path / "s", synthetic_trials(24)),
                       fingerprint={"fixed": {"data": {"max_seq_length": 64, "packing": True}}})
    data = load_study(out)
    r = write_refined(out, data, [])
    assert r is not None and (out / REFINED).is_file()
    space = load_space(out / REFINED)  # parses as a search space, every end a valid trial
    lr = next(p for p in space.params if p.name == "training.learning_rate")
    t = data.table
    done = t[(t.state == "COMPLETE")]
    top = done.nlargest(len(done) // 3, "score")
    assert sorted(r.top) == sorted(int(n) for n in top.number)
    # the best trials' learning rates are inside, the range is narrower than 1e-5..1e-2 and still >= 40% of it
    assert lr.low <= top.params_learning_rate.min() and lr.high >= top.params_learning_rate.max()
    assert (lr.low, lr.high) != (1e-5, 1e-2) and 1e-5 <= lr.low and lr.high <= 1e-2
    assert lr.high / lr.low >= 10 ** (3 * 0.4) * 0.99
    # the fixed value of the study's own file is kept (not the default 512); the default packing is not written
    assert space.fixed.data.max_seq_length == 64
    assert "packing" not in yaml.safe_load((out / REFINED).read_text()).get("data", {})
    text = (out / REFINED).read_text()
    assert "learning_rate: {type: log_uniform, min: " in text and "# was 1e-05 .. 0.01 (log); the " in text
    assert text.startswith(f"# Refined search space from the study in {out}")


def test_a_categorical_value_is_dropped_only_on_evidence_and_an_ordered_one_only_from_its_ends(tmp_path):
    trials = synthetic_trials(24)
    rng = random.Random(3)
    worst = _worst(trials, 8)
    for t in trials:  # batch 16 and the qv target set only in the worse half; 4 and 8 spread
        bad = t["metrics"].get("eval_loss", 9) >= worst
        t["params"]["batch_size"] = 16 if bad else rng.choice([4, 8])
        t["params"]["target_modules"] = TARGETS[0] if bad else TARGETS[1]
    out = write_fake_study(tmp_path / "s", trials)
    r = refine(load_study(out), _spec(out), [])
    assert r.space["training"]["batch_size"] == {"type": "categorical", "values": [4, 8]}
    assert r.space["lora"]["target_modules"] == "attention"  # one value left: fixed, by its alias
    why = {c.name: c.why for c in r.changes}
    assert why["training.batch_size"].startswith("dropped 16: every trial with it scored below the median")
    # on an ordered scale only from its ends: 8 inside 2..16 stays though every trial with it did badly (and the
    # untried 2 and 16 stay: no evidence); 4 at the end of 4..16 goes
    for t in trials:
        t["params"]["batch_size"] = 8 if t["metrics"].get("eval_loss", 9) >= worst else 4
    out = write_fake_study(tmp_path / "mid", trials, space="training:\n  batch_size: {type: categorical, values: [2, 4, 8, 16]}\n")
    assert refine(load_study(out), _spec(out), []) is None
    for t in trials:
        t["params"]["batch_size"] = 4 if t["metrics"].get("eval_loss", 9) >= worst else 8
    out = write_fake_study(tmp_path / "end", trials, space="training:\n  batch_size: {type: categorical, values: [4, 8, 16]}\n")
    assert refine(load_study(out), _spec(out), []).space == {"training": {"batch_size": {"type": "categorical", "values": [8, 16]}}}


def test_a_range_end_the_best_trials_lean_against_is_widened_past_it(tmp_path):
    trials = synthetic_trials(24)
    best, worst = -_worst([{"metrics": {"eval_loss": -t["metrics"].get("eval_loss", 9)}} for t in trials], 7), _worst(trials, 8)
    for t in trials:  # the 7 best on 4, the 8 worst on 16
        loss = t["metrics"].get("eval_loss", 9)
        t["params"]["batch_size"] = 4 if loss <= best else 16 if loss >= worst else 8
    out = write_fake_study(tmp_path / "s", trials)
    data = load_study(out)
    edges = range_edges(data, load_space_spec(out))
    assert ("batch_size", "low") in {(e.param, e.side) for e in edges}
    edges.append(RangeEdge("learning_rate", 1.2e-5, "low", 1e-5, 1e-2, "log scale", 5, 7, 0.8, 0.001))
    r = refine(data, _spec(out), edges)
    lr = r.space["training"]["learning_rate"]
    assert lr["min"] < 1e-5 and lr["max"] <= 1e-2  # half the old range (1.5 decades) further down
    assert 10 ** -6.6 < lr["min"] < 10 ** -6.4
    assert r.space["training"]["batch_size"]["values"] == [2, 4, 8]  # the next of 4, 8, 16 below, and 16 dropped
    why = {c.name: c.why for c in r.changes}
    assert "past the min: the best trials lean against it" in why["training.learning_rate"]
    assert "added 2: the best trials lean against that end" in why["training.batch_size"]
    # where a parameter cannot go further (warmup_ratio below 0) nothing is added past it
    edge = RangeEdge("warmup_ratio", 0.0, "low", 0.0, 0.1, "linear scale", 3, 3, -0.5, 0.01)
    r = refine(data, _spec(out), [edge])
    assert r.space["training"]["warmup_ratio"]["min"] == 0.0


def test_a_parameter_that_does_not_matter_is_fixed_at_the_best_trial_s_value_on_enough_trials(tmp_path):
    out = write_fake_study(tmp_path / "s", synthetic_trials(24))
    data = load_study(out)
    best = data.table[data.table.number == data.best].iloc[0]
    shares = {"learning_rate": 0.9, "r": 0.085, "warmup_ratio": 0.01, "batch_size": 0.005}
    r = refine(data, _spec(out), [], Importance(shares, target="score", n_trials=22))
    assert r.space["training"]["warmup_ratio"] == float(best.params_warmup_ratio)
    assert r.space["training"]["batch_size"] == int(best.params_batch_size)
    assert isinstance(r.space["lora"]["r"], dict)  # 8.5%: still searched
    assert "fixed at the best trial's value: 1.0% of the score's variance over 21 trials" in \
        {c.name: c.why for c in r.changes}["training.warmup_ratio"]
    load_space(write_refined(out, data, [], Importance(shares, target="score", n_trials=22)) and out / REFINED)
    # on fewer trials the shares are noise: nothing is fixed
    r = refine(data, _spec(out), [], Importance(shares, target="score", n_trials=12))
    assert isinstance(r.space["training"]["warmup_ratio"], dict)


def test_too_few_complete_trials_write_no_file_and_a_stale_one_goes(tmp_path):
    out = write_fake_study(tmp_path / "s", synthetic_trials(24))
    write_refined(out, load_study(out), [])
    assert (out / REFINED).is_file()
    (out / "journal.jsonl").unlink()
    few = write_fake_study(tmp_path / "s", synthetic_trials(6))  # 3 of them COMPLETE
    assert write_refined(few, load_study(few), []) is None and not (out / REFINED).exists()


def test_the_summary_and_the_report_give_the_refined_study_s_command(tmp_path, monkeypatch):
    from rich.console import Console

    from moopt.report.analysis import analyze
    from moopt.report.html import build_html
    from moopt.report.results import print_summary

    monkeypatch.chdir(tmp_path)
    out = _with_header(write_fake_study(tmp_path / "runs" / "hpo", synthetic_trials(24)), options={
        "base_model": "smollm2-135m", "train_file": str(tmp_path / "data" / "train.jsonl"),
        "validation_file": str(tmp_path / "data" / "val.jsonl"), "num_trials": 24,
        "optimization_objective": "multi:eval_loss,eval_accuracy", "optimization_weights": "0.7,0.3",
        "memory_constraint": None, "pruning_factor": 2.0, "parallel_trials": 1})
    data = load_study(out)
    r = write_refined(out, data, [])
    cmd = refined_command(data.header, out.relative_to(tmp_path))
    assert cmd == ("moopt optimize --base_model tiny --train_file data/train.jsonl --validation_file data/val.jsonl "
                   "--output_dir runs/hpo_refined --num_trials 24 --search_space runs/hpo/refined_space.yaml "
                   "--warm_start runs/hpo --optimization_objective multi:eval_loss,eval_accuracy "
                   "--optimization_weights 0.7,0.3 --pruning_factor 2.0")
    # a study with its own seed and kernel path: the refined one keeps them (--warm_start takes trials over only then)
    seeded = {**data.header, "fingerprint": {**(data.header.get("fingerprint") or {}), "seed": 7},
              "options": {**data.header["options"], "seed": 7, "kernels": "torch"}}
    assert refined_command(seeded, out.relative_to(tmp_path)).endswith("--pruning_factor 2.0 --seed 7 --kernels torch")
    # every other option not at its default is carried: it dropped --keep_adapters best, --no-baseline and Ray
    more = {**data.header, "options": {**data.header["options"], "keep_adapters": "best", "baseline": False,
                                       "executor": "ray", "ray_address": "auto", "stall_timeout": 600.0,
                                       "warm_workers": False, "time_budget_hours": 4.0, "seed": 42, "kernels": "auto"}}
    assert refined_command(more, out.relative_to(tmp_path)).endswith(
        "--pruning_factor 2.0 --keep_adapters best --no-baseline --executor ray --ray_address auto --stall_timeout 600.0 "
        "--no_warm_workers")
    from moopt.cli import main
    from moopt.report.refine import OPTIMIZE_DEFAULTS

    defaults = {p.name: p.default for p in main.commands["optimize"].params}
    assert OPTIMIZE_DEFAULTS == {k: defaults[k] for k in OPTIMIZE_DEFAULTS}
    buf = io.StringIO()
    best = data.table[data.table.number == data.best].iloc[0]
    print_summary(data, {"best_config": {}, "best_metrics": {n: float(best[f"values_{n}"]) for n in data.objectives.names}},
                  Console(file=buf, width=400, highlight=False), out.relative_to(tmp_path), None, [], r)
    text = buf.getvalue()
    assert "Refined search space (the guide's coarse -> refined search; runs/hpo/refined_space.yaml):\n  learning_rate" in text
    assert "1e-05 .. 0.01 (log) -> " in text and text.rstrip().endswith(cmd)
    page = build_html(data, analyze(out, data), {}, r, out.relative_to(tmp_path))
    assert "<h2>Refined search space</h2>" in page and "--warm_start runs/hpo" in page


def test_a_refined_study_whose_best_is_taken_over_says_no_new_trial_beat_it(tmp_path):
    from rich.console import Console

    from moopt.report.results import print_summary

    out = write_fake_study(tmp_path / "s", synthetic_trials(12))
    best = load_study(out).best
    path = out / "journal.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    for ev in events:
        if ev["type"] == "trial_end" and ev["number"] in (best, 0):
            ev["taken_from"] = f"runs/hpo trial {ev['number'] + 7}"
    path.write_text("".join(json.dumps(ev) + "\n" for ev in events))
    data = load_study(out)
    buf = io.StringIO()
    row = data.table[data.table.number == best].iloc[0]
    print_summary(data, {"best_config": {}, "best_metrics": {n: float(row[f"values_{n}"]) for n in data.objectives.names}},
                  Console(file=buf, width=400, highlight=False), out, None, [], None)
    text = buf.getvalue()
    assert f"(taken over from runs/hpo trial {best + 7}: none of the 10 trials this study trained beat it)" in text
    assert "2 of them taken over from runs/hpo with their results, not trained again" in text


def test_a_refined_space_that_does_not_parse_is_a_warning_not_a_failed_study(tmp_path, monkeypatch):
    import pytest

    import moopt.search.space as space_mod
    from moopt.errors import ConfigError

    out = write_fake_study(tmp_path / "s", synthetic_trials(24))

    def broken(*a, **k):
        raise ConfigError("refined_space.yaml: training.learning_rate: injected")

    monkeypatch.setattr(space_mod, "parse_space", broken)
    with pytest.warns(RuntimeWarning, match="refined_space.yaml not written: .*injected"):
        assert write_refined(out, load_study(out), []) is None
    assert not (out / REFINED).exists()


def test_a_value_added_past_a_categorical_end_is_written_as_the_list_is():
    """1e-5, 1e-4, 1e-3 widened to 0.009999999999999998 (trials then trained at it), the common 1-3-10 list never
    widened, and with its lowest value dropped the ratio came from the two values left (0.0033333333333333335)."""
    from moopt.report.refine import _next_value

    assert _next_value([1e-5, 1e-4, 1e-3], "high") == 0.01
    assert _next_value([1e-4, 3e-4, 1e-3], "high") == 0.003 and _next_value([1e-4, 3e-4, 1e-3], "low") == 3e-5
    assert _next_value([3e-4, 1e-3], "high", pattern=[1e-4, 3e-4, 1e-3]) == 0.003
    assert _next_value([4, 8, 16], "high") == 32 and _next_value([4, 8, 16], "low") == 2
    assert _next_value([8, 16, 24, 32], "high") == 40 and _next_value([0.0, 0.05, 0.1], "high") == 0.15
    assert _next_value([16, 32, 64], "high") == 128
    assert _next_value([1, 3, 4, 20], "high") is None  # neither kind of sequence: nothing guessed


def test_a_change_line_spells_module_lists_one_way_on_both_sides():
    """'[q_proj,v_proj, q_proj,k_proj,v_proj,o_proj, ...] -> [attention, all-linear]': commas split both the modules
    of one option and the options, and only the after side used aliases."""
    from moopt.report.refine import _describe

    spec = {"type": "categorical", "values": [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"],
                                              ["k_proj", "o_proj"]]}
    assert _describe(spec) == "[qv, attention, k_proj+o_proj]"


def test_a_study_with_nothing_to_refine_says_so_instead_of_a_silent_missing_file(tmp_path):
    """The README promises refined_space.yaml from REFINE_MIN_TRIALS COMPLETE trials on; where nothing in the space
    changes (here an ordered categorical whose worst value sits inside it) the summary says why there is none."""
    from rich.console import Console

    from moopt.report.results import print_summary

    trials = synthetic_trials(24)
    worst = _worst(trials, 8)
    for t in trials:
        t["params"]["batch_size"] = 8 if t["metrics"].get("eval_loss", 9) >= worst else 4
    out = write_fake_study(tmp_path / "mid", trials, space="training:\n  batch_size: {type: categorical, values: [2, 4, 8, 16]}\n")
    data = load_study(out)
    assert write_refined(out, data, []) is None
    row = data.table[data.table.number == data.best].iloc[0]
    buf = io.StringIO()
    print_summary(data, {"best_config": {}, "best_metrics": {n: float(row[f"values_{n}"]) for n in data.objectives.names}},
                  Console(file=buf, width=400, highlight=False), out, None, [], None)
    complete = int((data.table.state == "COMPLETE").sum())
    assert f"Refined search space: none (on these {complete} COMPLETE trials no range moves" in buf.getvalue()


def test_a_learning_rate_range_is_never_widened_to_where_lora_diverges():
    """A 6-trial study widened 0.001 .. 0.03 to 0.0021 .. 0.17, which the refined study's own start then called
    divergent (above 0.1)."""
    from moopt.config import LR_DIVERGES, TrialConfig
    from moopt.report.refine import _numeric

    after, why = _numeric("training.learning_rate", {"type": "log_uniform", "min": 1e-3, "max": 3e-2}, [0.02, 0.025, 0.03],
                          {"high"}, TrialConfig())
    assert after["max"] <= LR_DIVERGES and after["min"] < 0.02, after
