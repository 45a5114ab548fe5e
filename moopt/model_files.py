"""Which file a trial loads: moopt's own converted models (a GGUF dequantised to fp32 by
``moopt.train.models.convert_gguf``, which marks the folder) keep a copy beside them in each dtype trials
train in. Here, below the memory and train layers, because the estimate (the file's dtype sets a CPU load's
peak) and the loader both ask."""

from __future__ import annotations

import json
from pathlib import Path

CONVERSION_MARK = "moopt_conversion.json"  # in a folder convert_gguf wrote: moopt's own, so it may cache copies beside it


def file_dtype(folder: Path) -> str | None:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(data.get("dtype") or data.get("torch_dtype") or "") or None


def is_conversion(folder: str | Path) -> bool:
    """Whether ``folder`` is one of moopt's own GGUF conversions (convert_gguf marked it)."""
    return (Path(folder) / CONVERSION_MARK).is_file()


def dtype_copy_path(folder: str | Path, dtype: str) -> Path:
    """Where the weights of ``folder`` in ``dtype`` are cached: moopt's own conversions (marked with
    CONVERSION_MARK) get a copy in each dtype trials train in (``moopt.train.models.prepare_dtype_copy``);
    any other folder (the user's, a hub snapshot) is loaded as it is, and this returns it unchanged."""
    folder = Path(folder)
    if dtype == "float32" or not is_conversion(folder) or file_dtype(folder) in (None, dtype):
        return folder
    return folder.with_name(f"{folder.name}-{dtype}")


def model_folder_for(folder: str | Path, dtype: str) -> str:
    """The folder a trial training in ``dtype`` loads: the cached copy in that dtype when there is one."""
    copy = dtype_copy_path(folder, dtype)
    return str(copy if (copy / "model.safetensors").is_file() else folder)


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (what removing it frees: a superseded conversion, an adapter)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


WEIGHT_SAMPLE = 1 << 20  # bytes read at the start, middle and end of each weight file by model_digest


def model_digest(folder: str | Path) -> str | None:
    """A base model folder's weights and config by content, cheaply: SHA-1 over config.json and, for each weight file
    (``*.safetensors``, ``*.bin``, ``*.pt``), its name, size and three 1 MiB samples (start, middle, end), as
    moopt.train.models.gguf_key names a GGUF: milliseconds for an 8B model, where hashing it whole takes seconds.
    Journaled in a study's header: a --resume or --warm_start on a folder retrained in place (the same path, other
    weights) is not the same study. None where ``folder`` is not a folder."""
    import hashlib

    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha1()
    config = folder / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for f in sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt") and p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            for at in (0, max(0, size // 2 - WEIGHT_SAMPLE // 2), max(0, size - WEIGHT_SAMPLE)):
                fh.seek(at)
                h.update(fh.read(WEIGHT_SAMPLE))
    return h.hexdigest()[:16]


def adapter_hint(folder: Path) -> str:
    """"; it is a PEFT adapter (of X): ..." for a folder that holds an adapter, not a model; else ""."""
    try:
        base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return ""
    return (f"; it is a LoRA adapter (PEFT's adapter_config.json{f', of {base}' if base else ''}): give its base model "
            "as --base_model")
