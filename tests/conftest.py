"""Shared fixtures: a tiny random Llama with a word-level tokenizer, and small JSONL data sets.

Everything is built in the test session from a LlamaConfig: no downloads, seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# model.dtype auto trains in bf16 on CPUs with native bf16: the tests pin fp32, so their numerics (and
# the CI verdict) do not depend on which CPU runs them; tests/test_dtype.py covers the auto rule and bf16
os.environ.setdefault("MOOPT_CPU_DTYPE", "float32")


def _pin_xdist_worker() -> None:
    """Under pytest-xdist (scripts/test.sh runs one worker per core), each worker keeps to its own share of the
    cores, and so do the trial processes it starts (they inherit the mask; moopt sizes their threads from it).
    Unpinned, two workers' trials each took both cores' threads and ran oversubscribed."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and count.isdigit()) or not hasattr(os, "sched_setaffinity"):
        return
    cores, i, n = sorted(os.sched_getaffinity(0)), int(worker[2:]), int(count)
    if len(cores) >= n:
        os.sched_setaffinity(0, cores[i * len(cores) // n:(i + 1) * len(cores) // n])


_pin_xdist_worker()

COLORS = ["red", "green", "blue", "yellow", "black", "white"]
THINGS = ["apple", "leaf", "sky", "sun", "coal", "snow", "cherry", "grass", "sea", "banana", "ink", "milk"]
RULE = {t: COLORS[i % len(COLORS)] for i, t in enumerate(THINGS)}
WORDS = ["the", "color", "of", "is", "what", "answer", ":", "?"] + COLORS + THINGS


def _load_bench(name: str):
    """A module of benchmarks/ (not a package), loaded from its file."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def load_bench():
    """``load_bench("bench_x")``: benchmarks/bench_x.py as a module (a fixture: two conftest modules
    exist, so tests cannot import from this one by name)."""
    return _load_bench


def build_tiny_llama(path: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, pad_token_id=1, bos_token_id=2, eos_token_id=3,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    return path


def write_color_data(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            t = rng.choice(THINGS)
            f.write(json.dumps({"prompt": f"what is the color of {t} ? answer :", "completion": f" {RULE[t]}"}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    return {"train": write_color_data(d / "train.jsonl", 48, 0), "val": write_color_data(d / "val.jsonl", 16, 1)}


SMALL_SPACE = """
training:
  learning_rate: {type: log_uniform, min: 1e-3, max: 3e-2}
  num_train_epochs: 2
  batch_size: 8
lora:
  r: {type: categorical, values: [4, 8]}
data:
  max_seq_length: 32
"""


@pytest.fixture
def small_space(tmp_path) -> Path:
    """A two-parameter search space for whole studies on the tiny model (learning rate and r)."""
    p = tmp_path / "space.yaml"
    p.write_text(SMALL_SPACE)
    return p
