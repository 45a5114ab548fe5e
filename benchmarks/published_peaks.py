"""Published measured GPU peaks of LoRA / QLoRA fine-tuning of Llama models, with the settings their
sources state, for benchmarks/bench_published.py (estimate vs published).

Fields: ``model`` (a moopt.memory.shapes name), ``quant`` (none | 4bit = NF4 with double quantisation),
``b`` × ``s`` (the largest padded batch), ``r``, ``targets``, ``ckpt`` (gradient checkpointing),
``dropout``, ``kernels`` / ``loss`` (how moopt.memory.estimate models the peer's step: "peft" = HF/PEFT-style
LoRA with bitsandbytes of that time, "torch" = a LoRA that keeps what moopt's keeps; "hf" = HF's full
fp32 loss, "chunked" = a chunked cross-entropy), ``measure`` (what the figure is: ``allocated`` =
torch.cuda.max_memory_allocated, ``reserved`` = max_memory_reserved, ``capacity`` = the GPU's memory
when the figure is the longest sequence that fit it), ``value`` and ``unit`` (GB = 1e9 bytes, GiB),
``source``, ``url``, ``note``.

Other stacks: their LoRA, loss and attention code differ from moopt's, so these are a sanity band for
the estimator, not a fit target.
"""

from __future__ import annotations

QV = ("q_proj", "v_proj")
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QVO_MLP = ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

LITGPT = "https://github.com/Lightning-AI/litgpt/blob/main/tutorials/resource-tables.md"
LITGPT_NOTE = ("LitGPT finetune/lora.py (commit 8641822, 2023-10): A100-40GB, bf16-true, r=8 alpha 16 dropout 0.05 "
               "on q,v, no checkpointing, Alpaca with its longest example 1304 tokens (Llama 2 tokenizer), "
               "'Max GPU RAM' = max_memory_allocated/1e9, bitsandbytes 0.41.1")
TORCHTUNE = "https://github.com/pytorch/torchtune/blob/main/README.md"
TORCHTUNE_NOTE = ("torchtune README 'Memory and training speed': RTX 4090, batch 2, packed 2048 tokens, compile, "
                  "activation checkpointing, r=8 on q,v,o + MLP, torchao NF4 (keeps no linear inputs)")
TT_TUTORIAL = "https://pytorch.org/torchtune/stable/tutorials/qlora_finetune.html"
UNSLOTH = "https://unsloth.ai/blog/llama3-3"
UNSLOTH_NOTE = ("Unsloth Llama 3.3 blog / docs.unsloth.ai benchmarks, 'Hugging Face + FA2' column: 4-bit QLoRA r=32 "
                "on all linear layers, batch 1, sequences padded to the length shown: the longest that fit the GPU, "
                "so the run's peak is just under the GPU's memory (12/16/24/40/48/80 GB cards hold about that many GiB)")


def _row(**kw) -> dict:
    base = {"quant": "none", "r": 8, "targets": QV, "ckpt": False, "dropout": 0.0, "kernels": "peft", "loss": "hf"}
    return base | kw


PUBLISHED: list[dict] = [
    # -- LitGPT resource tables (A100 40GB) ----------------------------------------------------------
    _row(id="litgpt-llama2-7b-lora-b1", model="llama-2-7b", b=1, s=1304, dropout=0.05, loss="chunked",
         measure="allocated", value=21.30, unit="GB", source="LitGPT", url=LITGPT, note=LITGPT_NOTE),
    _row(id="litgpt-llama2-7b-lora-b2", model="llama-2-7b", b=2, s=1304, dropout=0.05, loss="chunked",
         measure="allocated", value=29.07, unit="GB", source="LitGPT", url=LITGPT, note=LITGPT_NOTE),
    _row(id="litgpt-llama2-7b-nf4dq-b1", model="llama-2-7b", quant="4bit", b=1, s=1304, dropout=0.05, loss="chunked",
         measure="allocated", value=13.84, unit="GB", source="LitGPT", url=LITGPT, note=LITGPT_NOTE),
    _row(id="litgpt-llama2-13b-lora-b1", model="llama-2-13b", b=1, s=1304, dropout=0.05, loss="chunked",
         measure="allocated", value=38.12, unit="GB", source="LitGPT", url=LITGPT, note=LITGPT_NOTE),
    _row(id="litgpt-llama2-13b-nf4dq-b1", model="llama-2-13b", quant="4bit", b=1, s=1304, dropout=0.05,
         loss="chunked", measure="allocated", value=22.55, unit="GB", source="LitGPT", url=LITGPT, note=LITGPT_NOTE),
    # -- torchtune -----------------------------------------------------------------------------------
    _row(id="torchtune-llama31-8b-qlora", model="llama-3.1-8b", quant="4bit", b=2, s=2048, targets=QVO_MLP,
         ckpt=True, kernels="torch", loss="chunked", measure="reserved", value=7.4, unit="GiB", source="torchtune",
         url=TORCHTUNE, note=TORCHTUNE_NOTE),
    _row(id="torchtune-llama31-8b-lora", model="llama-3.1-8b", b=2, s=2048, targets=QVO_MLP, ckpt=True,
         kernels="torch", loss="chunked", measure="reserved", value=16.2, unit="GiB", source="torchtune",
         url=TORCHTUNE, note=TORCHTUNE_NOTE),
    _row(id="torchtune-llama2-7b-lora-tutorial", model="llama-2-7b", b=2, s=1024, ckpt=True, kernels="torch",
         measure="reserved", value=15.57, unit="GB", source="torchtune", url=TT_TUTORIAL,
         note="torchtune QLoRA tutorial, LoRA run: r=8 on q,v, batch 2, checkpointing, Alpaca (sequence length not "
              "published: the longest batch is assumed to pad to 1024), fp32 logits + plain cross-entropy"),
    # -- Unsloth: HF + FlashAttention-2 + PEFT QLoRA, longest sequence that fits ----------------------
    *[_row(id=f"unsloth-hf-llama31-8b-{gb}gb", model="llama-3.1-8b", quant="4bit", b=1, s=tok, r=32, targets=ALL,
           ckpt=True, measure="capacity", value=float(gb), unit="GiB", source="Unsloth", url=UNSLOTH,
           note=UNSLOTH_NOTE)
      for gb, tok in ((12, 932), (16, 2551), (24, 5789), (40, 12264), (48, 15502), (80, 28454))],
    _row(id="unsloth-hf-llama33-70b-80gb", model="llama-3.3-70b", quant="4bit", b=1, s=6916, r=32, targets=ALL,
         ckpt=True, measure="capacity", value=80.0, unit="GiB", source="Unsloth", url=UNSLOTH, note=UNSLOTH_NOTE),
]

# Left out: the torchtune tutorial's QLoRA figure (9.29 GB reserved) was already 9.13 GB at model init (the
# allocator kept the bf16 load transient), so it does not measure the training step.
