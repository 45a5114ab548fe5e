"""Packed rows compute what padded rows compute: same examples, same loss, same accuracy, same gradients."""

from __future__ import annotations

import random

import pytest
import torch

from moopt.train.data import IGNORE, Example, collate, collate_packed


def examples(n: int, seed: int, vocab: int = 64, lo: int = 3, hi: int = 40) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(lo, hi)
        ids = [rng.randrange(4, vocab) for _ in range(length)]
        prompt = rng.randint(1, length - 1)
        out.append(Example(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def test_rows_hold_every_example_once_within_capacity():
    batch = examples(9, seed=1)
    packed = collate_packed(batch, pad_id=1, capacity=48)
    padded = collate(batch, pad_id=1)
    assert packed["input_ids"].shape[0] < len(batch)
    assert int(packed["attention_mask"].sum()) == sum(len(e.input_ids) for e in batch)
    assert int(packed["attention_mask"].sum(1).max()) <= 48
    # each example appears as one run of its own tokens, positions 0..n-1
    rows = packed["input_ids"].tolist()
    pos = packed["position_ids"].tolist()
    found = []
    for r, row in enumerate(rows):
        starts = [i for i, p in enumerate(pos[r]) if p == 0] + [len(row)]
        for a, b in zip(starts, starts[1:]):
            if packed["attention_mask"][r, a]:
                found.append(row[a:b])
    assert sorted(found) == sorted(e.input_ids.tolist() for e in batch)
    # the same label tokens take loss as in padded rows
    assert int((packed["labels"][:, 1:] != IGNORE).sum()) == int((padded["labels"][:, 1:] != IGNORE).sum())


def test_an_example_longer_than_the_capacity_gets_a_row_of_its_own():
    batch = examples(3, seed=2, lo=20, hi=30)
    packed = collate_packed(batch, pad_id=1, capacity=10)
    assert packed["input_ids"].shape[0] == 3


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(tiny_model, request):
    """Both attention paths a trial runs (moopt.config.attention_implementation: eager for bf16 on a CPU
    with short rows): each must keep packed examples apart."""
    from transformers import AutoModelForCausalLM

    # use_cache left on, as a model loads: the packed path must not depend on the recipe turning it off
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=request.param)


def loss_and_grads(model, batch):
    from moopt.train.step import causal_lm_loss

    model.zero_grad(set_to_none=True)
    loss_sum, n_correct, n = causal_lm_loss(model, batch, "torch")
    loss_sum.backward()
    loss_sum = loss_sum.detach()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return float(loss_sum), int(n_correct), n, grads


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packed_loss_accuracy_and_gradients_match_padded(model, seed):
    batch = examples(8, seed=seed)
    ref = loss_and_grads(model, collate(batch, pad_id=1))
    got = loss_and_grads(model, collate_packed(batch, pad_id=1, capacity=64))
    assert got[2] == ref[2]  # label tokens
    assert got[1] == ref[1]  # correct next-token predictions
    assert got[0] == pytest.approx(ref[0], rel=1e-5)
    assert torch.allclose(got[3], ref[3], rtol=1e-4, atol=1e-6)


def test_without_position_restarts_attention_would_cross_examples(model):
    """The control: the same packed rows with positions running on through the row (no restart, so
    one causal sequence per row) do not give the padded loss; the restarts are what isolates examples."""
    batch = examples(8, seed=0)
    ref = loss_and_grads(model, collate(batch, pad_id=1))
    packed = collate_packed(batch, pad_id=1, capacity=64)
    T = packed["input_ids"].shape[1]
    packed["position_ids"] = torch.arange(T).expand_as(packed["input_ids"]).clone()
    got = loss_and_grads(model, packed)
    assert got[0] != pytest.approx(ref[0], rel=1e-5)  # the packed rows above match to ~1e-7
    assert not torch.allclose(got[3], ref[3], rtol=1e-4, atol=1e-6)


def test_batches_of_similar_lengths_stay_padded_and_long_tailed_ones_are_packed():
    from moopt.train.data import worth_packing

    assert not worth_packing([17, 18, 16, 19, 17, 18, 20, 17], 512)  # the bundled data: little padding
    assert worth_packing([900, 30, 25, 40, 18, 60, 22, 35], 1024)  # one long example pads the rest
    assert worth_packing([100, 10, 10, 10], 64) and not worth_packing([100, 10, 10, 10], 16)


def test_a_trial_trains_the_same_packed_or_padded(tiny_model, tiny_data, tmp_path, monkeypatch):
    import moopt.train.data

    monkeypatch.setattr(moopt.train.data, "PACK_WORTH", 10.0)  # pack every batch (the tiny data pads little)
    from moopt.config import TrialConfig
    from moopt.records import TrialSpec
    from moopt.train.recipe import run_trial

    metrics = {}
    for packing in (False, True):
        cfg = TrialConfig.from_dict({"training": {"learning_rate": 1e-3, "batch_size": 8, "num_train_epochs": 1},
                                     "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                                     "data": {"max_seq_length": 64, "packing": packing}})
        spec = TrialSpec(number=0, config=cfg, base_model=str(tiny_model), train_file=str(tiny_data["train"]),
                         validation_file=str(tiny_data["val"]), output_dir=str(tmp_path / str(packing)),
                         kernels="torch", save_adapter=False)
        res = run_trial(spec)
        assert res.state == "COMPLETE", res.error
        metrics[packing] = res
    assert metrics[True].steps == metrics[False].steps
    assert metrics[True].train_tokens == metrics[False].train_tokens
    assert metrics[True].metrics["eval_loss"] == pytest.approx(metrics[False].metrics["eval_loss"], rel=1e-4)
    assert metrics[True].metrics["eval_accuracy"] == pytest.approx(metrics[False].metrics["eval_accuracy"], abs=1e-3)
    # metrics.json says how many micro-batches packing packed (nothing said whether it was applied); none when off
    import json

    packed = json.loads((tmp_path / "True" / "metrics.json").read_text())
    assert packed["packed_micro_batches"] == packed["micro_batches"] > 0
    assert "packed_micro_batches" not in json.loads((tmp_path / "False" / "metrics.json").read_text())



def test_packed_rows_are_never_wider_than_the_batchs_longest_example():
    """Packed into rows of max_seq_length (2048), a batch of 16 examples of 20-200 tokens became one row of ~1.9k
    tokens: attention's cost grows with the square of the width, so it trained slower than padded rows of 200, and
    the memory gate (which measures the padded batch) never saw that shape. Rows now end at the longest example."""
    from moopt.train.data import micro_batches, tokenized_set

    exs = examples(64, 3, lo=20, hi=200)
    packed = 0
    for k, (_, batch) in enumerate(micro_batches(tokenized_set(exs, 0), 16, 1.0, "sequential", 0, 0, pack_capacity=2048)):
        rows, width = batch["input_ids"].shape
        assert width <= max(len(e.input_ids) for e in exs[16 * k: 16 * (k + 1)])  # sequential: batch k is 16k..16k+15
        packed += "position_ids" in batch and rows < 16
    assert packed  # long-tailed batches still pack: fewer rows, none wider than padded
