import json
import re

import pandas as pd
import pytest
from click.testing import CliRunner

from moopt.cli import main
from moopt.cli.final import FAILED
from moopt.config import TrialConfig
from moopt.search.engine import Engine
from moopt.search.space import default_space


def test_warm_start_puts_earlier_best_configs_in_the_first_population():
    space = default_space()
    earlier = TrialConfig.from_dict({"training": {"learning_rate": 7e-4, "batch_size": 16}, "lora": {"r": 32, "alpha": 64}})
    eng = Engine(space, 2, 12, 0, warm_start=[earlier])
    first = [space.decode(x) for x in eng.ask()]
    # the earlier best first (taken over at once where the study may), then the default
    assert first[0].training.learning_rate == 7e-4 and first[0].lora.r == 32 and first[0].training.batch_size == 16
    assert first[1].training.learning_rate == 2e-4


def test_seeds_taken_over_do_not_crowd_the_first_generations_exploration_out():
    """A refined study (9 trials, a population of 4) warm-started from 4 configurations it took over: they filled
    the first generation, so it trained neither the default nor anything in the ranges refinement widened. Seeds
    taken over (free) now join on top of a whole population of new ones; seeds to be trained take at most half."""
    space = default_space()
    seeds = [TrialConfig.from_dict({"training": {"learning_rate": lr, "batch_size": 4}, "lora": {"r": 8, "alpha": 16}})
             for lr in (1e-4, 3e-4, 5e-4, 7e-4)]
    default = space.encode(space.default_in_space())
    eng = Engine(space, 2, 9, 0, warm_start=seeds, free_seeds=range(4))
    first = eng.ask()
    assert eng.pop_size == 4 and len(first) == 8 and eng.seeded == [0, 1, 2, 3]
    assert first[:4] == [space.encode(c) for c in seeds] and first[4] == default
    assert all(x not in first[:4] for x in first[5:])  # three design points: new configurations
    paid = Engine(space, 2, 9, 0, warm_start=seeds)  # trained again (other data): two of the four
    first = paid.ask()
    assert len(first) == 4 and paid.seeded == [0, 1] and first[2] == default


def test_train_final_model_reports_validation_and_test(tiny_model, tiny_data, tmp_path):
    cfg = tmp_path / "best_config.yaml"
    cfg.write_text("training: {learning_rate: 0.01, batch_size: 8, num_train_epochs: 1}\nlora: {r: 4, alpha: 8}\ndata: {max_seq_length: 32}\n")
    out = tmp_path / "final"
    args = ["train", "--config", str(cfg), "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
            "--validation_file", str(tiny_data["val"]), "--test_file", str(tiny_data["val"]), "--output_dir", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "final_metrics.json").read_text())
    assert m["test"]["test_loss"] == m["validation"]["eval_loss"]  # same file as val and test: same figure
    # what it trained from (a config outside a study's folder: the defaults, said on the console too)
    assert m["seed"] == 42 and m["base_model"] == str(tiny_model) and m["train_file"] == str(tiny_data["train"])
    assert m["test_file"] == str(tiny_data["val"])  # which test set gave test_loss
    assert "Seed: 42, the default (--config is not in a study's folder" in r.output
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    from transformers import AutoTokenizer  # the tokenizer beside the adapter, as TRL saves it

    assert AutoTokenizer.from_pretrained(out / "adapter").get_vocab() == AutoTokenizer.from_pretrained(tiny_model).get_vocab()
    assert "test" in r.output and "validation" in r.output
    assert "loading model" in r.output and "Loading weights" not in r.output  # transformers' bar: moopt's line says it
    assert f"Note: --test_file {tiny_data['val']} is the validation file: its metrics are not held-out ones" in r.output
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "--overwrite" in r.output
    # without a test set: validation metrics only (the guide's final model, for a user who keeps no test set)
    no_test = [a for a in args if a not in ("--test_file",)]
    no_test.remove(str(tiny_data["val"]))  # one of the two equal values: --validation_file keeps the other
    no_test[no_test.index(str(out))] = str(tmp_path / "final_no_test")
    r = CliRunner().invoke(main, no_test)
    assert r.exit_code == 0, r.output
    untested = json.loads((tmp_path / "final_no_test" / "final_metrics.json").read_text())
    assert untested["test"] is None and untested["validation"] == m["validation"]
    assert "validation" in r.output and " test" not in r.output
    # a failed --overwrite leaves the earlier final model whole: its files, not a mix, and keeps the attempt's beside
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = tmp_path / "other.yaml"
    other.write_text(cfg.read_text().replace("r: 4, alpha: 8", "r: 8, alpha: 16"))
    failing = [a if a != str(cfg) else str(other) for a in args] + ["--overwrite"]
    r = CliRunner().invoke(main, failing, env={"MOOPT_INJECT_FAULT": "0:exception@1"})
    assert r.exit_code == 1 and "Training failed" in r.output and "is untouched" in r.output, r.output
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and FAILED not in p.parts} == before
    assert json.loads((out / FAILED / "metrics.json").read_text())["state"] == "FAIL"
    assert "r: 8" in (out / FAILED / "config.yaml").read_text()
    r = CliRunner().invoke(main, failing)  # then one that trains replaces it, files and all
    assert r.exit_code == 0, r.output
    assert "r: 8" in (out / "config.yaml").read_text() and not (out / FAILED).exists()
    assert json.loads((out / "final_metrics.json").read_text())["adapter"] == str((out / "adapter").absolute())
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "config.yaml", "final_metrics.json", "metrics.json"]


def test_moopt_train_says_what_max_seq_length_leaves_out_and_refuses_its_training_file_as_validation(tiny_model,
                                                                                                   tiny_data, tmp_path):
    """The final run says, as a study's start does, how many examples its max_seq_length leaves out (their prompt fills
    it) or cuts inside their completion: it used to train on 13 of 20 examples without a word. The training file given
    as --validation_file is refused, as moopt optimize refuses it: one line, exit 2, nothing written."""
    train = tmp_path / "train.jsonl"
    long_prompt = " ".join(["the color of"] * 10)  # 30 tokens and BOS: no completion token within 24
    rows = [{"prompt": long_prompt, "completion": " red"}] * 3 + [{"prompt": "what is the color of sky ?", "completion": " blue"}] * 5
    rows += [{"prompt": " ".join(["the color of"] * 7), "completion": " red green blue red"}] * 2  # 22 + 4 + EOS: cut
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training: {learning_rate: 0.01, batch_size: 4, num_train_epochs: 1}\nlora: {r: 4}\ndata: {max_seq_length: 24}\n")
    base = ["train", "--config", str(cfg), "--base_model", str(tiny_model), "--train_file", str(train)]
    r = CliRunner().invoke(main, [*base, "--validation_file", str(tiny_data["val"]), "--output_dir", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert (f"Note: 3 of 10 examples of {train} keep no completion token at max_seq_length 24: the prompt fills it and "
            "sequences are cut on the right; training leaves them out") in said, r.output
    assert f"Note: 2 of 10 examples of {train} are cut inside their completion at max_seq_length 24" in said, r.output
    assert json.loads((tmp_path / "f" / "metrics.json").read_text())["unlabelled_train"] == 3
    r = CliRunner().invoke(main, [*base, "--validation_file", str(train), "--output_dir", str(tmp_path / "g")])
    assert r.exit_code == 2 and "the same file as --train_file" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()


def test_warm_started_study_runs_the_earlier_best_first(tiny_model, tiny_data, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("training:\n  learning_rate: {type: log_uniform, min: 1e-3, max: 3e-2}\n  num_train_epochs: 1\n"
                     "lora:\n  r: {type: categorical, values: [4, 8]}\ndata:\n  max_seq_length: 32\n")
    base = ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]), "--validation_file",
            str(tiny_data["val"]), "--search_space", str(space), "--num_trials", "3", "--no-baseline"]
    r = CliRunner().invoke(main, [*base, "--output_dir", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    best = pd.read_csv(tmp_path / "a" / "trials_summary.csv").sort_values("score").iloc[-1]
    r = CliRunner().invoke(main, [*base, "--output_dir", str(tmp_path / "b"), "--warm_start", str(tmp_path / "a"), "--seed", "5"])
    assert r.exit_code == 0, r.output
    second = pd.read_csv(tmp_path / "b" / "trials_summary.csv")
    assert any(abs(second.params_learning_rate - best.params_learning_rate) < 1e-9)
    assert "lie outside this search space" not in r.output
    # a refined space that leaves the earlier learning rates out: said, not "taken over"
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(space.read_text().replace("min: 1e-3, max: 3e-2", "min: 1e-4, max: 5e-4"))
    r = CliRunner().invoke(main, [*base[:-5], "--search_space", str(narrow), "--num_trials", "1", "--no-baseline",
                                  "--output_dir", str(tmp_path / "d"), "--warm_start", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert re.search(r"(\d+) of the \1 configurations it seeds lie outside this search space: each is moved to the "
                     r"nearest configuration in it, which is trained", " ".join(r.output.split())), r.output
    r = CliRunner().invoke(main, [*base, "--output_dir", str(tmp_path / "c"), "--warm_start", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no study found" in r.output
    r = CliRunner().invoke(main, [*base, "--output_dir", str(tmp_path / "a"), "--warm_start", str(tmp_path / "a"), "--overwrite"])
    assert r.exit_code == 2 and "is the study --overwrite would replace" in r.output
    assert (tmp_path / "a" / "journal.jsonl").is_file() and (tmp_path / "a" / "trials_summary.csv").is_file()  # untouched
    # a study whose trial_results/ was removed still seeds one: the journal holds each trial's configuration (it was
    # "trial_results/trial_2/config.yaml: file not found", exit 2, where report and --resume worked)
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "a_bare")
    shutil.rmtree(tmp_path / "a_bare" / "trial_results")
    r = CliRunner().invoke(main, [*base[:-3], "--num_trials", "1", "--no-baseline", "--output_dir", str(tmp_path / "e"),
                                  "--warm_start", str(tmp_path / "a_bare"), "--seed", "5"])
    assert r.exit_code == 0, r.output
    assert any(abs(pd.read_csv(tmp_path / "e" / "trials_summary.csv").params_learning_rate - best.params_learning_rate) < 1e-9)


def test_a_warm_started_study_on_the_same_model_and_data_takes_over_the_earlier_results(tiny_model, tiny_data, tmp_path):
    """The coarse -> refined step: a configuration the earlier study already trained on the same base model, data,
    seed and validation length is taken over with its result (its folder and adapter copied), not trained again, and
    does not count toward --num_trials; so is the base model's evaluation. On other data each is trained again."""
    space = tmp_path / "space.yaml"
    space.write_text("training:\n  learning_rate: {type: log_uniform, min: 1e-3, max: 3e-2}\n  num_train_epochs: 1\n"
                     "lora:\n  r: {type: categorical, values: [4, 8]}\ndata:\n  max_seq_length: 32\n")
    base = ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]), "--search_space",
            str(space), "--num_trials", "3"]
    a, b = tmp_path / "a", tmp_path / "b"
    r = CliRunner().invoke(main, [*base, "--validation_file", str(tiny_data["val"]), "--output_dir", str(a)])
    assert r.exit_code == 0, r.output
    first = pd.read_csv(a / "trials_summary.csv")
    r = CliRunner().invoke(main, [*base, "--validation_file", str(tiny_data["val"]), "--output_dir", str(b),
                                  "--warm_start", str(a), "--num_trials", "2"])
    assert r.exit_code == 0, r.output
    assert "Base model (no fine-tuning; evaluated by" in r.output and "Evaluating the base model" not in r.output
    second = pd.read_csv(b / "trials_summary.csv")
    taken = second[second.taken_from.notna()]
    assert len(taken) >= 1 and (second.taken_from.isna()).sum() == 2  # --num_trials: the trials trained
    assert sorted(taken.number) == list(range(len(taken)))  # the earlier best come first: taken over at once
    for _, row in taken.iterrows():
        old = first[first.number == int(row.taken_from.rsplit(" ", 1)[1])].iloc[0]
        assert (row.values_eval_loss, row.params_learning_rate) == (old.values_eval_loss, old.params_learning_rate)
        assert (b / "trial_results" / f"trial_{row.number}" / "adapter" / "adapter_model.safetensors").is_file()
        assert (b / "trial_results" / f"trial_{row.number}" / "log.txt").read_text().startswith(
            f"[moopt] trial {row.number}: taken over from {a} trial {int(old.number)}")
        assert f"Trial {row.number} COMPLETE (taken over from {a} trial {int(old.number)}: the same configuration" in r.output
        m = json.loads((b / "trial_results" / f"trial_{row.number}" / "metrics.json").read_text())
        assert (m["number"], m["taken_from"], m["warm"]) == (row.number, row.taken_from, False) and m["curve"]
    assert f"of them taken over from {a} with their results, not trained again" in r.output
    assert "taken over from</th>" in (b / "report.html").read_text()
    # --resume counts the trials trained, and takes over nothing twice; it says when torch changed since (here faked)
    lines = (b / "journal.jsonl").read_text().splitlines()
    head = json.loads(lines[0])
    head["training_code"]["torch"] = "1.0"
    (b / "journal.jsonl").write_text("\n".join([json.dumps(head), *lines[1:]]) + "\n")
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(b), "--resume", "--num_trials", "3"])
    assert r.exit_code == 0, r.output
    assert "Note: since this study began, not the same torch version (1.0 vs " in r.output
    assert f"2 of 3 trials finished and kept (and {len(taken)} taken over from --warm_start)" in r.output
    assert f"Warm start from {a} on a resumed study: its configurations do not seed this study" in r.output
    third = pd.read_csv(b / "trials_summary.csv")
    assert third.taken_from.isna().sum() == 3 and third.taken_from.notna().sum() == len(taken)
    # another validation set (one example changed): nothing taken over, said once at the start
    val = tmp_path / "val.jsonl"
    lines = tiny_data["val"].read_text().splitlines()
    val.write_text("\n".join([lines[1], *lines[1:]]) + "\n")
    r = CliRunner().invoke(main, [*base, "--validation_file", str(val), "--output_dir", str(tmp_path / "c"),
                                  "--warm_start", str(a), "--num_trials", "2", "--no-baseline"])
    assert r.exit_code == 0, r.output
    assert "each is trained again: not the same validation data"  in r.output
    assert pd.read_csv(tmp_path / "c" / "trials_summary.csv").taken_from.isna().all()
    # a trial that ran on another kind of device (or in another dtype) is not taken over
    from types import SimpleNamespace

    from moopt.journal import replay
    from moopt.search.objectives import parse_objectives
    from moopt.study.outdir import data_digest, reusable_trials

    h = replay(a).header
    like = SimpleNamespace(warm_start=str(a), base_model=h["base_model"], model_revision=h.get("model_revision"),
                           train_file=str(tiny_data["train"]), validation_file=str(tiny_data["val"]), seed=42,
                           pruning_factor=None, memory_constraint_gb=None,
                           objectives=parse_objectives("multi:eval_loss,eval_accuracy", None))
    digests = {k: data_digest(getattr(like, k)) for k in ("train_file", "validation_file")}
    found, why = reusable_trials(like, h["eval_max_seq_length"], digests, "cpu")
    assert len(found) == 3, why  # (why: "moopt's training code changed" where a checkout is edited while this runs)
    assert reusable_trials(like, h["eval_max_seq_length"], digests, "cuda") == ({}, "")
    # nor one trained by other training code, other library versions or another LoRA kernel path
    from moopt.journal import JOURNAL

    journal = a / JOURNAL
    text = journal.read_text()
    head = json.loads(text.splitlines()[0])
    for change, said in ((lambda h: h["training_code"].update(code="0" * 16), "moopt training code"),
                         (lambda h: h["training_code"].update(torch="1.0"), "torch version (1.0 vs "),
                         (lambda h: h.pop("training_code"), "moopt training code (that study predates its record)")):
        change(head)
        journal.write_text("\n".join([json.dumps(head), *text.splitlines()[1:]]) + "\n")
        assert said in reusable_trials(like, h["eval_max_seq_length"], digests, "cpu")[1]
        head = json.loads(text.splitlines()[0])
    journal.write_text(text)
    like.kernels = "triton"
    assert reusable_trials(like, h["eval_max_seq_length"], digests, "cpu")[1] == "LoRA kernels (torch vs triton)"
    like.kernels = "auto"
    # the earlier study deleted: the refined one still resumes, without it
    import shutil

    shutil.rmtree(a)
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(b), "--resume", "--num_trials", "4"])
    assert r.exit_code == 0, r.output
    assert f"Note: the --warm_start study {a} is gone; this study goes on without it" in r.output
    assert pd.read_csv(b / "trials_summary.csv").taken_from.isna().sum() == 4


def test_moopt_train_takes_the_studys_base_model_and_data_unless_given(tmp_path):
    """--base_model, --train_file, --validation_file and --seed default to the study's (its journal header) when
    --config is a study's; a base model other than the study's is said; a file neither given nor known is one clear error."""
    from moopt.cli import study_defaults
    from moopt.errors import ConfigError

    train, val = tmp_path / "t.jsonl", tmp_path / "v.jsonl"
    for f in (train, val):
        f.write_text('{"text": "a"}\n')
    header = {"base_model": "org/model", "fingerprint": {"train_file": str(train), "validation_file": str(val)}}
    kw = {"base_model": None, "train_file": None, "validation_file": None}
    notes = study_defaults(kw, header)
    assert kw == {"base_model": "org/model", "train_file": str(train), "validation_file": str(val), "seed": 42,
                  "kernels": "auto"}
    assert notes == ["Base model: org/model (the study's)", f"Training data: {train} (the study's)",
                     f"Validation data: {val} (the study's)", "Seed: 42, the default"]
    # a best_config.yaml copied out of its study: the defaults it falls back on are said, not taken silently
    kw = {"base_model": None, "train_file": str(train), "validation_file": str(val)}
    away = " (--config is not in a study's folder, whose choices it would take)"
    assert study_defaults(kw, {}) == [f"Base model: smollm2-135m, the default{away}", f"Seed: 42, the default{away}"]
    # the seed the study's trials trained with (a --seed 7 study's chosen trial is repeated), unless given
    seeded = {**header, "fingerprint": {**header["fingerprint"], "seed": 7}}
    kw = {"base_model": None, "train_file": None, "validation_file": None}
    assert study_defaults(kw, seeded)[-1] == "Seed: 7 (the study's)" and kw["seed"] == 7
    kw = {"base_model": None, "train_file": None, "validation_file": None, "seed": 3}
    assert study_defaults(kw, seeded)[-1] != "Seed: 7 (the study's)" and kw["seed"] == 3
    # the study's LoRA kernel path (dropout masks differ between them), unless given
    kernelled = {**header, "options": {"kernels": "triton"}}
    kw = {"base_model": None, "train_file": None, "validation_file": None}
    assert study_defaults(kw, kernelled)[-1] == "Kernels: triton (the study's)" and kw["kernels"] == "triton"
    kw = {"base_model": None, "train_file": None, "validation_file": None, "kernels": "torch"}
    assert "Kernels" not in " ".join(study_defaults(kw, kernelled)) and kw["kernels"] == "torch"
    kw = {"base_model": "other/model", "train_file": "mine.jsonl", "validation_file": None}
    assert study_defaults(kw, header)[0] == ("Note: the study searched these hyperparameters on org/model; "
                                             "training on other/model")
    assert kw["train_file"] == "mine.jsonl" and kw["validation_file"] == str(val)
    kw = {"base_model": None, "train_file": None, "validation_file": "v.jsonl"}
    with pytest.raises(ConfigError, match="--train_file: required .--config is not in a study's folder, and its first lines do not name"):
        study_defaults(kw, {})
    assert kw["base_model"] == "smollm2-135m"
    with pytest.raises(ConfigError, match="--train_file: required .the study's journal does not name"):
        study_defaults({"base_model": None, "train_file": None, "validation_file": None}, {"base_model": "org/model"})
    train.unlink()
    with pytest.raises(ConfigError, match=f"--train_file: the study's {train} is not there any more; pass --train_file"):
        study_defaults({"base_model": None, "train_file": None, "validation_file": None}, header)


def test_training_a_trial_config_that_did_not_complete_says_what_became_of_the_trial(tmp_path):
    """`moopt train --config trial_results/trial_3/config.yaml` of a PRUNED (or failed, infeasible) trial trained it
    without a word of it: its metrics then surprise, or an infeasible one runs out of memory."""
    from test_analysis import synthetic_trials, write_fake_study

    from moopt.cli import trial_outcome_note
    from moopt.journal import Journal, replay

    out = write_fake_study(tmp_path / "s", synthetic_trials(8))  # 3 PRUNED, 5 FAIL, 7 INFEASIBLE
    j = Journal(out)
    j.append({"type": "trial_start", "number": 8, "datetime_start": "2026-01-01T00:09:00", "params": {}})
    j.close()
    rec = replay(out)
    assert trial_outcome_note(rec, 0) == []
    assert trial_outcome_note(rec, 3) == [f"Note: trial 3 of the study was PRUNED ({rec.ends[3].error}); this trains "
                                          "its configuration to the end"]
    assert "was FAIL (" in trial_outcome_note(rec, 5)[0]
    assert trial_outcome_note(rec, 7)[0].endswith("(it may not fit the memory it was refused for)")
    assert "no result (it is running, or was when the study stopped)" in trial_outcome_note(rec, 8)[0]


def test_a_study_whose_model_folder_moved_resumes_and_warm_starts_on_the_same_weights(tiny_model, tiny_data, tmp_path):
    """A project folder moved (mv proj proj2): the data were accepted by content, the model refused by path
    ("--base_model .../proj/tiny -> .../proj2/tiny"), and --warm_start trained every seed again. The journal records
    the weights' digest: the same weights are the same model."""
    import shutil

    space = tmp_path / "space.yaml"
    space.write_text("training:\n  learning_rate: {type: log_uniform, min: 1e-3, max: 3e-2}\n  num_train_epochs: 1\n"
                     "data:\n  max_seq_length: 32\n")
    shutil.copytree(tiny_model, tmp_path / "proj" / "tiny")
    for f in ("train", "val"):
        shutil.copy(tiny_data[f], tmp_path / "proj" / f"{f}.jsonl")

    def run(model, out, *extra):
        proj = model.parent
        return CliRunner().invoke(main, ["optimize", "--base_model", str(model), "--train_file", str(proj / "train.jsonl"),
                                         "--validation_file", str(proj / "val.jsonl"), "--search_space", str(space),
                                         "--no-baseline", "--output_dir", str(out), *extra])

    r = run(tmp_path / "proj" / "tiny", tmp_path / "s", "--num_trials", "1")
    assert r.exit_code == 0, r.output
    (tmp_path / "proj").rename(tmp_path / "proj2")
    r = run(tmp_path / "proj2" / "tiny", tmp_path / "s", "--num_trials", "2", "--resume")
    assert r.exit_code == 0, r.output
    assert f"--base_model {tmp_path / 'proj2' / 'tiny'} (was {tmp_path / 'proj' / 'tiny'})" in r.output
    # from then on the study names the moved copies: best_config.yaml's line, and what moopt train takes (it said
    # "the study's .../proj/train.jsonl is not there any more")
    from moopt.cli import study_defaults
    from moopt.journal import replay

    header = (tmp_path / "s" / "best_config.yaml").read_text().splitlines()[2]
    assert "/proj/" not in header and f"--train_file {tmp_path / 'proj2' / 'train.jsonl'}" in header, header
    kw = {"base_model": None, "train_file": None, "validation_file": None, "seed": None, "kernels": None}
    study_defaults(kw, replay(tmp_path / "s").header)
    assert kw["base_model"] == str(tmp_path / "proj2" / "tiny") and kw["validation_file"] == str(tmp_path / "proj2" / "val.jsonl")
    r = run(tmp_path / "proj2" / "tiny", tmp_path / "w", "--num_trials", "1", "--warm_start", str(tmp_path / "s"))
    assert r.exit_code == 0 and "not the same base model" not in r.output, r.output
    # other weights in the moved folder are not the same model
    (tmp_path / "proj2" / "tiny" / "config.json").write_text(
        (tmp_path / "proj2" / "tiny" / "config.json").read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    r = run(tmp_path / "proj2" / "tiny", tmp_path / "s", "--num_trials", "3", "--resume")
    assert r.exit_code == 2 and "--base_model" in r.output, r.output
