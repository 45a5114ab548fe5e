import math
from pathlib import Path

import numpy as np
import pytest

from moopt.config import TrialConfig
from moopt.errors import ConfigError
from moopt.search.space import load_space, parse_space

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


def test_guide_space_parses_with_string_exponents(tmp_path):
    # PyYAML reads 1e-6 (no dot) as a string: it must still be a number.
    sp = load_space("config/hpo_search_space.yaml")
    lr = next(p for p in sp.params if p.name == "training.learning_rate")
    assert (lr.low, lr.high) == (1e-6, 1e-4)
    tm = next(p for p in load_space("config/hpo_comprehensive_search_space.yaml").params if p.name == "lora.target_modules")
    assert tm.values[0] == ("q_proj", "v_proj")


def test_plain_value_fixes_a_parameter_and_missing_ones_take_defaults(tmp_path):
    sp = load_space(write(tmp_path, "training:\n  num_train_epochs: 2\n  learning_rate: {type: log_uniform, min: 1e-5, max: 1e-3}\n"))
    assert sp.names == ["training.learning_rate"]
    assert sp.fixed.training.num_train_epochs == 2
    assert sp.fixed.lora.r == TrialConfig().lora.r


def test_default_trial_is_moved_into_the_space(tmp_path):
    sp = load_space(write(tmp_path, "training:\n  learning_rate: {type: log_uniform, min: 1e-3, max: 1e-2}\n"
                                    "lora:\n  r: {type: categorical, values: [4, 8, 64]}\n"))
    d = sp.default_in_space()
    assert d.training.learning_rate == pytest.approx(1e-3)  # 2e-4 clipped to the lower bound
    assert d.lora.r == 8  # nearest option to 16 on a log scale... 8 and 64: |log 16/8| < |log 64/16|


def test_decode_encode_roundtrip():
    sp = load_space("config/hpo_search_space.yaml")
    cfg = sp.default_in_space()
    assert sp.decode(sp.encode(cfg)) == cfg


@pytest.mark.parametrize("text, fragment", [
    ("training:\n  learning_rate: {type: log_uniform, min: 1e-3, max: 1e-5}\n", "training.learning_rate: `min < max` must hold"),
    ("training:\n  learning_rate: {type: log_uniform, min: 0, max: 1e-3}\n", "log_uniform bounds must be > 0"),
    ("training:\n  learning_rate: {type: uniformish, min: 0, max: 1}\n", "`type` must be one of"),
    ("training:\n  learning_rate: {type: uniform, min: abc, max: 1}\n", "`min` must be a number, got 'abc'"),
    ("lora:\n  r: {type: categorical, values: []}\n", "lora.r: categorical needs a non-empty `values`"),
    ("lora:\n  r: {type: int, min: 0, max: 8}\n", "lora.r: value 0 is out of range"),
    ("lora:\n  r: {type: categorical, values: [-4, 8]}\n", "lora.r: value -4 is out of range"),
    ("lora:\n  dropout: {type: uniform, min: 0.0, max: 1.5}\n", "lora.dropout: value 1.5 is out of range"),
    ("lora:\n  rank: {type: int, min: 1, max: 8}\n", "lora.rank: unknown parameter"),
    ("optimizer:\n  lr: 1\n", "optimizer: unknown section"),
    ("training:\n  batch_size: {type: uniform, min: 1, max: 8}\n", "integer parameter takes type int, log_uniform or categorical"),
    ("lora:\n  r: {type: log_uniform, min: 4, max: 64.5}\n", "log_uniform bounds of an integer parameter must be integers"),
    ("training:\n  lr_scheduler_type: {type: categorical, values: [cosine, sawtooth]}\n", "value 'sawtooth' is out of range"),
    ("lora:\n  target_modules: {type: categorical, values: [[q_proj, x_proj]]}\n", "unknown module(s) ['x_proj']"),
    ("training: [1, 2]\n", "training: expected a mapping"),
    ("lora:\n  r: {type: categorical, values: [8, 16], ordered: maybe}\n", "lora.r: `ordered` must be true or false"),
    ("lora:\n  dropout: {type: uniform, min: 0, max: 0.1, ordered: true}\n", "`ordered` only applies to type categorical"),
    ("training:\n  learning_rate: {type: log_uniform, min: 1e-5\n", "malformed YAML"),
    ("training:\n  adam_beta1: 1\n", "training.adam_beta1: must be in [0, 1), got 1.0"),  # AdamW raised it in the trial
    ("training:\n  adam_beta2: {type: uniform, min: 0.9, max: 1.0}\n", "training.adam_beta2: value 1.0 is out of range"),
    ("training:\n  adam_epsilon: -1e-8\n", "training.adam_epsilon: must be >= 0"),
    ("lora:\n  r: {type: int, min: 8, max: 8}\n", "got min=8, max=8 (to fix it at 8, give the plain value: `r: 8`)"),
    # shorthands a user reaches for: a plain list where values to search were meant, YAML 1.1's no as false
    ("training:\n  batch_size: [4, 8, 16]\n",
     "training.batch_size: a list fixes no single value; to search these, write {type: categorical, values: [4, 8, 16]}"),
    ("training:\n  lr_scheduler_type: [linear, cosine]\n", "write {type: categorical, values: [linear, cosine]}"),
    ("model:\n  quantization: no\n", "model.quantization: got false; YAML reads an unquoted no/yes/off/on as false"),
    # an empty file (a failed copy, the wrong path) searched nothing, not even the built-in space: a study ran on it
    ("", "empty (no training, lora or data section); leave --search_space out for the built-in space"),
    ("# only a comment\n", "empty (no training, lora or data section)"),
])
def test_bad_space_names_file_key_and_rule(tmp_path, text, fragment):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_space(p)
    assert str(p) in str(e.value)
    assert fragment in str(e.value)


def test_all_problems_are_reported_at_once(tmp_path):
    p = write(tmp_path, "training:\n  learning_rate: {type: log_uniform, min: 1e-3, max: 1e-5}\n"
                        "lora:\n  r: {type: categorical, values: []}\n  bogus: 3\n")
    with pytest.raises(ConfigError) as e:
        load_space(p)
    msg = str(e.value)
    assert "training.learning_rate" in msg and "lora.r" in msg and "lora.bogus" in msg


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_space(tmp_path / "nope.yaml")


def test_space_size_counts_discrete_configurations():
    sp = parse_space({"lora": {"r": {"type": "categorical", "values": [4, 8]}, "alpha": {"type": "int", "min": 8, "max": 32, "step": 8}}})
    assert sp.n_configurations() == 2 * 4
    assert math.isinf(parse_space({"lora": {"dropout": {"type": "uniform", "min": 0, "max": 0.1}}}).n_configurations())


def test_categoricals_are_ordered_when_their_numbers_are_listed_in_order_or_the_file_says_so(tmp_path):
    space = load_space(write(tmp_path, (
        "training:\n"
        "  batch_size: {type: categorical, values: [4, 8, 16]}\n"
        "  gradient_accumulation_steps: {type: categorical, values: [8, 2, 1]}\n"
        "  lr_scheduler_type: {type: categorical, values: [linear, cosine, constant]}\n"
        "lora:\n"
        "  r: {type: categorical, values: [16, 4, 8]}\n"
        "  alpha: {type: categorical, values: [8, 16, 32], ordered: false}\n"
        "  target_modules: {type: categorical, values: [qv, attention], ordered: true}\n"
    )))
    got = {p.name: p.is_ordered for p in space.params}
    assert got == {"training.batch_size": True, "training.gradient_accumulation_steps": True,
                   "training.lr_scheduler_type": False, "lora.r": False, "lora.alpha": False,
                   "lora.target_modules": True}


def test_log_uniform_on_an_integer_parameter_draws_integers_on_a_log_scale(tmp_path):
    """lora.r: {type: log_uniform, min: 4, max: 64}: integers, as likely in [4, 16] as in [16, 64]."""
    import random

    sp = load_space(write(tmp_path, "lora:\n  r: {type: log_uniform, min: 4, max: 64}\n"
                                    "training:\n  batch_size: {type: log_uniform, min: 1, max: 32}\n"))
    r = next(p for p in sp.params if p.name == "lora.r")
    assert r.integer and r.describe() == "log_uniform (integers) [4, 64]"
    rng = random.Random(0)
    xs = [r.decode(rng.uniform(math.log(4), math.log(64))) for _ in range(4000)]
    assert all(isinstance(x, int) and 4 <= x <= 64 for x in xs) and {4, 64} <= set(xs)
    assert 0.45 < sum(x <= 16 for x in xs) / len(xs) < 0.56  # the median at 16 (uniform would put it at 34)
    assert [r.decode(r.encode(v)) for v in (4, 5, 16, 63, 64, 100, 1)] == [4, 5, 16, 63, 64, 64, 4]
    cfg = sp.decode(sp.encode(sp.default_in_space()))
    assert cfg.lora.r == 16 and cfg.training.batch_size == 8  # the defaults, within both ranges
    assert sp.n_configurations() == 61 * 32
    assert TrialConfig.from_flat({"lora.r": r.decode(math.log(9.6))}).lora.r == 10


def test_a_log_scale_integer_range_draws_its_ends_as_often_as_their_neighbours(tmp_path):
    """Drawn uniformly over the engine's bounds, each integer's share is its whole rounding interval on the log
    scale: r 64 about as often as 63 and r 4 a little more than 5 (log 4.5/3.5 against log 5.5/4.5). With the
    bounds at log 4 and log 64 the ends got half their interval: 64 drawn ~0.5x as often as 63, 4 ~0.59x as 5."""
    import collections

    sp = load_space(write(tmp_path, "lora:\n  r: {type: log_uniform, min: 4, max: 64}\n"))
    r = sp.params[0]
    lo, hi = r.pymoo_var().bounds
    rng = np.random.default_rng(0)
    n = collections.Counter(r.decode(x) for x in rng.uniform(lo, hi, 200_000))
    assert set(n) == set(range(4, 65))
    assert 0.9 < n[64] / n[63] < 1.1
    assert 1.1 < n[4] / n[5] < 1.4
    assert r.decode(lo) == 4 and r.decode(hi) == 64 and r.decode(r.encode(64)) == 64


def test_the_space_a_study_writes_back_reads_as_the_same_space(tmp_path):
    from moopt.study.outdir import space_to_yaml

    space = load_space(write(tmp_path, (
        "training:\n"
        "  learning_rate: {type: log_uniform, min: 1e-5, max: 1e-3}\n"
        "  num_train_epochs: {type: int, min: 1, max: 5, step: 2}\n"
        "  batch_size: {type: log_uniform, min: 2, max: 32}\n"
        "  lr_scheduler_type: {type: categorical, values: [linear, cosine, constant], ordered: true}\n"
        "lora:\n"
        "  alpha: {type: categorical, values: [8, 16, 32], ordered: false}\n"
        "  target_modules: {type: categorical, values: [[q_proj, v_proj], attention]}\n"
    )))
    again = parse_space(space_to_yaml(space))
    assert again.params == space.params
    assert [p.is_ordered for p in again.params] == [True, True, True, True, False, False]


def test_a_studys_search_space_yaml_keeps_the_fixed_values_and_reads_back_as_the_same_space():
    """The demo's space fixes max_seq_length 64; the study's search_space.yaml wrote only the searched parameters, so
    the file given again as --search_space trained at the default 512. Every guide space reads back the same, in the
    same order (the study's fingerprint compares it)."""
    import glob

    import yaml

    from moopt.study.outdir import space_to_yaml

    for f in sorted(glob.glob(str(ROOT / "config" / "*.yaml"))):
        space = load_space(f)
        again = parse_space(yaml.safe_load(yaml.safe_dump(space_to_yaml(space), sort_keys=False)), source="again")
        assert again.fixed.to_dict() == space.fixed.to_dict() and again.params == space.params, f
    demo = space_to_yaml(load_space(ROOT / "config" / "demo_search_space.yaml"))
    assert demo["data"] == {"max_seq_length": 64}


def test_a_folder_given_as_the_space_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r": a folder, not a YAML file$"):
        load_space(tmp_path)


def test_the_studys_copy_of_the_space_writes_whole_alphas_and_epochs_as_given():
    """search_space.yaml ("the space as searched") read alpha values [16.0, 32.0] and num_train_epochs 2.0 where the
    file said 16, 32 and 2; trials_summary.csv's params_alpha read 32.0 beside the console's and config.yaml's 32."""
    from types import SimpleNamespace

    from moopt.study.outdir import space_to_yaml
    from moopt.study.scheduler import Study

    sp = parse_space({"training": {"num_train_epochs": 2}, "lora": {"alpha": {"type": "categorical", "values": [16, 32]}}})
    y = space_to_yaml(sp)
    assert y["lora"]["alpha"]["values"] == [16, 32] and all(type(v) is int for v in y["lora"]["alpha"]["values"])
    assert y["training"]["num_train_epochs"] == 2 and type(y["training"]["num_train_epochs"]) is int
    assert parse_space(y).n_configurations() == sp.n_configurations()
    params = Study.params_of(SimpleNamespace(cfg=SimpleNamespace(space=sp)), sp.encode(sp.fixed) | {"lora.alpha": 1})
    assert params == {"alpha": 32} and type(params["alpha"]) is int


def test_a_space_whose_largest_batch_leaves_a_trial_few_steps_on_the_data_is_noted():
    """The guide's comprehensive space on the bundled 300 examples drew batch 32 x accumulation 4: 3 optimizer steps,
    a trial worse than the base model, with no word of why."""
    from types import SimpleNamespace

    from moopt.study.scheduler import Study

    comprehensive = load_space(Path(__file__).resolve().parent.parent / "config" / "hpo_comprehensive_search_space.yaml")
    study = SimpleNamespace(cfg=SimpleNamespace(space=comprehensive))
    note = Study.few_steps_note(study, 300)
    assert note and "largest effective batch (256: batch_size x gradient_accumulation_steps)" in note
    assert "a trial on the 300 training examples takes 2 optimizer steps" in note
    assert Study.few_steps_note(study, 100_000) is None
    small = SimpleNamespace(cfg=SimpleNamespace(space=parse_space({"training": {"batch_size": 8, "num_train_epochs": 1}})))
    assert Study.few_steps_note(small, 300) is None  # 38 steps
    assert note.endswith("on data this small, smaller batches or more epochs train more")
    # 20k examples and 0.001 epoch: the epochs, not the data, are small (it said "on data this small")
    tiny = SimpleNamespace(cfg=SimpleNamespace(space=parse_space({"training": {"batch_size": 4, "num_train_epochs": 0.001}})))
    assert Study.few_steps_note(tiny, 20_000).endswith("takes 5 optimizer steps: too few to move far from the base "
                                                       "model; more epochs train more")
