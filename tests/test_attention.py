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


class _Model:
    """What BatchAttention touches of a transformers model: its config and set_attn_implementation."""

    def __init__(self):
        self.config = type("C", (), {"_attn_implementation": "sdpa"})()
        self.switches = 0

    def set_attn_implementation(self, impl):
        self.config._attn_implementation = impl
        self.switches += 1


def test_each_batch_runs_the_attention_for_its_own_width():
    from moopt.train.recipe import BatchAttention

    def rows(n, width):
        return {"input_ids": torch.zeros((n, width), dtype=torch.long)}

    model = _Model()
    pick = BatchAttention(model, torch.device("cpu"), "bfloat16", batch=4, longest=20)
    assert pick(rows(4, 20)) == "eager" and model.config._attn_implementation == "eager"
    assert pick(rows(4, 12)) == "eager" and model.switches == 1  # no switch when it already runs
    assert pick(rows(4, EAGER_MAX_TOKENS + 1)) == "sdpa"
    # packed rows wider than the longest example: eager only while its probabilities (rows x width^2)
    # stay within what the gate counted for the full batch at the longest example (4 x 20^2)
    assert pick(rows(1, 40)) == "eager"
    assert pick(rows(2, 40)) == "sdpa"
    assert pick.summary == "eager 60%+sdpa"
    # the estimate counts eager at batch x EAGER_MAX_TOKENS when the longest example is longer
    long = BatchAttention(_Model(), torch.device("cpu"), "bfloat16", batch=4, longest=1000)
    assert long(rows(4, EAGER_MAX_TOKENS)) == "eager" and long(rows(4, 300)) == "sdpa"
    fp32 = BatchAttention(_Model(), torch.device("cpu"), "float32", batch=4, longest=20)
    assert fp32(rows(4, 20)) == "sdpa" and fp32.summary == "sdpa"


def _trial(tiny_model, tiny_data, out, dtype, max_len, packing=False, train=None):
    from moopt.records import TrialSpec
    from moopt.train.recipe import run_trial

    cfg = TrialConfig.from_dict({"training": {"learning_rate": 1e-3, "batch_size": 4, "num_train_epochs": 0.2},
                                 "lora": {"r": 4, "alpha": 8}, "model": {"dtype": dtype},
                                 "data": {"max_seq_length": max_len, "packing": packing}})
    spec = TrialSpec(number=0, config=cfg, base_model=str(tiny_model), train_file=str(train or tiny_data["train"]),
                     validation_file=str(tiny_data["val"]), output_dir=str(out),
                     kernels="torch", save_adapter=False, device="cpu")
    res = run_trial(spec)
    assert res.state == "COMPLETE", res.error
    return res


def test_a_bf16_cpu_trial_runs_eager_and_records_it(tiny_model, tiny_data, tmp_path):
    """A warm model keeps no earlier trial's choice: each trial sets its own."""
    assert _trial(tiny_model, tiny_data, tmp_path / "a", "bfloat16", 64).attention == "eager"
    assert _trial(tiny_model, tiny_data, tmp_path / "b", "float32", 64).attention == "sdpa"


def test_short_rows_run_eager_whatever_max_seq_length_allows(tiny_model, tiny_data, tmp_path):
    """The guide's commands: max_seq_length 512 and packing on, over examples of ~12 tokens. Rows are as
    wide as the batch's examples (packing does not pay on such even lengths), so they run eager."""
    res = _trial(tiny_model, tiny_data, tmp_path / "a", "bfloat16", 512, packing=True)
    assert res.attention == "eager"


def test_a_trial_with_short_and_long_examples_runs_both(tiny_model, tiny_data, tmp_path):
    import json

    train = tmp_path / "mixed.jsonl"
    with open(train, "w") as f:
        for i, t in enumerate(["apple", "leaf", "sky", "sun", "coal", "snow"] * 4):
            words = 60 if i % 4 == 0 else 1  # a batch of 4 holds one long example or none (sequential order)
            prompt = " ".join(["what is the color of"] * words) + f" {t} ? answer :"
            f.write(json.dumps({"prompt": prompt, "completion": " red"}) + "\n")
    cfg = TrialConfig.from_dict({"training": {"learning_rate": 1e-3, "batch_size": 4, "num_train_epochs": 1.0},
                                 "lora": {"r": 4, "alpha": 8}, "model": {"dtype": "bfloat16"},
                                 "data": {"max_seq_length": 400, "packing": False, "sampling_strategy": "sequential"}})
    from moopt.records import TrialSpec
    from moopt.train.recipe import run_trial

    res = run_trial(TrialSpec(number=0, config=cfg, base_model=str(tiny_model), train_file=str(train),
                              validation_file=str(tiny_data["val"]), output_dir=str(tmp_path / "t"),
                              kernels="torch", save_adapter=False, device="cpu"))
    assert res.state == "COMPLETE", res.error
    assert res.attention.startswith("eager ") and res.attention.endswith("%+sdpa"), res.attention


def test_the_estimate_counts_the_eager_softmax(tiny_model):
    """bf16 on a CPU at 128 tokens a row (eager) holds the b·heads·s² probabilities; at 129 (SDPA) it does
    not, but the trial's batches of up to 128 tokens still run eager, so the estimate of a 129-token batch
    peaks at the 128-token eager step and names that shape (what the gate probes)."""
    from moopt.memory.estimate import ModelDims, StepShape, attention_score_bytes, estimate_peak, load_model_config

    mc = load_model_config(tiny_model)
    trial = TrialConfig.from_dict({"model": {"dtype": "bfloat16"}, "training": {"batch_size": 8}})
    dims = ModelDims.from_config(mc)
    heads, layers = int(mc.num_attention_heads), int(mc.num_hidden_layers)
    scores = (4 + 2) * 8 * heads * 128 * 128

    def shape(s):
        return StepShape(m=dims, trial=trial, device="cpu", kernels="torch", loss="chunked", b=8, s=s, a_b=2)

    assert attention_score_bytes(shape(128)) == scores
    assert attention_score_bytes(shape(129)) == 0
    eager = estimate_peak(mc, trial, device="cpu", kernels="torch", batch_shape=(8, 128))
    above = estimate_peak(mc, trial, device="cpu", kernels="torch", batch_shape=(8, 129))
    assert above.shape == (8, 128) and above.total_bytes == eager.total_bytes
    assert any("eager step of 8 x 128" in n for n in above.notes)
    long = estimate_peak(mc, trial, device="cpu", kernels="torch", batch_shape=(8, 2048))
    assert long.shape == (8, 2048) and long.total_bytes > eager.total_bytes
    fp32 = TrialConfig.from_dict({"model": {"dtype": "float32"}, "training": {"batch_size": 8}})
    assert estimate_peak(mc, fp32, device="cpu", kernels="torch", batch_shape=(8, 129)).shape == (8, 129)
    cuda = estimate_peak(mc, trial, device="cuda", kernels="torch", batch_shape=(8, 128))
    assert cuda.breakdown["activations"] < eager.breakdown["activations"]
    assert eager.breakdown["activations"] > scores * layers


def test_the_memory_probe_runs_the_trials_attention(tiny_model):
    """The gate's probe measures what the trial will hold: eager for bf16 on a CPU with short rows."""
    from moopt.train.probe import probe_peak

    for dtype, want in (("bfloat16", "eager"), ("float32", "sdpa")):
        t = TrialConfig.from_dict({"training": {"batch_size": 2}, "data": {"max_seq_length": 32},
                                   "lora": {"r": 4}, "model": {"dtype": dtype}})
        res = probe_peak(str(tiny_model), t, device="cpu", kernels="torch", steps=2, threads=1)
        assert res.ok, res.error
        assert res.attention == want
