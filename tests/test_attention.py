"""The attention implementation a trial runs: eager for bf16 on a CPU with short rows (PyTorch's bf16
SDPA flash kernel is slower there), SDPA elsewhere; the same numbers either way, and the memory
estimate counts what eager keeps."""

from __future__ import annotations

import pytest
import torch

from moopt.config import EAGER_MAX_TOKENS, TrialConfig, attention_implementation


def test_eager_only_for_bf16_on_a_cpu_with_short_rows():
    assert attention_implementation("cpu", "bfloat16", EAGER_MAX_TOKENS) == "eager"
    assert attention_implementation("cpu", "bfloat16", EAGER_MAX_TOKENS + 1) == "sdpa"
    assert attention_implementation("cpu", "float32", 16) == "sdpa"
    assert attention_implementation("cuda", "bfloat16", 16) == "sdpa"


def test_eager_and_sdpa_give_the_same_loss_and_gradients(tiny_model):
    from transformers import AutoModelForCausalLM

    from moopt.train.data import IGNORE, Example, collate
    from moopt.train.step import causal_lm_loss

    g = torch.Generator().manual_seed(3)
    rows = []
    for length in (5, 40, 17, 29, 3, 33, 12, 21):  # padded rows of uneven length: the mask path
        ids = torch.randint(4, 64, (length,), generator=g).tolist()
        rows.append(Example(ids, [IGNORE] * (length // 2) + ids[length // 2:]))
    batch = collate(rows, pad_id=1)
    got = {}
    for impl in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=impl)
        loss_sum, n_correct, n = causal_lm_loss(model, batch, "torch")
        loss_sum.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        got[impl] = (float(loss_sum.detach()), int(n_correct), n, grads)
    assert got["eager"][1:3] == got["sdpa"][1:3]
    assert got["eager"][0] == pytest.approx(got["sdpa"][0], rel=1e-5)
    assert torch.allclose(got["eager"][3], got["sdpa"][3], rtol=1e-4, atol=1e-6)


def test_a_bf16_cpu_trial_runs_eager_and_records_it(tiny_model, tiny_data, tmp_path, monkeypatch):
    """A warm model keeps no earlier trial's choice: each trial sets its own."""
    from moopt.records import TrialSpec
    from moopt.train.recipe import run_trial

    def trial(dtype, max_len):
        cfg = TrialConfig.from_dict({"training": {"learning_rate": 1e-3, "batch_size": 4, "num_train_epochs": 0.2},
                                     "lora": {"r": 4, "alpha": 8}, "model": {"dtype": dtype},
                                     "data": {"max_seq_length": max_len, "packing": False}})
        spec = TrialSpec(number=0, config=cfg, base_model=str(tiny_model), train_file=str(tiny_data["train"]),
                         validation_file=str(tiny_data["val"]), output_dir=str(tmp_path / f"{dtype}{max_len}"),
                         kernels="torch", save_adapter=False, device="cpu")
        res = run_trial(spec)
        assert res.state == "COMPLETE", res.error
        return res

    assert trial("bfloat16", 64).attention == "eager"
    assert trial("float32", 64).attention == "sdpa"


def test_the_estimate_counts_the_eager_softmax(tiny_model):
    """bf16 on a CPU at 128 tokens a row (eager) holds the b·heads·s² probabilities; at 129 (SDPA) it does not."""
    from moopt.memory.estimate import attention_score_bytes, estimate_peak, load_model_config

    mc = load_model_config(tiny_model)
    trial = TrialConfig.from_dict({"model": {"dtype": "bfloat16"}, "training": {"batch_size": 8}})
    eager = estimate_peak(mc, trial, device="cpu", kernels="torch", batch_shape=(8, 128))
    sdpa = estimate_peak(mc, trial, device="cpu", kernels="torch", batch_shape=(8, 129))
    heads, layers = int(mc.num_attention_heads), int(mc.num_hidden_layers)
    scores = (4 + 2) * 8 * heads * 128 * 128
    assert eager.breakdown["activations"] - sdpa.breakdown["activations"] > 0.9 * scores * layers
    cuda = estimate_peak(mc, trial, device="cuda", kernels="torch", batch_shape=(8, 128))
    assert cuda.breakdown["activations"] < eager.breakdown["activations"]
    from moopt.memory.estimate import ModelDims, StepShape

    st = StepShape(m=ModelDims.from_config(mc), trial=trial, device="cpu", kernels="torch", loss="chunked", b=8, s=128, a_b=2)
    assert attention_score_bytes(st) == scores


def test_the_memory_probe_runs_the_trials_attention(tiny_model):
    """The gate's probe measures what the trial will hold: eager for bf16 on a CPU with short rows."""
    from moopt.train.probe import probe_peak

    for dtype, want in (("bfloat16", "eager"), ("float32", "sdpa")):
        t = TrialConfig.from_dict({"training": {"batch_size": 2}, "data": {"max_seq_length": 32},
                                   "lora": {"r": 4}, "model": {"dtype": dtype}})
        res = probe_peak(str(tiny_model), t, device="cpu", kernels="torch", steps=2, threads=1)
        assert res.ok, res.error
        assert res.attention == want
