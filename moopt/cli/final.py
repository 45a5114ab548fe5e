"""``moopt train``: the final adapter with the chosen configuration, tested on held-out data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from moopt.config import TrialConfig

GAP_WARN = 0.10  # relative test-vs-validation loss gap that is flagged as possible overfitting to validation


class ConsoleReporter:
    """moopt.train.recipe.Reporter on the console: a line each 10% of the optimizer steps, each phase;
    nothing is pruned."""

    def __init__(self, console):
        self.console, self.last = console, -1

    def progress(self, step: int, total: int, loss: float, tokens_per_s: float | None = None,
                 step_s: float | None = None) -> None:
        pct = int(100 * step / total)
        if pct // 10 != self.last // 10 or step == total:
            tps = f"  {tokens_per_s:.0f} tok/s" if tokens_per_s else ""
            self.console.print(f"  step {step}/{total}  train_loss {loss:.4f}{tps}")
            self.last = pct

    def rung(self, step: int, metrics: dict[str, float], rung: int) -> bool:
        return True

    def phase(self, name: str, detail: str = "") -> None:
        if name != "training":  # its steps are printed
            self.console.print(f"  {name}" + (f" ({detail})" if detail else "") + " ...")

    def heartbeat(self, done: int, total: int) -> None:
        pass


def study_of(config_path: str | Path) -> tuple[Path | None, int | None]:
    """(the study folder, the trial) a config file comes from: a study's best_config.yaml (trial None: the
    chosen one) or a trial's own trial_results/trial_N/config.yaml; (None, None) for any other file."""
    from moopt.journal import JOURNAL

    here = Path(config_path).resolve().parent
    if (here / JOURNAL).is_file():
        return here, None
    study = here.parent.parent
    if here.parent.name == "trial_results" and here.name.startswith("trial_") and (study / JOURNAL).is_file():
        try:
            return study, int(here.name.removeprefix("trial_"))
        except ValueError:
            pass
    return None, None


OVERFIT_TRIALS = 10  # a study picks from this many trials or more before a test gap is blamed on the search


def _trials_searched(config_path: str | Path) -> int:
    """How many trials of the study the config comes from ended COMPLETE (what the best was picked from)."""
    out, _ = study_of(config_path)
    if out is None:
        return 0
    from moopt.journal import replay

    return sum(str(e.state) == "COMPLETE" for e in replay(out).finished.values())


def study_validation_metrics(config_path: str | Path) -> dict[str, float] | None:
    """If the config is a study's (its best_config.yaml, or a trial's config.yaml), the validation metrics
    of the trial it holds (the chosen one for best_config.yaml), when that trial completed."""
    out, number = study_of(config_path)
    if out is None:
        return None
    from moopt.report.table import load_study

    data = load_study(out)
    number = data.best if number is None else number
    rows = data.table[(data.table.number == number) & (data.table.state == "COMPLETE")] if len(data.table) else []
    if number is None or not len(rows):
        return None
    row = rows.iloc[0]
    keys = ("eval_loss", "eval_accuracy", "eval_perplexity")
    return {k: float(row.get(f"values_{k}", row.get(k))) for k in keys if f"values_{k}" in row or k in row}


ATTEMPT = "attempt.partial"  # where a final run writes until it has trained (then its files move up)
FAILED = "failed_attempt"  # a failed run's files, where a final model trained before is kept


def _move_into(work: Path, out: Path) -> None:
    """Move ``work``'s files into ``out``, each replacing the one of its name there; remove ``work``."""
    for item in work.iterdir():
        dest = out / item.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
        item.rename(dest)
    work.rmdir()


def train_final(cfg: TrialConfig, config_path: str, model_path: str, kw: dict[str, Any]) -> bool:
    """Train ``cfg`` in full on ``kw``'s data, test it, and print the metrics. Its files go to ``output_dir`` only
    once it trained (a failed --overwrite leaves the earlier final model whole); False when it failed."""
    from rich.markup import escape

    from moopt.console import study_console
    from moopt.records import TrialSpec, TrialState
    from moopt.train.recipe import run_trial
    from moopt.yamlio import write_json, write_yaml

    console = study_console()
    out = Path(kw["output_dir"]).absolute()
    out.mkdir(parents=True, exist_ok=True)
    # the run writes into a folder of its own: an earlier final model (--overwrite) is replaced only by one that trained
    work = out / ATTEMPT
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    write_yaml(work / "config.yaml", cfg.to_yaml())
    spec = TrialSpec(number=0, config=cfg, base_model=model_path, train_file=os.path.abspath(kw["train_file"]),
                     validation_file=os.path.abspath(kw["validation_file"]), output_dir=str(work), seed=kw["seed"],
                     kernels=kw["kernels"], test_file=os.path.abspath(kw["test_file"]) if kw.get("test_file") else None,
                     eval_max_seq_length=kw.get("eval_max_seq_length", 0), hub_id=kw.get("hub_id"), hub_revision=kw.get("hub_revision"))
    if cfg.model.quantization == "none":  # as a study does (Study.prepare_model): moopt's own conversion
        from moopt.config import resolve_dtype  # loads from its copy in the trial's dtype, not converted at load
        from moopt.train.models import prepare_dtype_copy
        from moopt.train.recipe import pick_device

        prepare_dtype_copy(model_path, resolve_dtype(cfg.model.dtype, pick_device("auto").type))
    # the study's figures for the trial this configuration is, read now: a study still running may name another trial
    # best by the time training ends (its "study val" column showed a trial other than the one trained)
    study_val = study_validation_metrics(config_path)
    searched = _trials_searched(config_path) if study_val else 0
    console.print(f"Training the final adapter ({cfg.training.num_train_epochs:g} epoch(s)) ...")
    res = run_trial(spec, ConsoleReporter(console))
    if res.state != TrialState.COMPLETE:
        earlier = (out / "final_metrics.json").is_file()
        if earlier:  # the model trained before stays whole; this attempt's files are kept beside it
            shutil.rmtree(out / FAILED, ignore_errors=True)
            work.rename(out / FAILED)
            where = f"{out / FAILED}/metrics.json; the final model trained before in {out} is untouched"
        else:
            _move_into(work, out)
            where = f"{out}/metrics.json"
        console.print(f"[red]Training failed:[/] {escape(str(res.error))}  (see {escape(where)})")
        return False
    # the tokenizer beside the adapter, as TRL saves it: its chat template is the one the examples were rendered with
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(model_path), local_files_only=True).save_pretrained(work / "adapter")
    (out / "final_metrics.json").unlink(missing_ok=True)  # the marker of a whole final model: written last
    _move_into(work, out)
    shutil.rmtree(out / FAILED, ignore_errors=True)
    m = res.metrics
    rows = [("loss", "eval_loss", "test_loss"), ("accuracy", "eval_accuracy", "test_accuracy"),
            ("perplexity", "eval_perplexity", "test_perplexity")]
    tested = "test_loss" in m  # --test_file given
    console.print(f"\n{'metric':<12}{'validation':>12}" + (f"{'test':>12}" if tested else "")
                  + (f"{'study val':>12}" if study_val else ""))
    for name, v, t in rows:
        line = f"{name:<12}{m[v]:>12.4f}" + (f"{m[t]:>12.4f}" if tested else "")
        if study_val and v in study_val:
            line += f"{study_val[v]:>12.4f}"
        console.print(line)
    gap = (m["test_loss"] - m["eval_loss"]) / max(abs(m["eval_loss"]), 1e-12) if tested else None
    warning = None
    if gap is not None and gap > GAP_WARN:
        warning = f"test loss is {gap:.0%} above validation loss: " + (
            "the search may have overfit the validation set; consider a larger validation set or fewer trials"
            if searched >= OVERFIT_TRIALS else
            f"the study picked from {searched} trial(s), too few to overfit the validation set: the two sets differ "
            "(on small sets a gap of this size can be chance); a larger validation set measures more surely"
            if study_val else "the validation set may not represent the test set")
        console.print(f"[yellow]Warning:[/] {escape(warning)}")
    write_json(out / "final_metrics.json", {"validation": {k: m[k] for _, k, _ in rows},
                                            "test": {k: m[k] for _, _, k in rows} if tested else None,
                                            "study_validation": study_val,
                                            "relative_gap": gap, "warning": warning,
                                            "peak_memory_gb": m.get("peak_memory_gb"), "adapter": str(out / "adapter"),
                                            # what it trained from: with the config, enough to train it again
                                            "base_model": kw["base_model"], "seed": kw["seed"], "kernels": kw["kernels"],
                                            "train_file": os.path.abspath(kw["train_file"]),
                                            "validation_file": os.path.abspath(kw["validation_file"])})
    console.print(f"Adapter (PEFT format): {out / 'adapter'}")
    return True
