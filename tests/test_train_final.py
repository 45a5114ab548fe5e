"""`moopt train` around the run: which study trial it repeats and when its figures are not comparable, the output
folder held against a second run, Ctrl-C and a full disk, its progress lines, and what it says at the end."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from moopt.cli import main
from moopt.cli.final import ATTEMPT, QUIET_S, ConsoleReporter

SPACE = ("training:\n  learning_rate: {type: log_uniform, min: 1e-3, max: 3e-2}\n  num_train_epochs: 1\n"
         "  batch_size: 8\nlora:\n  r: 4\ndata:\n  max_seq_length: {type: categorical, values: [16, 32]}\n")


@pytest.fixture(scope="module")
def study(tiny_model, tiny_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    (d / "space.yaml").write_text(SPACE)
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
                                  "--validation_file", str(tiny_data["val"]), "--search_space", str(d / "space.yaml"),
                                  "--num_trials", "1", "--no-baseline", "--output_dir", str(d / "s")])
    assert r.exit_code == 0, r.output
    return d / "s"


def train(*args):
    return CliRunner().invoke(main, ["train", *map(str, args)])


def test_train_repeats_the_chosen_trial_and_says_when_a_run_is_not_that_trial(study, tiny_model, tmp_path):
    best = study / "best_config.yaml"
    r = train("--config", best, "--output_dir", tmp_path / "same")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "same" / "final_metrics.json").read_text())
    assert m["differs_from_study_trial"] == [] and m["study_trial"] == 0 and m["test_file"] is None  # (none given)
    assert "study val" in r.output and "differs from trial" not in r.output
    assert m["validation"]["eval_loss"] == pytest.approx(m["study_validation"]["eval_loss"], abs=1e-4)
    # what it says at the end: the files, the base model and how to load the adapter
    assert f"Metrics: {tmp_path / 'same' / 'final_metrics.json'}; base model: {tiny_model}" in r.output
    assert "AutoPeftModelForCausalLM.from_pretrained(" in r.output
    # another seed: the trial's figures are not shown as if this run should repeat them
    r = train("--config", best, "--output_dir", tmp_path / "seed", "--seed", 7)
    assert r.exit_code == 0, r.output
    assert "differs from trial 0 of the study in seed 7 vs 42" in " ".join(r.output.split())
    assert "study val" not in r.output
    assert json.loads((tmp_path / "seed" / "final_metrics.json").read_text())["differs_from_study_trial"] == ["seed 7 vs 42"]
    # --kernels torch on a CPU is the path the study's auto took: the same trial, its figures shown
    r = train("--config", best, "--output_dir", tmp_path / "k", "--kernels", "torch")
    assert r.exit_code == 0 and "differs from trial" not in r.output and "study val" in r.output, r.output
    # an edited configuration
    edited = tmp_path / "edited" / "best_config.yaml"
    edited.parent.mkdir()
    edited.write_text(best.read_text().replace("num_train_epochs: 1", "num_train_epochs: 2"))
    shutil.copy(study / "journal.jsonl", edited.parent / "journal.jsonl")  # a copy of the study, the config edited
    r = train("--config", edited, "--output_dir", tmp_path / "ed")
    assert r.exit_code == 0, r.output
    assert "training.num_train_epochs 2 vs 1" in r.output and "study val" not in r.output


def test_the_studys_model_named_another_way_is_the_same_and_a_moved_one_is_said(study, tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_model.parent)
    r = train("--config", study / "best_config.yaml", "--output_dir", tmp_path / "rel", "--base_model", f"./{tiny_model.name}/")
    assert r.exit_code == 0, r.output
    assert "searched these hyperparameters on" not in r.output and "study val" in r.output
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    r = train("--config", study / "best_config.yaml", "--output_dir", tmp_path / "cp", "--base_model", copy)
    assert r.exit_code == 0, r.output
    assert f"Base model: {copy}, the same weights and config.json as the study's {tiny_model}" in r.output
    assert "searched these hyperparameters on" not in r.output and "study val" in r.output
    from moopt.cli import study_defaults
    from moopt.errors import ConfigError

    with pytest.raises(ConfigError, match=f"--base_model: the study's {tmp_path}/gone is not there any more; pass --base_model"):
        study_defaults({"base_model": None, "train_file": "t", "validation_file": "v"}, {"base_model": str(tmp_path / "gone")})


def test_a_copy_of_best_config_elsewhere_names_the_length_validation_was_cut_at(study):
    """The study cut validation at the space's longest max_seq_length (32); a trial at 16 trained from a copy elsewhere
    scored other figures unless told."""
    from moopt.report.results import best_config_header
    from moopt.report.table import load_study

    data = load_study(study)
    assert data.header["eval_max_seq_length"] == 32
    assert "--eval_max_seq_length 32" in best_config_header(data, {"data": {"max_seq_length": 16}})
    assert "--eval_max_seq_length" not in best_config_header(data, {"data": {"max_seq_length": 32}})
    assert "--revision abc" in best_config_header(type(data)(**{**data.__dict__, "header": {**data.header,
                                                                                             "model_revision": "abc"}}))


def test_a_copy_of_best_config_elsewhere_trains_on_what_its_first_lines_name(study, tiny_model, tiny_data, tmp_path):
    """A copy kept outside the study's folder said "--train_file: required (--config is not a study's best_config.yaml
    or trial config)", although its first lines named the study's model, data and seed (the first-hour review)."""
    copy = tmp_path / "kept" / "bc.yaml"
    copy.parent.mkdir()
    shutil.copy(study / "best_config.yaml", copy)
    r = train("--config", copy, "--output_dir", tmp_path / "final")
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert f"Base model: {tiny_model} (the study's, as bc.yaml's first lines name it)" in said
    assert f"Training data: {tiny_data['train']} (the study's, as bc.yaml's first lines name it)" in said
    m = json.loads((tmp_path / "final" / "final_metrics.json").read_text())
    assert (m["base_model"], m["train_file"], m["validation_file"], m["seed"]) == \
        (str(tiny_model), str(tiny_data["train"]), str(tiny_data["val"]), 42)
    assert "gives no" not in said  # (a study's file gives every setting)
    # a line lost in an edit: trained at moopt's default without a word (the bad input review)
    lost = tmp_path / "kept" / "lost.yaml"
    lost.write_text("".join(x for x in copy.read_text().splitlines(keepends=True) if "learning_rate" not in x))
    r = train("--config", lost, "--output_dir", tmp_path / "f0")
    assert r.exit_code == 0 and "Note: lost.yaml gives no training.learning_rate: moopt's default (0.0002) is taken, " \
        "which may not be what the study's trial trained with" in " ".join(r.output.split()), r.output
    inside = study / "lost_lr.yaml"  # in the study's folder: the differences from its trial say it, with its value
    shutil.copy(lost, inside)
    try:
        r = train("--config", inside, "--output_dir", tmp_path / "f0b")
    finally:
        inside.unlink()
    assert r.exit_code == 0 and "gives no" not in r.output, r.output
    # what it names is gone: one line naming where the name came from
    moved = tmp_path / "kept" / "moved.yaml"
    moved.write_text(copy.read_text().replace(str(tiny_data["train"]), str(tmp_path / "gone.jsonl")))
    r = train("--config", moved, "--output_dir", tmp_path / "f2")
    assert r.exit_code == 2 and r.output.strip() == (
        f"Error: --train_file: {tmp_path / 'gone.jsonl'} (the study's, as moved.yaml's first lines name it) is not "
        "there; pass --train_file"), r.output
    # a config with no such lines is as before: the data must be given
    bare = tmp_path / "kept" / "bare.yaml"
    bare.write_text("\n".join(x for x in copy.read_text().splitlines() if not x.startswith("#")) + "\n")
    r = train("--config", bare, "--output_dir", tmp_path / "f3")
    assert r.exit_code == 2 and r.output.strip() == ("Error: --train_file: required (--config is not in a study's "
                                                     "folder, and its first lines do not name the study's data)")
    # a copy put into another study's folder (the re-check: it trained on that study's data and seed, without a word)
    other = tmp_path / "other"
    other.mkdir()
    (other / "journal.jsonl").write_text(json.dumps({"type": "study", "base_model": "another/model", "fingerprint": {
        "train_file": str(tmp_path / "theirs.jsonl"), "validation_file": str(tmp_path / "theirs_val.jsonl"), "seed": 3}})
        + "\n")
    shutil.copy(copy, other / "from_s1.yaml")
    r = train("--config", other / "from_s1.yaml", "--output_dir", tmp_path / "f7")
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert f"Note: from_s1.yaml's first lines name another study than the one in its folder ({other})" in said
    assert f"Training data: {tiny_data['train']} (the study's, as from_s1.yaml's first lines name it)" in said
    assert json.loads((tmp_path / "f7" / "final_metrics.json").read_text())["seed"] == 42
    # validation cut at the length the study evaluated every trial at, longer than this configuration's: said
    import re

    short = tmp_path / "kept" / "short.yaml"
    lines = copy.read_text().splitlines()
    lines = [x + " --eval_max_seq_length 32" if x.startswith("# elsewhere repeats") and "--eval_max" not in x else x
             for x in lines]
    short.write_text(re.sub(r"max_seq_length: \d+", "max_seq_length: 16", "\n".join(lines) + "\n"))
    r = train("--config", short, "--output_dir", tmp_path / "f6")
    assert r.exit_code == 0, r.output
    assert ("Validation examples cut at 32 tokens, as the study evaluated every trial (the study's, as short.yaml's "
            "first lines name it; this configuration trains at 16)") in " ".join(r.output.split()), r.output
    # the line below other comments; a flag without a value among them; a line a shell could not split
    text = copy.read_text()
    extra = tmp_path / "kept" / "extra.yaml"
    extra.write_text("# kept for the paper\n# (second run)\n\n" + text.replace("--train_file", "--dry --train_file"))
    r = train("--config", extra, "--output_dir", tmp_path / "f4")
    assert r.exit_code == 0 and "Training data:" in r.output and "(the study's, as extra.yaml's" in r.output, r.output
    odd = tmp_path / "kept" / "odd.yaml"
    odd.write_text(text.replace("--seed 42", "--seed '42"))
    r = train("--config", odd, "--output_dir", tmp_path / "f5")
    line = next(n for n, x in enumerate(text.splitlines(), 1) if x.startswith("# elsewhere repeats"))
    assert r.exit_code == 2 and r.output.startswith(f"Error: {odd}: line {line} (the arguments that repeat the trial) "
                                                    "cannot be read (No closing quotation)"), r.output


def test_a_second_train_into_the_same_folder_is_refused_while_the_first_runs(study, tmp_path):
    out = tmp_path / "final"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `moopt train` holds it
    try:
        r = train("--config", study / "best_config.yaml", "--output_dir", out)
    finally:
        os.close(fd)
    assert r.exit_code == 2 and "another moopt train is writing into it now" in r.output
    assert r.output.startswith("Error: --output_dir")  # before the notes of a run that does not happen
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("raised, code, said", [
    (KeyboardInterrupt(), 130, "Interrupted: nothing of this run was kept"),
    (OSError(errno.ENOSPC, "No space left on device", "metrics.json"), 1,
     "Error: writing the final model failed metrics.json: No space left on device; nothing of this run was kept"),
])
def test_ctrl_c_and_a_full_disk_end_in_one_line_and_keep_an_earlier_model(study, tmp_path, monkeypatch, raised, code, said):
    import moopt.cli.final as final

    out = tmp_path / "final"
    assert train("--config", study / "best_config.yaml", "--output_dir", out).exit_code == 0
    before = (out / "adapter" / "adapter_model.safetensors").read_bytes()

    def interrupted(cfg, config_path, model_path, kw):
        (out / ATTEMPT).mkdir()
        raise raised

    monkeypatch.setattr(final, "train_final", interrupted)
    r = train("--config", study / "best_config.yaml", "--output_dir", out, "--overwrite")
    assert r.exit_code == code and said in " ".join(r.output.split()), r.output
    assert "the final model trained before" in r.output and "Traceback" not in r.output
    assert not (out / ATTEMPT).exists() and (out / "adapter" / "adapter_model.safetensors").read_bytes() == before


def test_train_notes_a_diverging_learning_rate_and_validation_records_seen_in_training(tiny_model, tiny_data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training: {learning_rate: 1e4, batch_size: 8, num_train_epochs: 1}\nlora: {r: 4}\n"
                   "data: {max_seq_length: 32}\n")
    r = train("--config", cfg, "--base_model", tiny_model, "--train_file", tiny_data["train"], "--validation_file",
              tiny_data["val"], "--output_dir", tmp_path / "o")
    assert "Note: training.learning_rate 10000: LoRA trains at about 1e-5 to 1e-2" in r.output
    mixed = tmp_path / "val.jsonl"
    held_out = "".join(f'{{"prompt": "the color of {w} is", "completion": " red"}}\n' for w in ("sky", "leaf", "banana"))
    mixed.write_text(tiny_data["train"].read_text().splitlines()[0] + "\n" + held_out)
    cfg.write_text(cfg.read_text().replace("1e4", "0.01"))
    r = train("--config", cfg, "--base_model", tiny_model, "--train_file", tiny_data["train"], "--validation_file",
              mixed, "--output_dir", tmp_path / "p")
    assert r.exit_code == 0, r.output
    assert f"Note: 1 of 4 examples of {mixed} also appear in {tiny_data['train']}" in r.output


def test_progress_lines_each_tenth_and_when_quiet_with_the_rate_after_warm_up_and_time_left():
    now = [0.0]
    lines = []

    class Console:
        def print(self, text, **kw):
            lines.append(text)

    rep = ConsoleReporter(Console(), clock=lambda: now[0])
    # step 1 is the warm-up: 10 s for 100 tokens; then 1 s for 100 tokens a step
    now[0] = 10.0
    busy = 10.0
    rep.progress(1, 1000, 2.0, tokens_per_s=100 / busy, step_s=10.0)
    for step in range(2, 6):
        now[0] += 1.0
        busy += 1.0
        rep.progress(step, 1000, 2.0, tokens_per_s=100 * step / busy, step_s=1.0)
    assert len(lines) == 1 and lines[0].startswith("  step 1/1000") and "tok/s" not in lines[0]
    now[0] += QUIET_S  # a quiet stretch: a line although no tenth was passed
    busy += QUIET_S
    rep.progress(6, 1000, 1.5, tokens_per_s=600 / busy, step_s=QUIET_S)
    assert lines[-1].startswith("  step 6/1000  train_loss 1.5000")
    busy += 1.0
    rep.progress(100, 1000, 1.0, tokens_per_s=10000 / busy, step_s=1.0)  # the tenth
    assert "step 100/1000" in lines[-1] and " tok/s" in lines[-1] and " left" in lines[-1]
    rate = float(lines[-1].split(" tok/s")[0].split()[-1])
    assert rate == pytest.approx((10000 - 100) / (busy - 10), rel=0.01)  # the first step's warm-up left out
    n = len(lines)
    rep.heartbeat(1, 50)
    assert len(lines) == n  # an evaluation says nothing until it has been quiet a while
    now[0] += QUIET_S
    rep.heartbeat(2, 50)
    assert lines[-1].startswith("    evaluated 2/50 batches")


def test_a_write_that_fails_keeps_the_earlier_model_or_says_it_is_no_longer_whole(study, tmp_path, monkeypatch):
    """--overwrite with a disk that fills at the end: final_metrics.json failed after the new adapter had replaced the
    old one, and the message said the earlier model was untouched."""
    import moopt.cli.final as final
    import moopt.yamlio as yamlio

    out = tmp_path / "final"
    assert train("--config", study / "best_config.yaml", "--output_dir", out).exit_code == 0
    before = {f.name: f.read_bytes() for f in (out / "adapter").iterdir()} | {"m": (out / "final_metrics.json").read_bytes()}
    real = yamlio.write_json

    def full(path, obj, *a, **k):
        if str(path).endswith("final_metrics.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, obj, *a, **k)

    monkeypatch.setattr(yamlio, "write_json", full)
    r = train("--config", study / "best_config.yaml", "--output_dir", out, "--overwrite", "--seed", 3)
    assert r.exit_code == 1 and "No space left on device; nothing of this run was kept; the final model trained " \
        "before" in " ".join(r.output.split()), r.output
    assert {f.name: f.read_bytes() for f in (out / "adapter").iterdir()} | {"m": (out / "final_metrics.json").read_bytes()} \
        == before  # truly untouched: every file is written before any moves in
    monkeypatch.setattr(yamlio, "write_json", real)
    moved = final._move_into

    def fails_midway(work, dest):
        next(work.iterdir()).rename(dest / "x")  # one file in, then the disk or a signal stops it
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(final, "_move_into", fails_midway)
    r = train("--config", study / "best_config.yaml", "--output_dir", out, "--overwrite", "--seed", 3)
    monkeypatch.setattr(final, "_move_into", moved)
    assert r.exit_code == 1 and "which now holds neither model whole: train again with --overwrite" in " ".join(r.output.split())
    assert not (out / "final_metrics.json").exists() and not (out / ATTEMPT).exists()
    assert train("--config", study / "best_config.yaml", "--output_dir", out).exit_code == 0  # no --overwrite needed


def test_a_trial_trained_on_fewer_cpu_threads_is_a_difference(study):
    """One of --parallel_trials 3 trains on one thread; moopt train on all: its sums run in another order, and its
    validation read 2.7766 beside the study's 2.7802 under a "study val" column that said they should match."""
    import torch

    from moopt.cli.final import differences
    from moopt.config import TrialConfig
    from moopt.journal import replay

    record = replay(study)
    kw = {"seed": 42, "kernels": "auto", "base_model": record.header["base_model"],
          "validation_file": record.header["fingerprint"]["validation_file"]}
    cfg = TrialConfig.from_dict(record.ends[0].config)
    assert record.starts[0]["threads"] >= 1
    record.starts[0]["threads"] = torch.get_num_threads()
    assert differences(cfg, kw, record, 0) == []
    record.starts[0]["threads"] = torch.get_num_threads() + 2
    assert differences(cfg, kw, record, 0) == [f"CPU threads {torch.get_num_threads()} vs {torch.get_num_threads() + 2} "
                                               "(sums in another order: the last digits differ)"]
    # more threads than torch's default (a study's one slot takes every logical CPU): moopt train takes the trial's
    assert differences(cfg, {**kw, "threads": torch.get_num_threads() + 2}, record, 0) == []
