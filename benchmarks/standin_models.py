"""Random-weight stand-ins for real models, built from their configs: no hub, no download.

    python -P benchmarks/standin_models.py OUT_DIR smollm2-135m llama-3.2-1b [--device cuda] [--tiny]

Each folder holds config.json, model.safetensors (random weights, bf16 on CUDA, fp32 on CPU) and a
word-level tokenizer (the ``tokenizers`` library) whose vocabulary is every word of data/*.jsonl and of
bench_trial.py's synthetic rows; the config keeps the real vocab_size, so embeddings, LM head and the
memory estimate have the real model's size. Speed and memory depend on the shapes, not the weights;
losses are those of an untrained model. ``--tiny`` keeps the layer structure at 64-wide, 2-layer
sizes for CPU dry runs. A folder is rebuilt unless its model.safetensors exists.

Shapes (hidden, intermediate, layers, heads, KV heads; vocab; parameters):
SmolLM2-135M 576, 1536, 30, 9, 3; 49152; 134.5 M.  Llama-3.2-1B 2048, 8192, 16, 32, 8; 128256; 1.236 B
(head_dim 64, tied embeddings).  Llama-3.1-8B 4096, 14336, 32, 32, 8; 128256; 8.03 B (16 GB of bf16
weights to write: the GPU check uses its shapes in bench_lora and the estimator, not as a folder).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import ROOT, WORDS  # noqa: E402

SHAPES = {
    "smollm2-135m": {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True,
                     "rope_theta": 100000.0, "max_position_embeddings": 8192},
    "llama-3.2-1b": {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": True,
                     "rope_theta": 500000.0, "max_position_embeddings": 131072},
    "llama-3.1-8b": {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False,
                     "rope_theta": 500000.0, "max_position_embeddings": 131072},
}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>"]


def corpus_words() -> list[str]:
    """Every word (Whitespace pre-tokenizer: runs of word characters, or of punctuation) in data/*.jsonl
    and bench_trial's synthetic rows, sorted."""
    words = set()
    for path in sorted((ROOT / "data").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            for value in json.loads(line).values():
                words.update(re.findall(r"\w+|[^\w\s]+", json.dumps(value) if not isinstance(value, str) else value))
    words.update(WORDS)
    return sorted(words)


def tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [w for w in corpus_words() if w not in SPECIALS][: vocab_size - len(SPECIALS)]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(SPECIALS + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")


def build(name: str, out: Path, device: str = "cpu", tiny: bool = False) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "model.safetensors").is_file():
        return out
    shape = {**SHAPES[name], **(TINY if tiny else {})}
    if tiny:
        shape["vocab_size"] = 512
    config = LlamaConfig(bos_token_id=2, eos_token_id=3, pad_token_id=1, **shape)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise directly in the saved dtype (1.2 B fp32 params = 5 GB)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer(config.vocab_size).save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}{' (tiny)' if tiny else ''}: {n / 1e6:.1f} M parameters, {dtype} -> {out}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("names", nargs="+", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    for name in a.names:
        build(name, a.out_dir / name, a.device, a.tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
