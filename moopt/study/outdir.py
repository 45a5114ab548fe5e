"""A study's output folder: refusing to clobber one, clearing one, and what ``--resume`` must find unchanged.

The ``cfg`` these functions take is a ``moopt.study.scheduler.StudyConfig`` (not imported: scheduler imports this module).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from moopt.config import TrialConfig, as_written, shown_value, whole
from moopt.errors import ConfigError
from moopt.journal import JOURNAL, replay
from moopt.model_files import model_digest
from moopt.records import TrialState
from moopt.search.space import SearchSpace
from moopt.study.checkpoint import ENGINE_FILE
from moopt.study.lock import LOCK_FILE, StudyLock

OUR_FILES = (JOURNAL, ENGINE_FILE, "best_config.yaml", "trials_summary.csv", "optimization_plot.png",
             "pareto_front.png", "search_space.yaml", "baseline.json", "study.json")
RESULT_FILES = ("param_importance.csv", "param_importance.png", "correlations.csv", "correlations.png",
                "learning_curves.png", "interaction.png", "refined_space.yaml", "report.html")


def check_writable_dir(out: Path, option: str = "--output_dir") -> None:
    """Refuse, in one line, a folder that cannot be made or written: a file in its place (or in its
    path), or a parent this user cannot write (writes nothing)."""
    where = next((p for p in (out, *out.absolute().parents) if p.exists()), None)
    if where is not None and not where.is_dir():
        what = "is a file, not a folder" if where == out else f"cannot be created: {where} is a file"
        raise ConfigError(f"{option} {out}: {what}")
    if where is not None and not os.access(where, os.W_OK | os.X_OK):
        what = "is not writable" if where == out else f"cannot be created: {where} is not writable"
        raise ConfigError(f"{option} {out}: {what} by this user")
    if where != out:  # the OS may still refuse (a read-only mount, /proc; root passes os.access): make it, then remove it
        missing = [p for p in (out, *out.parents) if not p.exists()]  # the folders this call makes, deepest first
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{option} {out}: cannot be created ({e.strerror})") from None
        for p in missing:  # only empty ones: another study started at the same moment may have made one of them its
            try:          # own (rmtree of a shared new parent once removed that study's journal)
                p.rmdir()
            except OSError:
                break


def check_output_dir(cfg: Any) -> None:
    """Refuse to clobber an existing study unless --resume or --overwrite (writes nothing)."""
    if not str(cfg.output_dir).strip():  # an unset $OUT in a job script: the study would fill the current directory
        raise ConfigError("--output_dir: empty; give the folder the study writes into")
    out = Path(cfg.output_dir)
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    check_writable_dir(out)
    StudyLock(out).check()  # a study running there: refused at once, whatever the flags
    holds_study = (out / JOURNAL).is_file()
    if holds_study and not (cfg.resume or cfg.overwrite):
        raise ConfigError(f"{out}: holds a study already; pass --resume to continue it or --overwrite to replace it"
                          + (f" (an --overwrite stopped before its first trial left the earlier study aside in "
                             f"{out / REPLACED}: --resume puts it back and continues it)"
                             if left_aside(out) is not None else ""))
    if not holds_study and not cfg.overwrite and out.is_dir():
        # files named as a study's but no journal: not moopt's to replace (a failed start would remove them too)
        theirs = sorted(p.name for p in out.iterdir() if p.name in (*OUR_FILES, *RESULT_FILES, "trial_results"))
        if theirs:
            raise ConfigError(f"{out}: holds {', '.join(theirs[:4])}{' ...' if len(theirs) > 4 else ''} but no study "
                              f"journal ({JOURNAL}); moopt would write over them: give another --output_dir, or "
                              "--overwrite to replace them")
    if cfg.resume and holds_study:
        rec = replay(out)
        header = rec.header
        mine = study_fingerprint(cfg)
        theirs = dict(header.get("fingerprint", {}))
        if isinstance(theirs.get("base_model"), str):  # recorded as typed before moopt made a local path absolute
            from moopt.train.models import recorded_name

            theirs["base_model"] = recorded_name(theirs["base_model"])
        if isinstance(theirs.get("fixed"), dict):  # a field added since (its default) is no change
            theirs["fixed"] = json.loads(json.dumps(TrialConfig.from_dict(theirs["fixed"]).to_dict()))
        digests = header.get("data_digest") or {}
        changed = []
        for k in mine:
            if k in ("train_file", "validation_file") and k in digests:
                # the data by content (journaled SHA-256): a moved or renamed copy is the same study, an edited file
                # under the same name is not (the trials before and after would be ranked on different data)
                now = data_digest(mine[k]) if os.path.isfile(mine[k]) else digests[k]
                if now != digests[k]:
                    changed.append(f"--{k} {mine[k]}: its content is not the study's (SHA-256 {digests[k][:12]}..., "
                                   f"now {now[:12]}...)")
            elif k == "base_model" and theirs.get(k) != mine[k] and _same_model_folder(header, cfg):
                pass  # the study's model folder moved (its digest is the journaled one): the same weights
            elif theirs.get(k) != mine[k]:
                changed.append(_difference(k, theirs.get(k), mine[k]))
                if k == "fixed" and isinstance(theirs.get(k), dict):  # which ones: the message named none
                    was, now = TrialConfig.from_dict(theirs[k]).flat(), TrialConfig.from_dict(mine[k]).flat()
                    changed[-1] += ": " + ", ".join(f"{n} {shown_value(was.get(n))} -> {shown_value(now.get(n))}"
                                                    for n in sorted(set(was) | set(now)) if was.get(n) != now.get(n))
        if header.get("model_digest") and getattr(cfg, "model_path", "") and os.path.isdir(cfg.model_path):
            if model_digest(cfg.model_path) != header["model_digest"]:  # a folder retrained in place: same path
                changed.append(f"--base_model {cfg.base_model}: its weights or config.json are not the ones the study "
                               "began on (changed since)")
        if changed:
            raise ConfigError(f"{out}: --resume continues the same study, and this differs from the one it began: "
                              + "; ".join(changed) + f". Start another with a new --output_dir (--warm_start {out} "
                              "seeds it with this one's best), or replace this one with --overwrite")
        trained = sum(not e.taken_from for e in rec.finished.values())
        if cfg.num_trials < trained:
            raise ConfigError(f"--num_trials {cfg.num_trials}: {out} has {trained} trials finished already; give "
                              f"{trained} or more (--resume trains up to --num_trials in all)")


def _same_model_folder(header: dict, cfg: Any) -> bool:
    """Whether --base_model is a local folder holding the weights and config.json the study recorded (its
    ``model_digest``), wherever it is now: a moved project folder is the same model, as moved data files are the same
    data (compared by content)."""
    path = getattr(cfg, "model_path", None) or getattr(cfg, "base_model", None)  # (the CLI checks before resolving it)
    return bool(header.get("model_digest") and path and os.path.isdir(path)
                and model_digest(path) == header["model_digest"])


def _difference(key: str, old: Any, new: Any) -> str:
    """One --resume difference, as a user would name it."""
    if key == "space":
        return "the searched parameters or their ranges (--search_space)"
    if key == "fixed":
        return "the search space's fixed settings (--search_space)"
    if key == "objectives":
        return f"--optimization_objective {','.join(old or [])} -> {','.join(new)}"
    return f"--{key} {old} -> {new}"


def prepare_output_dir(cfg: Any) -> None:
    check_output_dir(cfg)
    out = Path(cfg.output_dir)
    if cfg.overwrite and (out / JOURNAL).is_file():
        set_aside_study(out)


REPLACED = ".moopt_replaced"  # --overwrite's earlier study, until the new one starts a trial


def set_aside_study(out: Path) -> None:
    """--overwrite: the earlier study's files moved into ``out/REPLACED`` (renames, so instant), not removed yet: a
    new study stopped or failed before its first trial puts them back (:func:`restore_study`), its first trial
    removes them (:func:`drop_replaced`). Ctrl-C during the base model's evaluation deleted an 8-trial study."""
    aside = out / REPLACED
    if aside.is_dir():  # an --overwrite killed (kill -9) before it dropped them: what is here is that attempt's
        if replay(out).starts:  # it started trials: it is the study to replace now, the one aside is older
            shutil.rmtree(aside)
        else:  # it started none: the one aside is still the study to keep until this one starts a trial
            discard_study(out, remove_dir=False)
            return
    aside.mkdir()
    for name in (*OUR_FILES, *RESULT_FILES, "trial_results"):
        if os.path.lexists(out / name):
            os.replace(out / name, aside / name)


def left_aside(out: Path) -> int | None:
    """Where an --overwrite was killed (kill -9) before its first trial, the earlier study it set aside is still
    whole: its finished trials' count; else None."""
    if not (out / REPLACED).is_dir() or replay(out).starts:
        return None
    return len(replay(out / REPLACED).finished)


def restore_study(out: Path) -> bool:
    """Put back the study --overwrite set aside (this run's files removed first); whether there was one."""
    aside = out / REPLACED
    if not aside.is_dir():
        return False
    discard_study(out, remove_dir=False)
    for p in aside.iterdir():
        os.replace(p, out / p.name)
    aside.rmdir()
    return True


def drop_replaced(out: Path) -> None:
    """The new study started a trial: the one --overwrite replaces goes."""
    shutil.rmtree(out / REPLACED, ignore_errors=True)


def discard_study(out: Path, remove_dir: bool) -> None:
    """Remove what a study writes (not the lock, which its owner holds); the folder too if we made it
    and nothing else is in it."""
    for name in (*OUR_FILES, *RESULT_FILES):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "trial_results", ignore_errors=True)
    if remove_dir and out.is_dir() and {p.name for p in out.iterdir()} <= {LOCK_FILE}:
        shutil.rmtree(out, ignore_errors=True)


def study_fingerprint(cfg: Any) -> dict[str, Any]:
    """What must not change across --resume (JSON-normalised, so it compares with the journal's)."""
    return json.loads(json.dumps({
        "objectives": list(cfg.objectives.names),
        "space": [(p.name, p.type, p.low, p.high, p.step, [list(v) if isinstance(v, tuple) else v for v in p.values]) for p in cfg.space.params],
        "fixed": cfg.space.fixed.to_dict(),
        "train_file": os.path.abspath(cfg.train_file),
        "validation_file": os.path.abspath(cfg.validation_file),
        "base_model": cfg.base_model,
        "seed": cfg.seed,
    }))


def config_key(cfg: TrialConfig) -> str:
    """A configuration's identity: two trials with the same key train the same thing."""
    return json.dumps(cfg.to_dict(), sort_keys=True)


# The libraries a trial's numbers depend on besides moopt's own training code (their versions are journaled).
# peft is not among them: moopt trains and saves its LoRA itself (moopt.train.lora); tokenizers cuts every example
TRAINING_LIBRARIES = ("torch", "transformers", "tokenizers", "bitsandbytes", "triton")


def training_code() -> dict[str, str]:
    """What a trial's result depends on besides its configuration, data and device: moopt's training code (SHA-256
    of the sources of moopt.train, moopt.config and the kernels, so an edit between two studies counts, not only a
    release) and the versions of the libraries it trains with. Journaled in a study's header; --warm_start takes
    over a trial only when they are the same."""
    import hashlib
    from importlib import metadata

    import moopt_kernels

    import moopt
    import moopt.train

    h = hashlib.sha256()
    files = [Path(moopt.__file__).with_name("config.py")]
    for pkg in (moopt.train, moopt_kernels):
        files += sorted(Path(pkg.__file__).parent.rglob("*.py"))
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    out = {"moopt": moopt.__version__, "code": h.hexdigest()[:16]}
    for lib in TRAINING_LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


def training_code_changes(theirs: dict | None) -> str:
    """What differs between a study's journaled :func:`training_code` and this moopt's ("" when nothing):
    "torch version (2.12.0 vs 2.13.0), moopt training code"."""
    if theirs is None:
        return "moopt training code (that study predates its record)"
    mine = training_code()
    # what this moopt records: a library an older study recorded and this one no longer tracks (peft) is no change,
    # nor one that study did not record (tokenizers, tracked since): unknown, not different
    tracked = {"moopt", "code", *TRAINING_LIBRARIES}
    changed = [k for k in sorted(set(theirs) | set(mine)) if k in tracked and k in theirs and theirs.get(k) != mine.get(k)]
    return ", ".join([f"{k} version ({theirs.get(k, 'none')} vs {mine.get(k, 'none')})" for k in changed if k != "code"]
                     + ["moopt training code"] * ("code" in changed))


def kernel_path(kernels: str, device: str) -> str:
    """The LoRA kernel path a trial takes on ``device`` ("cpu" or "cuda") under --kernels."""
    if kernels != "auto":
        return kernels
    from moopt_kernels import resolve_backend  # (triton installed, the interpreter off: what a trial's auto runs)

    return resolve_backend("auto", device)


def data_digest(path: str | Path) -> str:
    """SHA-256 of a data file: what says a later study trains and validates on the same data."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def reusable_trials(cfg: Any, eval_length: int, digests: dict[str, str],
                    device: str = "cpu") -> tuple[dict[str, tuple[int, Any, list]], str]:
    """The COMPLETE trials of the --warm_start study that this study may take over instead of training them again
    when it proposes the same configuration: only where everything else a trial's result depends on is the same
    (base model and its hub commit, the train and validation files' contents, the seed, the validation length,
    moopt's training code and the libraries' versions, the LoRA kernel path, the kind of device and the dtype the
    trial would run in there: ``device`` "cpu" or "cuda") and it measured every objective within
    --memory_constraint. ``{config_key: (its number, its end, its rung events)}``, and why
    none may be taken when that is so (else "")."""
    from datetime import datetime

    from moopt.config import resolve_dtype

    src = Path(cfg.warm_start)
    rec = replay(src)
    h, fp = rec.header, rec.header.get("fingerprint") or {}
    differ = []
    if (fp.get("base_model") != cfg.base_model and not _same_model_folder(h, cfg)) \
            or h.get("model_revision") != cfg.model_revision:
        differ.append("base model")
    elif h.get("model_digest") and getattr(cfg, "model_path", None) and model_digest(cfg.model_path) != h["model_digest"]:
        differ.append("base model weights (the folder changed since)")
    for k in ("train_file", "validation_file"):
        theirs = (h.get("data_digest") or {}).get(k)
        if theirs is None:  # a study from before digests: the same file, not modified since that study began
            try:
                same = (fp.get(k) == os.path.abspath(getattr(cfg, k)) and os.path.getmtime(fp[k])
                        < datetime.fromisoformat(h["created"]).timestamp())
            except (KeyError, OSError, ValueError):
                same = False
        else:
            same = theirs == digests.get(k)
        if not same:
            differ.append(k.replace("_file", " data"))
    if fp.get("seed") != cfg.seed:
        differ.append("seed")
    if int(h.get("eval_max_seq_length") or 0) != eval_length:
        differ.append(f"validation length ({h.get('eval_max_seq_length') or 'per trial'} vs {eval_length} tokens)")
    if changed := training_code_changes(h.get("training_code")):
        differ.append(changed)
    theirs, mine = kernel_path(h.get("kernels", "auto"), device), kernel_path(getattr(cfg, "kernels", "auto"), device)
    if theirs != mine:
        differ.append(f"LoRA kernels ({theirs} vs {mine})")
    if differ:
        return {}, ", ".join(differ)
    out: dict[str, tuple[int, Any, list]] = {}
    rungs = [r for r in rec.rungs if h.get("pruning_factor") == cfg.pruning_factor]
    for n, e in rec.finished.items():
        m = e.metrics or {}
        if (e.state != TrialState.COMPLETE or not e.config or not all(k in m for k in cfg.objectives.names)
                or (cfg.memory_constraint_gb and m.get("peak_memory_gb", 0) > cfg.memory_constraint_gb)):
            continue
        try:
            tcfg = TrialConfig.from_dict(e.config)
        except ConfigError:
            continue
        ran_on = str((rec.starts.get(n) or {}).get("device") or "").split(":")[0]
        if ran_on != device or e.dtype != resolve_dtype(tcfg.model.dtype, device):  # another device, other numerics
            continue
        out.setdefault(config_key(tcfg), (n, e, [r for r in rungs if r["number"] == n]))
    return out, ""


def warm_start_configs(output_dir: str, limit: int = 24) -> list[TrialConfig]:
    """An earlier study's best trials, best first: its Pareto front by weighted score, then the
    other COMPLETE trials by score."""
    from moopt.config import load_trial_config
    from moopt.report.table import load_study

    data = load_study(output_dir)
    t = data.table
    if not len(t) or "score" not in t:
        return []
    done = t[t.state == TrialState.COMPLETE].sort_values(["pareto", "score"], ascending=[False, False])
    out = Path(output_dir) / "trial_results"
    from moopt.report.table import best_config

    # each trial's config.yaml, or the journal's copy where trial_results/ was removed (report and --resume work so)
    return [load_trial_config(out / f"trial_{n}" / "config.yaml") if (out / f"trial_{n}" / "config.yaml").is_file()
            else TrialConfig.from_dict(best_config(output_dir, int(n))) for n in done.number[:limit]]


def space_to_yaml(space: SearchSpace) -> dict[str, Any]:
    """The study's search_space.yaml: each searched parameter's spec, and each value the space fixed (those that are
    not moopt's defaults), so that the file given again as --search_space searches the same configurations."""
    out: dict[str, dict[str, Any]] = {}
    for p in space.params:
        section, key = p.name.split(".", 1)
        if p.type == "categorical":
            spec = {"type": p.type, "values": [list(v) if isinstance(v, tuple) else whole(p.name, v)  # 32, not 32.0
                                               for v in p.values]}
            if p.ordered is not None:  # as the file said it; else inferred again on reading
                spec["ordered"] = p.ordered
        else:
            spec = {"type": p.type, "min": p.low, "max": p.high} | ({"step": p.step} if p.type == "int" and p.step != 1 else {})
        out.setdefault(section, {})[key] = spec
    searched = {p.name for p in space.params}
    defaults, fixed = TrialConfig().to_dict(), as_written(space.fixed.to_dict())  # epochs 2, not 2.0, as written
    for section, body in fixed.items():  # after the searched ones: their order is the space's (the study's fingerprint)
        for key, value in body.items():
            if f"{section}.{key}" not in searched and value != defaults.get(section, {}).get(key):
                out.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    return out
