"""``config.json`` values of Llama models moopt estimates without downloading anything.

Each entry holds the fields of the model's published ``config.json`` (Hugging Face hub, the
``meta-llama/<name>`` repositories) that the memory estimate reads; ``moopt estimate-memory
--base_model llama-3.3-70b`` and :func:`moopt.memory.estimate.load_model_config` accept these names.
"""

from __future__ import annotations

_LLAMA3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}

MODEL_SHAPES: dict[str, dict] = {
    # meta-llama/Llama-3.3-70B-Instruct/config.json
    "llama-3.3-70b": {
        "_name_or_path": "meta-llama/Llama-3.3-70B-Instruct", "model_type": "llama", "hidden_size": 8192,
        "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
        "head_dim": 128, "vocab_size": 128256, "tie_word_embeddings": False, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "rope_scaling": _LLAMA3_ROPE, "torch_dtype": "bfloat16",
    },
    # meta-llama/Llama-3.1-8B/config.json
    "llama-3.1-8b": {
        "_name_or_path": "meta-llama/Llama-3.1-8B", "model_type": "llama", "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "vocab_size": 128256, "tie_word_embeddings": False, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "rope_scaling": _LLAMA3_ROPE, "torch_dtype": "bfloat16",
    },
    # meta-llama/Llama-3.2-3B/config.json
    "llama-3.2-3b": {
        "_name_or_path": "meta-llama/Llama-3.2-3B", "model_type": "llama", "hidden_size": 3072,
        "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24, "num_key_value_heads": 8,
        "head_dim": 128, "vocab_size": 128256, "tie_word_embeddings": True, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {**_LLAMA3_ROPE, "factor": 32.0}, "torch_dtype": "bfloat16",
    },
    # meta-llama/Llama-2-7b-hf/config.json
    "llama-2-7b": {
        "_name_or_path": "meta-llama/Llama-2-7b-hf", "model_type": "llama", "hidden_size": 4096,
        "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
        "vocab_size": 32000, "tie_word_embeddings": False, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
    },
    # meta-llama/Llama-2-13b-hf/config.json
    "llama-2-13b": {
        "_name_or_path": "meta-llama/Llama-2-13b-hf", "model_type": "llama", "hidden_size": 5120,
        "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 40,
        "vocab_size": 32000, "tie_word_embeddings": False, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
    },
}


def model_shape(name: str) -> dict | None:
    """The config.json values of ``name`` (case-insensitive; ``meta-llama/Llama-3.3-70B-Instruct`` works
    too), or None."""
    key = name.strip().lower()
    if key in MODEL_SHAPES:
        return dict(MODEL_SHAPES[key])
    for v in MODEL_SHAPES.values():
        if v["_name_or_path"].lower() == key:
            return dict(v)
    return None
