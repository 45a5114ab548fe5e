"""model.dtype auto: bf16 on CUDA and on CPUs with native bf16, else fp32; a bf16 trial trains and
evaluates as its fp32 twin does, up to bf16's precision; the loss reads fp32 logits."""

from __future__ import annotations

import math

import pytest
import torch

from moopt import config
from moopt.config import TrialConfig, resolve_dtype
from moopt.errors import ConfigError
from moopt.records import TrialSpec, TrialState
from moopt.train.recipe import run_trial


def test_auto_resolves_by_device_and_cpu(monkeypatch):
    assert resolve_dtype("float32", "cuda") == "float32" and resolve_dtype("bfloat16", "cpu") == "bfloat16"
    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", "cuda:1") == "bfloat16"
    monkeypatch.delenv("MOOPT_CPU_DTYPE", raising=False)
    for native, want in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(config, "cpu_has_native_bf16", lambda native=native: native)
        assert resolve_dtype("auto", "cpu") == want
    monkeypatch.setenv("MOOPT_CPU_DTYPE", "bfloat16")
    assert resolve_dtype("auto", "cpu") == "bfloat16" and resolve_dtype("auto", "cuda") == "bfloat16"
    monkeypatch.setenv("MOOPT_CPU_DTYPE", "float32")
    assert resolve_dtype("auto", "cpu") == "float32" and resolve_dtype("bfloat16", "cpu") == "bfloat16"
    monkeypatch.setenv("MOOPT_CPU_DTYPE", "fp8")
    with pytest.raises(ConfigError, match="MOOPT_CPU_DTYPE: must be one of"):
        resolve_dtype("auto", "cpu")


def test_the_estimate_follows_the_resolved_dtype(tiny_model, monkeypatch):
    from moopt.memory.estimate import calibration_key, estimate_peak, load_model_config

    mc = load_model_config(tiny_model)
    auto, bf16 = TrialConfig(), TrialConfig.from_dict({"model": {"dtype": "bfloat16"}})
    fp32 = TrialConfig.from_dict({"model": {"dtype": "float32"}})
    monkeypatch.setenv("MOOPT_CPU_DTYPE", "bfloat16")
    est = {name: estimate_peak(mc, t, device="cpu", kernels="torch") for name, t in
           (("auto", auto), ("bf16", bf16), ("fp32", fp32))}
    assert est["auto"].total_bytes == est["bf16"].total_bytes < est["fp32"].total_bytes
    assert 2 * est["bf16"].breakdown["weights"] == est["fp32"].breakdown["weights"]
    # fp32 and bf16 measurements calibrate apart
    assert calibration_key(mc, auto, "cpu", "torch") == calibration_key(mc, bf16, "cpu", "torch")
    assert calibration_key(mc, auto, "cpu", "torch") != calibration_key(mc, fp32, "cpu", "torch")
    monkeypatch.setenv("MOOPT_CPU_DTYPE", "float32")
    assert estimate_peak(mc, auto, device="cpu", kernels="torch").total_bytes == est["fp32"].total_bytes


def test_a_bf16_trial_trains_like_its_fp32_twin(tiny_model, tiny_data, tmp_path, monkeypatch):
    cfg = {"training": {"learning_rate": 3e-2, "batch_size": 8, "num_train_epochs": 10},
           "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
           "data": {"max_seq_length": 32}}

    def trial(name, dtype):
        c = TrialConfig.from_dict({**cfg, "model": {"dtype": dtype}})
        spec = TrialSpec(number=0, config=c, base_model=str(tiny_model), train_file=str(tiny_data["train"]),
                         validation_file=str(tiny_data["val"]), output_dir=str(tmp_path / name), seed=3,
                         kernels="torch", device="cpu", save_adapter=False)
        r = run_trial(spec)
        assert r.state == TrialState.COMPLETE, r.error
        return r

    monkeypatch.setenv("MOOPT_CPU_DTYPE", "bfloat16")
    bf16 = trial("auto", "auto")  # auto under MOOPT_CPU_DTYPE=bfloat16
    fp32 = trial("fp32", "float32")
    assert bf16.dtype == "bfloat16" and fp32.dtype == "float32"
    base = trial("base", "float32")
    evals = ("eval_loss", "eval_accuracy")
    assert [base.metrics[k] for k in evals] == [fp32.metrics[k] for k in evals]  # same seed and dtype
    # both learnt and agree up to bf16's rounding
    assert fp32.metrics["eval_loss"] < math.log(64) - 0.3  # it learnt (64 words: ln 64 is a guess)
    assert bf16.metrics["eval_loss"] == pytest.approx(fp32.metrics["eval_loss"], rel=0.05)
    assert abs(bf16.metrics["eval_accuracy"] - fp32.metrics["eval_accuracy"]) <= 0.1


def test_the_loss_reads_fp32_logits_from_bf16_inputs():
    from moopt_kernels import linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    h = (torch.randn(64, 32, generator=g) * 4).bfloat16()
    w = torch.randn(500, 32, generator=g).bfloat16()
    labels = torch.randint(0, 500, (64,), generator=g)
    loss, correct = linear_cross_entropy(h, w, labels)
    logits = h.double() @ w.double().t()  # the exact products of the bf16 values
    ref = (torch.logsumexp(logits, -1) - logits.gather(1, labels[:, None]).squeeze(1)).sum()
    rounded = logits.bfloat16().double()  # what bf16 logits would have given
    ref_rounded = (torch.logsumexp(rounded, -1) - rounded.gather(1, labels[:, None]).squeeze(1)).sum()
    assert abs(loss.item() - ref.item()) < 1e-4 * abs(ref.item())
    assert abs(ref_rounded.item() - ref.item()) > 10 * abs(loss.item() - ref.item())  # the test can tell
    assert correct.item() == int((logits.argmax(-1) == labels).sum())


def test_loading_a_file_of_another_dtype_peaks_with_file_and_weights(monkeypatch):
    from transformers import LlamaConfig

    from moopt.memory.estimate import ModelDims, checkpoint_bytes, estimate_peak

    monkeypatch.setenv("MOOPT_CPU_DTYPE", "bfloat16")
    mc = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, dtype="float32")
    small = TrialConfig.from_dict({"training": {"batch_size": 1}, "data": {"max_seq_length": 64},
                                   "lora": {"r": 8, "target_modules": "qv"}})
    est = estimate_peak(mc, small, device="cpu", kernels="torch")  # SmolLM2-135M's fp32 file, trained in bf16
    b = est.breakdown
    file = checkpoint_bytes(mc, ModelDims.from_config(mc))
    assert file == 2 * b["weights"] and b["checkpoint_pages"] > 0
    assert est.total_bytes == b["runtime"] + b["weights"] + file  # the load, not the step, is the peak
    big = TrialConfig.from_dict({"training": {"batch_size": 8}, "data": {"max_seq_length": 512}})
    assert "checkpoint_pages" not in estimate_peak(mc, big, device="cpu", kernels="torch").breakdown
    fp32 = TrialConfig.from_dict({"model": {"dtype": "float32"}, "training": {"batch_size": 1},
                                  "data": {"max_seq_length": 64}})
    assert "checkpoint_pages" not in estimate_peak(mc, fp32, device="cpu", kernels="torch").breakdown


def test_a_wrong_moopt_cpu_dtype_is_one_line_and_exit_2(tiny_model, tiny_data, tmp_path):
    from click.testing import CliRunner

    from moopt.cli import main

    out = tmp_path / "study"
    res = CliRunner().invoke(main, ["optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
                                    "--validation_file", str(tiny_data["val"]), "--output_dir", str(out),
                                    "--num_trials", "1"], env={"MOOPT_CPU_DTYPE": "fp8"})
    assert res.exit_code == 2, res.output
    assert "MOOPT_CPU_DTYPE: must be one of ['auto', 'float32', 'bfloat16'], got 'fp8'" in res.output
    assert not out.exists()  # nothing half-written


def test_moopts_cached_fp32_model_trains_bf16_from_a_bf16_copy(tiny_model, tmp_path, monkeypatch, capfd):
    """The bundled model is cached as fp32 safetensors (dequantised from its GGUF). A bf16 trial loads a bf16
    copy made once by the study, so no trial maps the fp32 file while converting (on SmolLM2: 1.24 GiB peak
    RSS against 0.52); the estimate and the calibration key follow the file really loaded. Folders that are
    not moopt's own are loaded as they are and never copied."""
    import json
    import shutil

    from transformers import LlamaConfig

    from moopt.memory.estimate import calibration_key, estimate_peak, load_model_config, loaded_file_dtype
    from moopt.model_files import CONVERSION_MARK, dtype_copy_path, model_folder_for
    from moopt.train.models import prepare_dtype_copy
    from moopt.train.recipe import load_model_and_tokenizer

    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MOOPT_CPU_DTYPE", "bfloat16")
    cached = tmp_path / "cache" / "models" / "tiny-0123456789"
    shutil.copytree(tiny_model, cached)
    (cached / "moopt_conversion.json").write_text("{}")  # as convert_gguf marks its folders
    assert json.loads((cached / "config.json").read_text())["dtype"] == "float32"
    bf16 = TrialConfig.from_dict({"model": {"dtype": "bfloat16"}, "training": {"batch_size": 1},
                                  "data": {"max_seq_length": 8}})
    fp32 = TrialConfig.from_dict({"model": {"dtype": "float32"}, "training": {"batch_size": 1},
                                  "data": {"max_seq_length": 8}})
    # the user's folder: loaded as it is, so the estimate keeps the load-time conversion and nothing is copied
    user = load_model_config(tiny_model)
    assert dtype_copy_path(tiny_model, "bfloat16") == tiny_model and not user.moopt_dtype_copies
    assert loaded_file_dtype(user, bf16, "cpu") == "float32"
    # moopt's cached conversion: the study makes the bf16 copy once, beside it
    assert model_folder_for(cached, "bfloat16") == str(cached)  # not made yet: the fp32 file
    from transformers.utils import logging as hf_logging

    capfd.readouterr()
    copy = prepare_dtype_copy(cached, "bfloat16")
    said = capfd.readouterr()
    assert "caching tiny-0123456789 in bfloat16 (once)" in said.out  # moopt's one line, no transformers bars
    assert "Loading weights" not in said.out + said.err and "Writing model shards" not in said.out + said.err
    assert hf_logging.is_progress_bar_enabled()  # put back for the user's own transformers calls
    assert copy == cached.with_name(cached.name + "-bfloat16") and prepare_dtype_copy(cached, "float32") == cached
    assert json.loads((copy / "config.json").read_text())["dtype"] == "bfloat16"
    assert (copy / "tokenizer.json").is_file() and not list(copy.parent.glob("*.tmp*"))
    assert not (copy / CONVERSION_MARK).is_file()  # the copy is in its own dtype: never copied again
    assert model_folder_for(cached, "bfloat16") == str(copy) and model_folder_for(cached, "float32") == str(cached)
    model, _ = load_model_and_tokenizer(str(cached), bf16, torch.device("cpu"))
    assert model.name_or_path == str(copy) and model.dtype == torch.bfloat16
    ref = load_model_and_tokenizer(str(cached), fp32, torch.device("cpu"))[0]
    assert ref.name_or_path == str(cached)
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q.to(torch.bfloat16)), n  # the same weights as a bf16 load of the fp32 file
    mc = load_model_config(cached)
    assert mc.moopt_dtype_copies
    assert loaded_file_dtype(mc, bf16, "cpu") == "bfloat16" and loaded_file_dtype(mc, fp32, "cpu") == "float32"
    # at SmolLM2's size the fp32 file's load is a small trial's peak; from the bf16 copy it is not
    smol = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, dtype="float32")
    assert estimate_peak(smol, bf16, device="cpu", kernels="torch").breakdown["checkpoint_pages"] > 0
    smol.moopt_dtype_copies = True
    assert "checkpoint_pages" not in estimate_peak(smol, bf16, device="cpu", kernels="torch").breakdown
    assert calibration_key(mc, bf16, "cpu", "torch") != calibration_key(user, bf16, "cpu", "torch")
    assert calibration_key(mc, fp32, "cpu", "torch") == calibration_key(user, fp32, "cpu", "torch")


def test_moopt_train_makes_the_dtype_copy_as_a_study_does(tiny_model, tiny_data, tmp_path, monkeypatch):
    """``moopt train`` on moopt's own conversion trains from its copy in the trial's dtype, as the study's
    trials did (Study.prepare_model), so the final run's load and peak match the trial it repeats."""
    import shutil

    from click.testing import CliRunner

    from moopt.cli import main

    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MOOPT_CPU_DTYPE", "bfloat16")
    cached = tmp_path / "cache" / "models" / "tiny-0123456789"
    shutil.copytree(tiny_model, cached)
    (cached / "moopt_conversion.json").write_text("{}")
    cfg = tmp_path / "best_config.yaml"
    cfg.write_text("training: {learning_rate: 0.01, batch_size: 8, num_train_epochs: 1}\nlora: {r: 4, alpha: 8}\n"
                   "data: {max_seq_length: 32}\n")
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "--base_model", str(cached), "--train_file",
                                  str(tiny_data["train"]), "--validation_file", str(tiny_data["val"]), "--test_file",
                                  str(tiny_data["val"]), "--output_dir", str(tmp_path / "final")])
    assert r.exit_code == 0, r.output
    assert (cached.with_name(cached.name + "-bfloat16") / "model.safetensors").is_file()
    assert "in bfloat16 (once)" in r.output
