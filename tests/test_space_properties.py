"""Any valid search space runs: property-based tests over generated spaces (hypothesis).

A generated space mixes every kind of parameter the YAML allows: ranges that exclude the built-in
default (weight_decay's 0 on a log scale), log and linear ranges, int steps, categorical lists with or
without the default, plain values that fix a parameter, one parameter, none at all. For each, the
space parses, the default trial moves inside it, and the engine asks, is told and asks again, every
individual decoding to a valid trial inside the space.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moopt.config import TrialConfig
from moopt.search.engine import Engine
from moopt.search.space import parse_space

# (section, key) -> what a valid range or option list of it looks like
FLOATS = {  # positive ranges: log_uniform or uniform
    ("training", "learning_rate"): (1e-7, 1e-1),
    ("training", "weight_decay"): (1e-5, 0.5),
    ("training", "warmup_ratio"): (1e-3, 0.5),
    ("training", "max_grad_norm"): (0.1, 10.0),
    ("lora", "alpha"): (1.0, 256.0),
    ("lora", "dropout"): (1e-3, 0.5),
}
INTS = {  # int ranges (min, max bounds of the generated min/max)
    ("training", "batch_size"): (1, 64),
    ("training", "num_train_epochs"): (1, 6),
    ("training", "gradient_accumulation_steps"): (1, 16),
    ("lora", "r"): (1, 128),
    ("data", "max_seq_length"): (8, 2048),
}
CHOICES = {
    ("training", "lr_scheduler_type"): ["linear", "cosine", "constant"],
    ("data", "sampling_strategy"): ["random", "sequential", "length_grouped"],
    ("lora", "target_modules"): [["q_proj", "v_proj"], "attention", "mlp", "all-linear", ["o_proj"]],
    ("model", "gradient_checkpointing"): [False, True],
}


def categorical(draw, values: list) -> dict:
    """A categorical spec that says it is ordered, unordered, or leaves it to inference."""
    ordered = draw(st.sampled_from([None, True, False]))
    return {"type": "categorical", "values": values} | ({} if ordered is None else {"ordered": ordered})


@st.composite
def float_param(draw, lo, hi):
    a, b = sorted(draw(st.lists(st.floats(lo, hi), min_size=2, max_size=2, unique=True)))
    kind = draw(st.sampled_from(["log_uniform", "uniform", "fixed", "categorical"]))
    if kind == "fixed":
        return a
    if kind == "categorical":
        return {"type": "categorical", "values": sorted({float(f"{a:.6g}"), float(f"{b:.6g}")})}
    return {"type": kind, "min": a, "max": b}


@st.composite
def int_param(draw, lo, hi):
    a = draw(st.integers(lo, hi - 1))
    b = draw(st.integers(a + 1, hi))
    kind = draw(st.sampled_from(["int", "int_step", "log_int", "fixed", "categorical"]))
    if kind == "fixed":
        return a
    if kind == "log_int":  # integers on a log scale (bounds > 0)
        return {"type": "log_uniform", "min": max(a, 1), "max": max(b, 2)}
    if kind == "categorical":  # listed in order or not, said to be ordered or not, or left to inference
        values = draw(st.permutations(sorted(set(draw(st.lists(st.integers(lo, hi), min_size=1, max_size=5))))))
        return categorical(draw, list(values))
    spec = {"type": "int", "min": a, "max": b}
    if kind == "int_step":  # max - min a multiple of the step (else max is never tried: refused)
        spec["step"] = step = draw(st.integers(1, max(1, b - a)))
        spec["max"] = a + (b - a) // step * step
    return spec


@st.composite
def choice_param(draw, options):
    picked = draw(st.lists(st.sampled_from(range(len(options))), min_size=1, max_size=len(options), unique=True))
    values = [options[i] for i in picked]
    if len(values) == 1 and draw(st.booleans()):
        return values[0]  # a plain value fixes it
    return categorical(draw, values)


@st.composite
def spaces(draw):
    keys = draw(st.lists(st.sampled_from([*FLOATS, *INTS, *CHOICES]), unique=True, max_size=10))
    data: dict = {}
    for section, key in keys:
        if (section, key) in FLOATS:
            spec = draw(float_param(*FLOATS[section, key]))
        elif (section, key) in INTS:
            spec = draw(int_param(*INTS[section, key]))
        else:
            spec = draw(choice_param(CHOICES[section, key]))
        data.setdefault(section, {})[key] = spec
    return data


def inside(space, cfg: TrialConfig) -> None:
    flat = cfg.flat()
    for p in space.params:
        v = flat[p.name]
        if p.type in ("log_uniform", "uniform"):
            assert p.low <= v <= p.high and (not p.integer or isinstance(v, int)), (p, v)
        elif p.type == "int":
            assert p.low <= v <= p.high and (v - p.low) % p.step == 0, (p, v)
        else:
            shown = [",".join(o) if isinstance(o, tuple) else o for o in p.values]
            assert v in shown, (p, v)


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spaces())
def test_every_valid_space_parses_and_holds_its_default(data):
    space = parse_space(data, source="gen.yaml")
    cfg = space.default_in_space()
    inside(space, cfg)
    assert space.decode(space.encode(cfg)) == cfg
    assert space.n_configurations() >= 1


@settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spaces(), st.integers(0, 3))
def test_the_engine_asks_and_is_told_on_every_valid_space(data, seed):
    space = parse_space(data, source="gen.yaml")
    engine = Engine(space, n_obj=2, num_trials=8, seed=seed)
    rng = np.random.default_rng(seed)
    asked = 0
    for _ in range(3):
        X = engine.ask()
        if not X:  # a small discrete space can run out of new configurations
            break
        decoded = [space.decode(x) for x in X]
        assert len(set(decoded)) == len(decoded)  # one ask never repeats itself (the study dedups across asks)
        for i, cfg in enumerate(decoded):
            inside(space, cfg)
            engine.tell_one(i, rng.random(2), -1.0)
            asked += 1
        engine.tell()
    assert asked >= 1


@pytest.mark.parametrize("data", [
    {},  # nothing searched: every parameter keeps its default
    {"training": {"learning_rate": 1e-4, "batch_size": 4}},  # every parameter fixed
    {"lora": {"r": {"type": "categorical", "values": [8]}}},  # one option
    {"training": {"weight_decay": {"type": "log_uniform", "min": 0.001, "max": 0.1}}},  # default 0 outside
])
def test_degenerate_spaces_propose_the_single_configuration_once(data):
    space = parse_space(data, source="gen.yaml")
    engine = Engine(space, n_obj=1, num_trials=4, seed=0)
    X = engine.ask()
    assert X
    decoded = {space.decode(x) for x in X}
    if space.n_configurations() == 1:
        assert len(decoded) == 1


# -- whole studies on the tiny model -------------------------------------------------------------------
@pytest.mark.parametrize("space_yaml, trials", [
    ("training:\n  learning_rate: 1e-3\n  num_train_epochs: 1\ndata:\n  max_seq_length: 32\n", 1),  # every parameter fixed
    ("lora:\n  r: {type: int, min: 2, max: 10, step: 4}\ntraining:\n  batch_size: {type: categorical, values: [3, 5]}\n"
     "  weight_decay: {type: log_uniform, min: 1e-4, max: 1e-2}\ndata:\n  max_seq_length: 32\n", 3),  # steps, no default in lists
    ("training:\n  warmup_ratio: {type: uniform, min: 0.2, max: 0.4}\ndata:\n  max_seq_length: 32\n", 2),  # one parameter
])
def test_whole_studies_run_on_degenerate_spaces(space_yaml, trials, tiny_model, tiny_data, tmp_path):
    import json

    from click.testing import CliRunner

    from moopt.cli import main

    space = tmp_path / "space.yaml"
    space.write_text(space_yaml)
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
                                  "--validation_file", str(tiny_data["val"]), "--output_dir", str(out), "--search_space",
                                  str(space), "--num_trials", str(trials), "--no-baseline"])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "Best value: " in r.output
    finished = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines() if '"trial_end"' in x]
    assert len(finished) == trials and all(e["state"] == "COMPLETE" for e in finished)
