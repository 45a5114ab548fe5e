"""``moopt train``: the final adapter with the chosen configuration, tested on held-out data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from moopt.config import TrialConfig, shown_value
from moopt.console import plural
from moopt.errors import ConfigError

GAP_WARN = 0.10  # relative test-vs-validation loss gap that is flagged as possible overfitting to validation


QUIET_S = 30.0  # a line at least this often while training or evaluating, whatever the 10% steps


class ConsoleReporter:
    """moopt.train.recipe.Reporter on the console: a line each 10% of the optimizer steps, and one whenever
    QUIET_S passed without one (a large data set's 10% can take hours), with the elapsed time, tokens per
    second after the first step (its warm-up is not the rate) and the time left; during an evaluation, a
    line each QUIET_S. Nothing is pruned."""

    def __init__(self, console, clock=None):
        import time

        self.console, self.clock = console, clock or time.monotonic
        self.last_pct, self.start = -1, self.clock()
        self.last_line = self.start
        self.busy = 0.0  # seconds in steps, as the recipe counts them (its tokens/s is tokens over this)
        self.first: tuple[float, float] | None = None  # (busy seconds, tokens) after step 1

    def _say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)
        self.last_line = self.clock()

    def progress(self, step: int, total: int, loss: float, tokens_per_s: float | None = None,
                 step_s: float | None = None) -> None:
        self.busy += step_s or 0.0
        tokens = (tokens_per_s or 0.0) * self.busy
        if self.first is None:
            self.first = (self.busy, tokens)
        pct = int(100 * step / total)
        now = self.clock()
        if pct // 10 == self.last_pct // 10 and step != total and step != 1 and now - self.last_line < QUIET_S:
            return
        self.last_pct = pct
        line = f"  step {step}/{total}  train_loss {loss:.4f}"
        busy, done = self.busy - self.first[0], tokens - self.first[1]
        if step > 1 and busy > 0:
            line += f"  {done / busy:.0f} tok/s" if done > 0 else ""
            if step < total:
                line += f"  ~{_clock(busy / (step - 1) * (total - step))} left"
        self._say(line + f"  ({_clock(now - self.start)} in)")

    def rung(self, step: int, metrics: dict[str, float], rung: int) -> bool:
        return True

    def phase(self, name: str, detail: str = "") -> None:
        if name != "training":  # its steps are printed
            self._say(f"  {name}" + (f" ({detail})" if detail else "") + " ...")

    def heartbeat(self, done: int, total: int) -> None:
        if self.clock() - self.last_line >= QUIET_S and done < total:
            self._say(f"    evaluated {done}/{total} batches  ({_clock(self.clock() - self.start)} in)")


def _clock(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def study_of(config_path: str | Path) -> tuple[Path | None, int | None]:
    """(the study folder, the trial) a config file comes from: a study's best_config.yaml (trial None: the
    chosen one) or a trial's own trial_results/trial_N/config.yaml; (None, None) for any other file."""
    from moopt.journal import JOURNAL

    here = Path(config_path).resolve().parent
    if (here / JOURNAL).is_file():
        from moopt.journal import replay

        if names_another_study(copied_header(config_path), replay(here).header):  # a copy put into another study's
            return None, None  # folder: its own first lines say which study it comes from (it took the folder's data)
        return here, None
    study = here.parent.parent
    if here.parent.name == "trial_results" and here.name.startswith("trial_") and (study / JOURNAL).is_file():
        try:
            return study, int(here.name.removeprefix("trial_"))
        except ValueError:
            pass
    return None, None


REPEATS_WITH = "# elsewhere repeats the trial with: "  # best_config.yaml's third line (best_config_header)


def names_another_study(own: dict, header: dict) -> bool:
    """Whether a config's first lines (copied_header) name another base model or data file than the journal
    ``header`` of the study in whose folder the config lies."""
    fp, mine = header.get("fingerprint") or {}, own.get("fingerprint") or {}
    return bool(own) and (("base_model" in own and own["base_model"] != header.get("base_model"))
                          or any(mine[f] != fp.get(f) for f in ("train_file", "validation_file") if f in mine))


def copied_header(config_path: str | Path) -> dict[str, Any]:
    """For a best_config.yaml kept outside its study's folder (no journal beside it): the study's choices its opening
    comment names (``--base_model ... --train_file ... --seed N``; moopt.report.results.best_config_header), as a
    journal header's keys, with ``copied_from``; {} for a file without that line in its opening comment block. (A copy
    said "--train_file: required (--config is not a study's best_config.yaml ...)" although its first lines named
    the files.) A line there that cannot be split as a shell would (an unbalanced quote) is a ConfigError."""
    import shlex

    line = None
    try:
        with open(config_path, encoding="utf-8-sig") as f:  # (-sig: a copy an editor saved with a BOM)
            for n, x in enumerate(f, 1):
                if x.startswith(REPEATS_WITH):
                    line = (n, x[len(REPEATS_WITH):])
                    break
                if x.strip() and not x.lstrip().startswith("#"):  # the opening comment block ends
                    break
    except (OSError, UnicodeDecodeError):
        return {}
    if line is None:
        return {}
    try:
        words = shlex.split(line[1])
    except ValueError as e:
        raise ConfigError(f"{config_path}: line {line[0]} (the arguments that repeat the trial) cannot be read ({e}); "
                          "fix it, or give --base_model, --train_file and --validation_file") from None
    args: dict[str, str] = {}
    for k, v in zip(words, [*words[1:], None]):  # --key value; a --flag without a value stands alone
        if k.startswith("--") and v is not None and not v.startswith("--"):
            args[k[2:]] = v
    if not args:
        return {}
    header: dict[str, Any] = {"copied_from": str(config_path),
                              "fingerprint": {f: args[f] for f in ("train_file", "validation_file") if f in args}}
    if "base_model" in args:
        header["base_model"] = args["base_model"]
    if args.get("seed", "").isdigit():
        header["fingerprint"]["seed"] = int(args["seed"])
    if "kernels" in args:
        header["options"] = {"kernels": args["kernels"]}
    if "revision" in args:
        header["model_revision"] = args["revision"]
    if args.get("eval_max_seq_length", "").isdigit():
        header["eval_max_seq_length"] = int(args["eval_max_seq_length"])
    return header


OVERFIT_TRIALS = 10  # a study picks from this many trials or more before a test gap is blamed on the search


def _trials_searched(config_path: str | Path) -> int:
    """How many trials of the study the config comes from ended COMPLETE (what the best was picked from)."""
    out, _ = study_of(config_path)
    if out is None:
        return 0
    from moopt.journal import replay

    return sum(str(e.state) == "COMPLETE" for e in replay(out).finished.values())


def differences(cfg: TrialConfig, kw: dict[str, Any], record, number: int | None) -> list[str]:
    """How this run differs from the study's trial ``number`` as the study ran it (its configuration, seed, kernels,
    base model, validation file and the length validation was cut at): its metrics are expected to match only where
    none differs."""
    end = record.ends.get(number) if record is not None and number is not None else None
    if end is None:
        return []
    h = record.header
    out = []
    if end.config:
        theirs, ours = TrialConfig.from_dict(end.config).flat(), cfg.flat()
        out += [f"{k} {shown_value(ours.get(k))} vs {shown_value(theirs.get(k))}" for k in sorted(set(ours) | set(theirs))
                if ours.get(k) != theirs.get(k)]
    fp = h.get("fingerprint") or {}
    if fp.get("seed") is not None and int(fp["seed"]) != int(kw["seed"]):
        out.append(f"seed {kw['seed']} vs {fp['seed']}")
    import torch

    from moopt.study.outdir import kernel_path

    ran = str((record.starts.get(number) or {}).get("device") or "")
    theirs_dev = "cuda" if ran.startswith("cuda") else "cpu" if ran else None
    ours_dev = "cuda" if torch.cuda.is_available() else "cpu"
    if theirs_dev and theirs_dev != ours_dev:  # other kernels, dtype and numerics
        out.append(f"device {ours_dev} vs {theirs_dev}")
    threads = int((record.starts.get(number) or {}).get("threads") or 0)  # (0: a study from before it was journaled)
    ours_threads = int(kw.get("threads") or 0) or torch.get_num_threads()
    if theirs_dev == ours_dev == "cpu" and threads and threads != ours_threads:  # one of --parallel_trials 3
        out.append(f"CPU threads {ours_threads} vs {threads} (sums in another order: the last digits differ)")
    kernels = (h.get("options") or {}).get("kernels") or "auto"
    # the path each takes (auto is torch on a CPU): --kernels torch here repeats an auto trial on a CPU
    if kernel_path(kw["kernels"], ours_dev) != kernel_path(kernels, theirs_dev or ours_dev):
        out.append(f"kernels {kernel_path(kw['kernels'], ours_dev)} vs {kernel_path(kernels, theirs_dev or ours_dev)}")
    revision = h.get("model_revision")
    if revision and kw.get("hub_revision") and kw["hub_revision"] != revision:
        out.append(f"hub commit {kw['hub_revision'][:12]} vs {revision[:12]}")
    if h.get("base_model") and kw["base_model"] != h["base_model"] and not kw.get("same_weights"):
        out.append(f"base model {kw['base_model']} vs {h['base_model']}")
    val = fp.get("validation_file")
    if val and os.path.abspath(kw["validation_file"]) != os.path.abspath(val):
        out.append(f"validation file {kw['validation_file']} vs {val}")
    at = int(h.get("eval_max_seq_length") or 0)
    if at and kw.get("eval_max_seq_length") and int(kw["eval_max_seq_length"]) != at:
        out.append(f"validation cut at {kw['eval_max_seq_length']} tokens vs {at}")
    return out


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
ASIDE = ATTEMPT + ".final_metrics.json"  # the attempt's final_metrics.json while the other files move in
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
    # the run writes into a folder of its own: an earlier final model (--overwrite) is replaced only by one that trained
    work = out / ATTEMPT
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    write_yaml(work / "config.yaml", cfg.to_yaml())
    spec = TrialSpec(number=0, config=cfg, base_model=model_path, train_file=os.path.abspath(kw["train_file"]),
                     validation_file=os.path.abspath(kw["validation_file"]), output_dir=str(work), seed=kw["seed"],
                     kernels=kw["kernels"], test_file=os.path.abspath(kw["test_file"]) if kw.get("test_file") else None,
                     eval_max_seq_length=kw.get("eval_max_seq_length", 0), hub_id=kw.get("hub_id"), hub_revision=kw.get("hub_revision"),
                     threads=int(kw.get("threads") or 0))
    if cfg.model.quantization == "none":  # as a study does (Study.prepare_model): moopt's own conversion
        from moopt.config import resolve_dtype  # loads from its copy in the trial's dtype, not converted at load
        from moopt.train.models import prepare_dtype_copy
        from moopt.train.recipe import pick_device

        prepare_dtype_copy(model_path, resolve_dtype(cfg.model.dtype, pick_device("auto").type))
    # the study's figures for the trial this configuration is, read now: a study still running may name another trial
    # best by the time training ends (its "study val" column showed a trial other than the one trained)
    study_val = study_validation_metrics(config_path)
    searched = _trials_searched(config_path) if study_val else 0
    differ = kw.get("differs_from_trial") or []
    trial_no = kw.get("study_trial")
    if study_val and differ:  # its figures are the trial's as the study ran it: not a reproduction to compare with
        console.print(f"Note: this run differs from trial {trial_no} of the study in {'; '.join(differ)}: its validation "
                      f"eval_loss {study_val.get('eval_loss', float('nan')):.4f} is not expected to match, so it is not "
                      "shown beside this run's", markup=False, highlight=False)
    console.print(f"Training the final adapter ({plural(cfg.training.num_train_epochs, 'epoch')}) ...")
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
    m = res.metrics
    rows = [("loss", "eval_loss", "test_loss"), ("accuracy", "eval_accuracy", "test_accuracy"),
            ("perplexity", "eval_perplexity", "test_perplexity")]
    tested = "test_loss" in m  # --test_file given
    gap = (m["test_loss"] - m["eval_loss"]) / max(abs(m["eval_loss"]), 1e-12) if tested else None
    warning = None
    if gap is not None and gap > GAP_WARN:
        warning = f"test loss is {gap:.0%} above validation loss: " + (
            "the search may have overfit the validation set; consider a larger validation set or fewer trials"
            if searched >= OVERFIT_TRIALS else
            f"the study picked from {plural(searched, 'trial')}, too few to overfit the validation set: the two sets differ "
            "(on small sets a gap of this size can be chance); a larger validation set measures more surely"
            if study_val else "the validation set may not represent the test set")
    # every file is written in the attempt's folder first (a full disk fails there, the earlier model whole); then
    # they move in, final_metrics.json, the marker of a whole final model, last
    write_json(work / "final_metrics.json", {"validation": {k: m[k] for _, k, _ in rows},
                                             "test": {k: m[k] for _, _, k in rows} if tested else None,
                                             "study_validation": study_val, "study_trial": trial_no,
                                             "differs_from_study_trial": differ,
                                             "relative_gap": gap, "warning": warning,
                                             "peak_memory_gb": m.get("peak_memory_gb"), "adapter": str(out / "adapter"),
                                             # what it trained from: with the config, enough to train it again
                                             "base_model": kw["base_model"], "seed": kw["seed"], "kernels": kw["kernels"],
                                             "train_file": os.path.abspath(kw["train_file"]),
                                             "validation_file": os.path.abspath(kw["validation_file"]),
                                             "test_file": os.path.abspath(kw["test_file"]) if kw.get("test_file") else None})
    (work / "final_metrics.json").rename(out / ASIDE)  # out of the folder until the rest is in
    kw["_replacing"] = True  # from here an interruption leaves a mix: said so (cli._train_locked)
    (out / "final_metrics.json").unlink(missing_ok=True)
    _move_into(work, out)
    (out / ASIDE).rename(out / "final_metrics.json")
    kw["_replacing"] = False
    shutil.rmtree(out / FAILED, ignore_errors=True)
    shown = study_val if study_val and not differ else None
    console.print(f"\n{'metric':<12}{'validation':>12}" + (f"{'test':>12}" if tested else "")
                  + (f"{'study val':>12}" if shown else ""))
    for name, v, t in rows:
        line = f"{name:<12}{m[v]:>12.4f}" + (f"{m[t]:>12.4f}" if tested else "")
        if shown and v in shown:
            line += f"{shown[v]:>12.4f}"
        console.print(line)
    if warning:
        console.print(f"[yellow]Warning:[/] {escape(warning)}")
    base = kw.get("hub_id") or model_path
    quant = cfg.model.quantization
    console.print(f"\nAdapter (PEFT format, with the tokenizer): {out / 'adapter'}", markup=False, highlight=False)
    console.print(f"Metrics: {out / 'final_metrics.json'}; base model: {base}"
                  + (f" (trained on its {quant} quantisation: load the base the same way to serve it as trained)"
                     if quant != "none" else ""), markup=False, highlight=False)
    console.print(f"Load it: AutoPeftModelForCausalLM.from_pretrained({str(out / 'adapter')!r}) (peft), or "
                  "PeftModel.from_pretrained(base, adapter) and merge_and_unload() for one merged model",
                  markup=False, highlight=False)
    return True
