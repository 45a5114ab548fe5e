"""8bit / 4bit (QLoRA) training through bitsandbytes, on its CPU backend: moopt's LoRA on a packed base
matches PEFT's, a quantised study trains and its adapter reloads in PEFT, and the probe agrees with
the estimate."""

from __future__ import annotations

import dataclasses
import gc
import json
import math

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from moopt.cli import main
from moopt.config import TrialConfig
from moopt.train.lora import LoRALinear, attach_lora
from moopt.train.recipe import load_model_and_tokenizer

pytest.importorskip("bitsandbytes")

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantised(q: str) -> TrialConfig:
    base = TrialConfig()
    return dataclasses.replace(base, model=dataclasses.replace(base.model, quantization=q))


GPU = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])


@pytest.mark.parametrize("device", ["cpu", GPU])
@pytest.mark.parametrize("q, layer", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_moopt_lora_on_a_packed_base_matches_peft(tiny_model, q, layer, device):
    from peft import LoraConfig, get_peft_model

    # In fp32: under dtype auto CUDA computes in bf16, where an H200 (2026-12-04) saw ours and PEFT's
    # lora_A grads 1.4% apart norm-wise from the summation order alone, which hides a real error
    trial = quantised(q)
    trial = dataclasses.replace(trial, model=dataclasses.replace(trial.model, dtype="float32"))

    def load():
        return load_model_and_tokenizer(str(tiny_model), trial, torch.device(device))[0]

    ours, theirs = load(), load()
    attach_lora(ours, r=8, alpha=16, dropout=0.0, target_modules=ALL, backend="torch")
    peft = get_peft_model(theirs, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(ALL)))
    torch.manual_seed(0)
    pairs = []
    for name, mod in ours.named_modules():
        if isinstance(mod, LoRALinear):
            assert type(mod.base).__name__ == layer and mod.quantized and mod.group is None
            mod.lora_B.data.normal_(0, 0.1)  # B != 0, or dA would be zero
            other = peft.base_model.model.get_submodule(name)
            other.lora_A["default"].weight.data.copy_(mod.lora_A.data)
            other.lora_B["default"].weight.data.copy_(mod.lora_B.data)
            pairs.append((mod, other))
    assert len(pairs) == 2 * len(ALL)
    ids = torch.randint(4, 60, (2, 12), device=device)
    ours(input_ids=ids, labels=ids).loss.backward()
    peft(input_ids=ids, labels=ids).loss.backward()
    with torch.no_grad():
        # fp32 on both devices (see load): the CPU's ops match PEFT's to rounding; on CUDA the packed
        # base's own kernels (8-bit: int8 rows from fp16 inputs) may round an element differently, so
        # the norm-wise relative error there
        def close(mine, theirs):
            if device == "cpu":
                torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
            else:
                err = ((mine - theirs).norm() / theirs.norm()).item()
                assert err < 1e-3, f"norm-wise relative error {err:.2e}"

        close(ours(input_ids=ids).logits, peft(input_ids=ids).logits)
    for mine, other in pairs:
        close(mine.lora_A.grad, other.lora_A["default"].weight.grad)
        close(mine.lora_B.grad, other.lora_B["default"].weight.grad)


SPACE = """
training:
  learning_rate: {type: log_uniform, min: 3e-3, max: 3e-2}
  batch_size: 8
  num_train_epochs: 2
lora:
  r: 8
  alpha: 16
  dropout: 0.05
  target_modules: all-linear
model:
  quantization: {type: categorical, values: [4bit, 8bit]}
data:
  max_seq_length: 32
"""


@pytest.fixture(scope="module")
def qstudy(tiny_model, tiny_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("qstudy")
    (d / "space.yaml").write_text(SPACE)
    out = d / "hpo"
    r = CliRunner().invoke(main, [
        "optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
        "--validation_file", str(tiny_data["val"]), "--output_dir", str(out), "--search_space", str(d / "space.yaml"),
        "--num_trials", "3", "--seed", "1", "--memory_constraint", "8"])
    assert r.exit_code == 0, r.output
    (d / "console.txt").write_text(r.output)
    return out


def test_quantisation_on_a_cpu_is_said_to_cost_memory_there(qstudy):
    """bitsandbytes on a CPU: SmolLM2 peaks 34% higher in 4-bit and 50% in 8-bit (the checkpoint stays mapped), which
    the README called "saves nothing" and the study did not mention."""
    said = (qstudy.parent / "console.txt").read_text()
    assert "Note: model.quantization on a CPU: bitsandbytes' 4-bit and 8-bit layers work here but cost memory" in said


def test_quantised_study_trains_below_the_base_model(qstudy):
    df = pd.read_csv(qstudy / "trials_summary.csv")
    assert (df.state == "COMPLETE").all(), df.error.tolist()
    assert set(df.params_quantization) <= {"4bit", "8bit"} and len(set(df.params_quantization)) == 2
    base = json.loads((qstudy / "baseline.json").read_text())["metrics"]["eval_loss"]
    assert df.values_eval_loss.min() < base - 0.1


def test_quantised_adapter_reloads_in_peft_on_the_same_packed_base(qstudy, tiny_model, tiny_data):
    from peft import PeftModel

    from moopt.config import load_trial_config
    from moopt.train.data import tokenize_file
    from moopt.train.recipe import evaluate

    df = pd.read_csv(qstudy / "trials_summary.csv")
    row = df.loc[df.values_eval_loss.idxmin()]
    d = qstudy / "trial_results" / f"trial_{int(row.number)}"
    cfg = load_trial_config(d / "config.yaml")
    base, tok = load_model_and_tokenizer(str(tiny_model), cfg, torch.device("cpu"))
    model = PeftModel.from_pretrained(base, d / "adapter").eval()

    class Wrapped(torch.nn.Module):  # evaluate() takes model.model and model.lm_head, as moopt's trial
        def __init__(self, m):
            super().__init__()
            self.model, self.lm_head = m.base_model.model.model, m.base_model.model.lm_head

    val = tokenize_file(str(tiny_data["val"]), tok, cfg.data.max_seq_length)
    m = evaluate(Wrapped(model), val, cfg.training.batch_size, tok.pad_token_id, torch.device("cpu"), "torch")
    assert math.isclose(m["eval_loss"], row.values_eval_loss, rel_tol=1e-4)


def test_tiny_4bit_probe_within_band_of_the_estimate(tiny_model):
    from moopt.memory.estimate import estimate_peak, load_model_config
    from moopt.train.probe import probe_peak

    t = dataclasses.replace(quantised("4bit"), training=dataclasses.replace(TrialConfig().training, batch_size=2),
                            data=dataclasses.replace(TrialConfig().data, max_seq_length=32))
    res = probe_peak(str(tiny_model), t, device="cpu", kernels="torch", steps=2, threads=1)
    assert res.ok, res.error
    est = estimate_peak(load_model_config(tiny_model), t, device="cpu", kernels="torch")
    assert 0.90 <= est.total_bytes / res.peak_bytes <= 1.35  # the runtime term's band (tests/test_probe.py)


def test_quantisation_without_bitsandbytes_is_one_clear_line(tiny_model, tiny_data, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    (tmp_path / "space.yaml").write_text("model:\n  quantization: 4bit\n")
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, [
        "optimize", "--base_model", str(tiny_model), "--train_file", str(tiny_data["train"]),
        "--validation_file", str(tiny_data["val"]), "--output_dir", str(out), "--search_space", str(tmp_path / "space.yaml")])
    assert r.exit_code == 2 and "needs bitsandbytes" in r.output and "space.yaml" in r.output
    assert not out.exists()
    (tmp_path / "best.yaml").write_text("model:\n  quantization: 4bit\n")  # moopt train: the same line
    r = CliRunner().invoke(main, [
        "train", "--config", str(tmp_path / "best.yaml"), "--base_model", str(tiny_model), "--train_file",
        str(tiny_data["train"]), "--validation_file", str(tiny_data["val"]), "--test_file", str(tiny_data["val"]),
        "--output_dir", str(out)])
    assert r.exit_code == 2 and "needs bitsandbytes" in r.output and "best.yaml" in r.output, r.output
    assert not out.exists()


def _held_after_forward(tiny_model, q: str, targets: tuple[str, ...], ckpt: bool,
                        device: str = "cpu") -> tuple[int, TrialConfig]:
    """Bytes of tensors a training forward leaves alive for backward (the logits excluded): on a CPU
    counted from the profiler's allocation events, on CUDA from the allocator's, so bitsandbytes' ctx
    attributes count too."""
    from torch.profiler import ProfilerActivity, profile

    from moopt.train.probe import worst_case_batch

    trial = TrialConfig.from_dict({
        "training": {"batch_size": 4}, "data": {"max_seq_length": 32},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": list(targets)},
        "model": {"quantization": q, "dtype": "float32", "gradient_checkpointing": ckpt},
    })
    model = load_model_and_tokenizer(str(tiny_model), trial, torch.device(device))[0]
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    attach_lora(model, r=8, alpha=16, dropout=0.05, target_modules=targets, backend="torch")
    model.train()
    batch = worst_case_batch(4, 32, model.config.vocab_size, torch.device(device), 0)
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - before
    else:
        # The earlier calls' graphs are cyclic garbage (bitsandbytes' ctx, the LoRA hooks) holding what their
        # forwards kept; the profiler knows those blocks' sizes from its earlier sessions, so when gc frees them
        # inside this window they count here, negative: CI saw 4-bit's 64 KiB measured as 27 KiB after 8-bit's
        # call, and 8-bit's difference 6 KiB short. Collected before the window, and no collection inside it.
        gc.collect()
        gc.disable()
        try:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        finally:
            gc.enable()
        held = sum(e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    return held - logits.numel() * logits.element_size(), trial


def _loss_phase_activations(tiny_model, trial: TrialConfig) -> int:
    from moopt.memory.estimate import DEFAULT_CE_CHUNK, ModelDims, StepShape, load_model_config, phase_bytes

    st = StepShape(m=ModelDims.from_config(load_model_config(tiny_model)), trial=trial, device="cpu", kernels="torch",
                   loss="chunked", b=4, s=32, a_b=4)
    return phase_bytes(st, False, DEFAULT_CE_CHUNK)["loss"][0]


@pytest.mark.parametrize("q", ["none", "4bit", "8bit"])
def test_estimate_counts_what_lora_with_dropout_keeps_over_each_base(tiny_model, q):
    # moopt's torch backend keeps X̂ and a bool mask per shared input unquantised, but per module over a
    # packed base (no fused siblings there), and the 8-bit base keeps X besides: all linears against q,v.
    held_qv, t_qv = _held_after_forward(tiny_model, q, ("q_proj", "v_proj"), ckpt=False)
    held_all, t_all = _held_after_forward(tiny_model, q, ALL, ckpt=False)
    measured = held_all - held_qv
    # the keep masks come from numpy (torch.from_numpy), which the profiler does not see: one byte per
    # input element of o, gate/up and down (one shared mask each), and of k, o, gate, up, down over a packed base
    masks = (32 + 32 + 64 if q == "none" else 32 * 4 + 64) * 4 * 32 * 2  # x 128 tokens x 2 layers
    estimated = _loss_phase_activations(tiny_model, t_all) - _loss_phase_activations(tiny_model, t_qv) - masks
    assert measured > 0 and abs(estimated - measured) <= 0.02 * measured, (q, estimated, measured)


@pytest.mark.parametrize("device", ["cpu", GPU])
@pytest.mark.parametrize("ckpt", [False, True])
def test_an_8bit_base_keeps_no_more_for_backward_than_a_4bit_one(tiny_model, ckpt, device):
    # bitsandbytes' 8-bit matmul holds its input as a ctx attribute for a weight gradient a frozen base
    # never needs, which non-reentrant checkpointing cannot drop either; moopt clears it after each forward
    # (release_int8_inputs), so 8-bit keeps what 4-bit keeps, as the estimate counts
    held_8, t_8 = _held_after_forward(tiny_model, "8bit", ALL, ckpt=ckpt, device=device)
    held_4, t_4 = _held_after_forward(tiny_model, "4bit", ALL, ckpt=ckpt, device=device)
    # what either holds varies by up to ~10 KiB between runs here (CI saw 8-bit 5% below 4-bit once, and
    # 2 KiB and 9.5 KiB above it (66176 against 64128 and 56448) at ~64 KiB with checkpointing); without the
    # hook 8-bit keeps 112 KiB more (868352 against 753664) without checkpointing and 164 KiB more (230016
    # against 66176) with it, so 16 KiB still tells them apart
    assert held_8 <= max(1.02 * held_4, held_4 + 16384), (held_8, held_4)
    assert _loss_phase_activations(tiny_model, t_8) == _loss_phase_activations(tiny_model, t_4)


def test_moopt_train_of_a_quantised_configuration_on_a_cpu_says_what_it_costs(qstudy, tmp_path):
    """The study says it at its start; the final run of its best configuration (minutes on SmolLM2, where the trial in
    the study took 85 s) said nothing."""
    r = CliRunner().invoke(main, ["train", "--config", str(qstudy / "best_config.yaml"), "--output_dir",
                                  str(tmp_path / "final")])
    assert r.exit_code == 0, r.output
    assert "on a CPU: bitsandbytes' layers work here but cost memory instead of saving it" in " ".join(r.output.split())
