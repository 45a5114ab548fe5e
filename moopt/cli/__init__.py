"""The ``moopt`` command line. Heavy imports happen inside commands so ``moopt --help`` is instant.

Every user error becomes one line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from pathlib import Path

import click

from moopt.console import plural
from moopt.errors import FULL_DISK_ERRNOS, ConfigError


def opt(name: str, *args, **kwargs):
    """An option accepted with both spellings: ``--base_model`` and ``--base-model``."""
    dashed = name.replace("_", "-")
    names = [f"--{name}"] + ([f"--{dashed}"] if dashed != name else [])
    return click.option(*names, name, *args, **kwargs)


class FiniteRange(click.FloatRange):
    """click's FloatRange, without nan and inf (a comparison with nan is False, so FloatRange lets it through:
    ``--time_budget_hours nan`` ran a study with no time for a trial)."""

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return v


SEED_MAX = 2**32 - 1  # numpy's and torch's seeds (a negative one was a traceback, a huge one failed every trial)


def fail(msg: str) -> None:
    """Each problem one line ("Error: file: key: rule"), exit 2: several found at once (a space file's) are listed."""
    for line in str(msg).splitlines() or [""]:
        click.echo(f"Error: {line}", err=True)
    sys.exit(2)


class _OneLineErrors:
    """A usage error (a value out of range, a misspelt or missing option) in one line, as moopt's own errors are:
    "Error: Invalid value for '--num_trials' / '--num-trials': 0 is not in the range x>=1. See moopt optimize --help.",
    exit 2; click printed the usage, a hint and a blank line above it. ``moopt`` alone still prints its help."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # `moopt` alone: its help, as click prints it
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            said = " ".join(e.format_message().split())
            # click's type names: "'ten' is not a valid integer range" (an IntRange) means "not an integer"
            said = said.replace("is not a valid integer range", "is not a valid integer").replace(
                "is not a valid float range", "is not a valid number").replace("is not a valid float", "is not a valid number")
            hint = f" See {e.ctx.command_path if e.ctx is not None else self._path(args, prog_name)} --help."
            click.echo(f"Error: {said}{'' if said.endswith(('.', '?', '.)', '?)')) else '.'}{hint}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)  # (--help and --version return 0)

    def _path(self, args, prog_name) -> str:
        """The command path for an error click gives no context for ("Option '--output_dir' requires an argument.")."""
        args = list(sys.argv[1:] if args is None else args)
        try:
            prog = prog_name or click.utils._detect_program_name()
        except Exception:  # noqa: BLE001 - a private helper of click's: its name as installed otherwise
            prog = "moopt"
        sub = args[0] if isinstance(self, click.Group) and args and args[0] in self.commands else None
        return f"{prog} {sub}" if sub else prog


class OneLineCommand(_OneLineErrors, click.Command):
    pass


class OneLineGroup(_OneLineErrors, click.Group):
    command_class = OneLineCommand


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="moopt")
def main() -> None:
    """moopt: multi-objective, memory-aware hyperparameter search for LoRA fine-tuning of Llama models."""
    from moopt.memory.rss import bound_kernel_caches

    bound_kernel_caches()  # moopt train trains in this process (moopt.memory.rss)


@main.command(short_help="Search LoRA hyperparameters for a model on your data (writes --output_dir).")
@opt("base_model", default="smollm2-135m", show_default=True,
     help="Hub id (owner/name; downloaded once into the HF cache, HF_TOKEN for gated ones), local HF folder, a .gguf file, or the alias smollm2-135m.")
@opt("train_file", default=None, type=click.Path(), help="Training data: JSONL, a JSON array or Parquet; records text | prompt+completion | instruction+input+output | messages.  [required, except with --resume]")
@opt("validation_file", default=None, type=click.Path(), help="Validation data (same formats); the objectives are measured on it.  [required, except with --resume]")
@opt("output_dir", required=True, type=click.Path(), help="Where the study, its trials and its results are written.")
@opt("num_trials", default=10, show_default=True, type=click.IntRange(min=1), help="Trials: this many, unless the time budget ends first or the space holds fewer configurations (said at the start); configurations the memory gate rules out untrained count among them (INFEASIBLE); trials --warm_start takes over with their results come on top.")
@opt("optimization_objective", default="eval_loss", show_default=True,
     help="eval_loss | eval_accuracy | eval_perplexity | peak_memory_gb, or multi:a,b[,...].")
@opt("optimization_weights", default=None,
     help="Comma-separated weights (>= 0) for multi objectives; they pick the single best trial from the Pareto front. Default: equal.")
@opt("search_space", default=None, type=click.Path(), help="Search space YAML (sections training/lora/data/model). Default: a built-in space.")
@opt("time_budget_hours", default=None, type=FiniteRange(min=0, min_open=True), help="Wall-clock budget in hours; no trial starts that cannot finish in it. Default: none.")
@opt("pruning_factor", default=None, type=FiniteRange(min=1.5, max=10),
     help="Successive-halving factor eta, 1.5 to 10 (e.g. 2): rungs at 1/eta^k of each trial's optimizer steps, from >= 1/10 up to 1/eta "
          "(eta 2: 1/8, 1/4, 1/2); at each rung a trial goes on only if in the top 1/eta by Pareto rank, then crowding, "
          "and (from 1/5 on) only if its optimistic end is not dominated by a completed trial. Default: no pruning.")
@opt("parallel_trials", default=1, show_default=True, type=click.IntRange(min=1), help="Trials run at once, one process each: on CPU the cores are split; on GPUs each goes where its memory estimate fits (several may share one).")
@opt("memory_constraint", default=None, type=FiniteRange(min=0, min_open=True), help="Memory budget per trial, GiB (GPU memory on CUDA, peak RSS on CPU). Default: none (on GPUs, 95% of the largest one's memory: a configuration clearly over it is not trained).")
@opt("kernels", default="auto", show_default=True, type=click.Choice(["auto", "triton", "torch"]),
     help="LoRA kernel path: triton (fused, CUDA), torch (plain PyTorch), auto (triton on CUDA, torch on CPU).")
@opt("executor", default="local", show_default=True, type=click.Choice(["local", "ray"]),
     help="local: trials in worker processes on this machine; ray: each trial a Ray task on a local instance "
     "or a cluster (--ray_address), on GPUs asking for the share of a GPU its memory estimate needs.")
@opt("ray_address", default=None, help="Ray cluster address (auto | host:port), with --executor ray.")
@opt("seed", default=42, show_default=True, type=click.IntRange(0, SEED_MAX),
     help="Seed of the search, LoRA initialisation and data order.")
@opt("stall_timeout", default=None, type=FiniteRange(min=0),
     help="Seconds a trial may go without an optimizer step (or evaluation progress) before it is killed and "
          "recorded FAIL; 0: never. Default: 10 x the slowest step seen, at least 120 s; before its first step a "
          "trial gets at least 600 s (model load, tokenisation).")
@opt("resume", is_flag=True, help="Continue the study in output_dir up to --num_trials, without rerunning finished trials; "
     "an option not given takes the value the study began with (except --time_budget_hours: a budget is this run's).")
@opt("overwrite", is_flag=True, help="Replace a study already in output_dir.")
@opt("warm_start", default=None, type=click.Path(), help="An earlier study's output_dir (e.g. with --search_space DIR/refined_space.yaml): its best trials seed the "
     "first population; on the same model, data, seed, moopt training code and library versions, a configuration it "
     "trained is taken over with its result, not trained again.")
@opt("keep_adapters", default="all", show_default=True, type=click.Choice(["all", "pareto", "best"]),
     help="Which trials keep their adapter on disk (r 64 on every linear of an 8B model: 0.6 GiB a trial): all; pareto (the Pareto "
          "front's, others removed as they fall off it); best (the chosen trial's, once the study ends).")
@click.option("--baseline/--no-baseline", " /--no_baseline", "baseline", default=True, show_default=True, help="Evaluate the base model first, for comparison.")
@click.option("--warm_workers/--no_warm_workers", "--warm-workers/--no-warm-workers", "warm_workers", default=True, show_default=True,
              help="A trial process keeps its loaded base model for the next trial with the same model, dtype and "
                   "quantisation (results are the same as in a fresh process); --no_warm_workers: a fresh process per trial "
                   "(always so on a CPU under --memory_constraint or with peak_memory_gb as an objective, where a warm "
                   "process's RSS carries earlier trials).")
def optimize(**kw) -> None:
    """Search LoRA hyperparameters for a base model on your data; write results to --output_dir."""
    if kw["resume"] and kw["overwrite"]:  # before "Resuming with ..." (it was said, then this refused)
        fail("--resume and --overwrite exclude each other: --resume continues the study in --output_dir, "
             "--overwrite replaces it; give one")
    if kw["resume"] and kw["output_dir"] and (note := put_back_replaced(kw["output_dir"])):
        click.echo(f"Note: {note}")
    taken = resume_defaults(kw)
    from moopt.journal import JOURNAL

    no_study = kw["resume"] and kw["output_dir"] and not (Path(kw["output_dir"]) / JOURNAL).is_file()
    for f in ("train_file", "validation_file"):
        if kw[f] is None:
            if no_study:  # a mistyped --output_dir, most likely
                fail(f"--resume: {kw['output_dir']} holds no study to resume (no {JOURNAL}); check --output_dir, or "
                     f"give --train_file and --validation_file to start one there")
            raise click.UsageError(f"Missing option '--{f}'.")
    if taken:
        click.echo("Resuming with the study's " + ", ".join(shown_option(k, kw[k]) for k in taken))
    from moopt.train.models import recorded_name

    kw["base_model"] = recorded_name(kw["base_model"])
    from moopt.train.data import forget_records, keep_records

    try:
        keep_records()  # each data file parsed once for every check of the start (Study.check_data lets go of them)
        cfg = build_study_config(kw)
    except ConfigError as e:
        forget_records()
        fail(str(e))
    if kw["optimization_weights"] and not cfg.objectives.multi:
        click.echo(f"Note: --optimization_weights {kw['optimization_weights']}: one objective "
                   f"({cfg.objectives.names[0]}), so its weight changes nothing; weights pick a trial from a Pareto "
                   "front of several (multi:a,b)")
    if no_study and not kw["overwrite"]:  # a job script that always passes --resume: its first run starts the study
        click.echo(f"Note: {kw['output_dir']} holds no study yet: --resume starts one")  # (once the folder may hold one)
    from moopt.study.scheduler import Stopped, Study

    study = None
    try:
        try:
            study = Study(cfg)
            summary = study.run()
        finally:
            forget_records()  # (a study that stopped before its data check let go of them)
    except ConfigError as e:
        fail(str(e) + (f" (the study --overwrite would replace in {cfg.output_dir} is kept as it was)"
                       if getattr(study, "restored_earlier", False) else ""))
    except (KeyboardInterrupt, Stopped) as e:
        import atexit
        import signal

        # and while the process exits: Ray's own shutdown (atexit, seconds) printed a 20-line KeyboardInterrupt below
        # the resume command on a second Ctrl-C (registered last, so run first)
        atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)
        by = next((n for n in ("SIGTERM", "SIGHUP") if isinstance(e, Stopped) and n in str(e)), None)
        stop = f"Stopped by {by}" if by else "Interrupted"
        try:  # (after SIGHUP the terminal is gone: the exit code still says why)
            if getattr(study, "restored_earlier", False):  # nothing of this run to resume: its command again
                click.echo(f"\n{stop} before this run's first trial: the earlier study in {cfg.output_dir} is kept as it "
                           "was (--overwrite replaces it once a trial starts)", err=True)
                click.echo(f"Run again with: {program()} {' '.join(map(shlex.quote, sys.argv[1:]))}", err=True)
            else:
                said, then = kept(cfg)
                click.echo(f"\n{stop}: {said}", err=True)
                if then == "resume":  # (after "report", its `moopt report` line is what is left to do)
                    click.echo(f"Continue with: {resume_command()}", err=True)
                elif then == "again":  # nothing to resume: "--resume" read as a contradiction of "nothing was kept"
                    click.echo(f"Run again with: {program()} {' '.join(map(shlex.quote, sys.argv[1:]))}", err=True)
        except OSError:
            pass
        sys.exit({"SIGTERM": 143, "SIGHUP": 129}.get(by, 130))
    except OSError as e:
        if e.errno not in FULL_DISK_ERRNOS:
            raise
        stopped_by_full_disk(cfg, e)
    if (summary or {}).get("all_failed"):  # a script running the study learns it trained nothing
        click.echo(f"Every trial failed: their errors are in {Path(cfg.output_dir) / 'trials_summary.csv'} and "
                   "trial_results/trial_N/log.txt", err=True)
        sys.exit(1)
    if (summary or {}).get("nothing_fits"):  # nor one that trained nothing: no best_config.yaml to train from
        budget = f"--memory_constraint {cfg.memory_constraint_gb:g}" if cfg.memory_constraint_gb else "the GPU's memory"
        over = summary.get("trained_over") or 0
        click.echo(f"No configuration fits {budget}: " + (f"the {plural(over, 'trial')} trained under the study's earlier budget "
                   f"peaked over it, and no other was trained" if over else "nothing was trained"), err=True)
        sys.exit(1)
    if (summary or {}).get("none_completed"):  # a mix of failed, ruled-out and pruned trials: no best_config.yaml
        click.echo(f"No trial {'completed' if summary.get('n_trials') else 'ran'}: there is no best_config.yaml to "
                   "train from", err=True)
        sys.exit(1)


def stopped_by_full_disk(cfg, e: OSError) -> None:
    """A full disk (or quota) stopped the study: what it kept, what to run once there is room, exit 1 (it was a
    traceback; a trial that failed for it stayed FAIL for good)."""
    where = f" (writing {e.filename})" if e.filename else f" ({e.strerror})" if "trial" in str(e.strerror) else ""
    try:
        said, then = kept(cfg)
    except OSError:  # (the journal itself cannot be read)
        said, then = "see the journal", "resume"
    click.echo(f"Error: no space left on the device{where}; the study stopped: {said}", err=True)
    if then == "resume":
        click.echo(f"Free some space, then continue with: {resume_command()}", err=True)
    elif then == "report":  # (the line above names the moopt report command)
        click.echo("Free some space first.", err=True)
    else:
        click.echo(f"Free some space, then run again with: {program()} {' '.join(map(shlex.quote, sys.argv[1:]))}",
                   err=True)
    sys.exit(1)


def kept(cfg) -> tuple[str, str]:
    """What an interrupted study kept, read from its journal (the truth whichever step a Ctrl-C, or a second one,
    stopped): trials finished (those --warm_start took over said apart), those that will rerun, and whether the
    result files may lack the end's analysis; and what to run then: "resume" (--resume continues it), "report" (every
    trial had finished: `moopt report` writes the result files) or "again" (nothing was kept: the same command)."""
    from moopt.journal import replay

    try:
        rec = replay(cfg.output_dir)
    except (OSError, ValueError):
        rec = None
    rerun = f"running, will rerun from the start: {', '.join(map(str, rec.running))}" if rec is not None and rec.running else ""
    if rec is None or not rec.finished:
        if not rerun and rec is not None and rec.header and (rec.baseline or {}).get("state") == "COMPLETE":
            return "no trial had started; the base model's evaluation is kept (--resume starts from it).", "resume"
        return "no trial had finished" + (f"; {rerun}." if rerun else "; nothing was kept."), "resume" if rerun else "again"
    total = int(rec.header.get("num_trials") or cfg.num_trials)
    taken = sum(bool(e.taken_from) for e in rec.finished.values())
    full = len(rec.finished) - taken >= total  # a --resume with a lower --num_trials: what still runs is not rerun
    text = f"{len(rec.finished) - taken} of {total} trials finished and kept"
    text += f" (and {taken} taken over from --warm_start)" if taken else ""
    if rerun:
        text += (f"; not rerun, --num_trials is reached (INTERRUPTED in the results): {', '.join(map(str, rec.running))}"
                 if full else f"; {rerun}")
    all_done = full or (len(rec.finished) >= total and not rec.running)
    if all_done:  # stopped while the end's result files were written
        text += f"; every trial had finished: `moopt report {shlex.quote(str(cfg.output_dir))}` writes the result files"
    elif (Path(cfg.output_dir) / "report.html").is_file():  # written at an earlier run's end; the trials since are not in it
        text += f"; report.html and the analysis are an earlier run's: `moopt report {shlex.quote(str(cfg.output_dir))}` brings them up to date"
    return text + ".", "report" if all_done else "resume"


def same_data(a: str, b: str) -> str | None:
    """"the same file as" / "a copy of (the same bytes as)" where data file ``b`` is ``a`` or a copy of it (a partial
    overlap is a note: shared_records); else None."""
    import filecmp

    if os.path.samefile(a, b):
        return "the same file as"
    return "a copy of (the same bytes as)" if filecmp.cmp(a, b, shallow=False) else None


NOT_CARRIED = ("resume", "overwrite", "output_dir", "time_budget_hours")  # what --resume never takes from the study
PATH_OPTIONS = ("train_file", "validation_file", "search_space", "warm_start")  # recorded absolute


def recorded_options(kw: dict) -> dict:
    """The options a study began with, for its journal header: what --resume fills in (resume_defaults)."""
    return {k: os.path.abspath(v) if k in PATH_OPTIONS and v else v for k, v in kw.items() if k not in NOT_CARRIED}


def resume_defaults(kw: dict) -> list[str]:
    """With --resume, each option not given on this command line takes the value the study in --output_dir began
    with (its journal header's ``options``), so ``moopt optimize --output_dir runs/hpo --resume`` continues that
    study as it was started; the options so taken. Not --time_budget_hours (a budget is this run's) and nothing from
    a study that predates recording them."""
    from click.core import ParameterSource

    from moopt.journal import JOURNAL, replay

    if not kw.get("resume") or not kw.get("output_dir") or not (Path(kw["output_dir"]) / JOURNAL).is_file():
        return []
    try:
        rec = replay(kw["output_dir"])
    except (OSError, ValueError):
        return []  # the study's own checks say what is wrong with it
    if 1 in rec.damaged or not rec.header.get("objectives"):  # (it read "Missing option '--train_file'": the options
        # it began with are in that line, gone or damaged)
        fail(f"{Path(kw['output_dir']) / JOURNAL}: the study's header (its first line) is damaged: the study's "
             "objectives and settings are lost, so --resume cannot continue it")
    recorded = rec.header.get("options") or {}
    ctx = click.get_current_context()
    taken = []
    own = Path(kw["output_dir"]) / "search_space.yaml"  # the study's own copy of the space it began with
    given = {k for k in kw if ctx.get_parameter_source(k) != ParameterSource.DEFAULT}
    if recorded.get("search_space"):  # (with --search_space given too: the copy is the study's own, checked as such)
        from moopt.report.results import check_study_space

        try:  # a lost copy put back from the journal ("--search_space <the original>: file not found" where that had
            if note := check_study_space(kw["output_dir"], rec.header):  # moved); one edited since: said as such
                click.echo(f"Note: {note}")  # (it read "this differs from the one it began: ... (--search_space)")
        except ConfigError as e:
            fail(f"{e}; put it back as it was, or delete it (--resume puts it back from the journal)")
    if own.is_file() and recorded.get("search_space"):
        recorded = {**recorded, "search_space": str(own)}  # the file it was read from may have been edited or moved since
    for k, v in recorded.items():
        if k in kw and k not in NOT_CARRIED and k not in given and kw[k] != v:
            if k == "optimization_weights" and "optimization_objective" in given:
                continue  # weights belong to the study's objectives: another objective is the study's check to say
            kw[k] = v
            taken.append(k)
    return taken


def shown_option(name: str, value) -> str:
    """An option as a command line gives it: ``--num_trials 30``, ``--no-baseline``."""
    param = next((p for p in click.get_current_context().command.params if p.name == name), None)
    if isinstance(value, bool) and param is not None and getattr(param, "secondary_opts", None):
        return param.opts[0] if value else param.secondary_opts[0]
    return f"--{name} {value}"


def resume_command() -> str:
    """The command line that was run, with --resume instead of --overwrite."""
    import shlex

    args = [a for a in sys.argv[1:] if a not in ("--overwrite", "--resume")]
    return " ".join([program(), *map(shlex.quote, args), "--resume"])


def program(argv0: str | None = None) -> str:
    """How to run this command again from this shell: ``moopt`` where that name finds this very program, else the
    path it was started by (``.venv/bin/moopt`` outside an activated venv); a script or ``-m`` with a ``python``
    that is this interpreter, else this interpreter's path."""
    import shlex
    import shutil

    argv0 = argv0 or sys.argv[0]
    here = Path(argv0)
    if here.name == "moopt":
        found = shutil.which("moopt")
        return "moopt" if found and Path(found).resolve() == here.resolve() else shlex.quote(argv0)
    found = shutil.which("python")
    python = "python" if found and Path(found).resolve() == Path(sys.executable).resolve() else shlex.quote(sys.executable)
    if here.name == "__main__.py" and here.parent.name in ("cli", "moopt"):
        return f"{python} -m moopt" + (".cli" if here.parent.name == "cli" else "")
    return f"{python} {shlex.quote(argv0)}"


def require_bitsandbytes(source) -> None:
    """8bit/4bit training loads the model through bitsandbytes (its CPU and CUDA builds both work)."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{source}: model.quantization: 8bit/4bit needs bitsandbytes: pip install bitsandbytes")


def check_kernels(kernels: str) -> None:
    """``--kernels triton`` on a machine where the kernels cannot run (no triton; or no CUDA device and no
    Triton interpreter): refused before anything runs, instead of failing every trial."""
    if kernels != "triton":
        return
    import torch
    from moopt_kernels._backend import HAS_TRITON, interpreting

    if not HAS_TRITON:
        raise ConfigError("--kernels triton needs the triton package: pip install 'moopt[triton]'")
    if not torch.cuda.is_available() and not interpreting():
        raise ConfigError("--kernels triton: this machine has no CUDA device, and on a CPU the Triton kernels run "
                          "only under TRITON_INTERPRET=1 (Triton's interpreter, slow); --kernels auto runs torch "
                          "here")


BIG_DATA_BYTES = 2 * 2**20  # a data file this large gets a line before the start's checks read it (a 12 MB chat file took 20-90 s)


def require_files(kw: dict, options: tuple[str, ...]) -> None:
    """A ConfigError with one line for each of ``options`` (kw keys) that names a path where nothing is, naming the
    option: ``--train_file data/train.jsonl: file not found``; and --base_model's where it names nothing."""
    from moopt.train.models import missing_model

    missing = [f"--{k} {kw[k]}: file not found" for k in options
               if kw.get(k) and str(kw[k]).strip() and not os.path.lexists(kw[k])]
    if missing and kw.get("base_model") and (line := missing_model(str(kw["base_model"]))):
        missing.append(line)
    shipped = Path(__file__).resolve().parents[2] / "config" / Path(str(kw.get("search_space") or "_")).name
    if missing and missing[0].startswith("--search_space") and shipped.is_file():  # the guide's, run from elsewhere
        missing[0] += f" (moopt's own copy of the guide's space: {shipped})"
    if missing:
        raise ConfigError("\n".join(missing))


def check_records(path: str) -> None:
    """Read and check a data file's every record (moopt.train.data.read_records); a large one is said first: reading,
    checking and tokenising a sample take seconds to a minute."""
    from moopt.train.data import read_records

    size = os.path.getsize(path) if os.path.isfile(path) else 0
    if size >= BIG_DATA_BYTES:
        click.echo(f"Checking {path} ({size / 2**20:.0f} MB) ...")
    read_records(path)


def build_study_config(kw: dict):
    """Validate every flag and input file before anything is written."""
    from moopt.config import cpu_dtype_override
    from moopt.search.objectives import parse_objectives
    from moopt.search.space import default_space, load_space
    from moopt.study.scheduler import StudyConfig, check_output_dir
    from moopt.train.models import resolve_model_revision

    cpu_dtype_override()  # a wrong MOOPT_CPU_DTYPE fails here, not in every trial
    if kw["ray_address"] and kw["executor"] != "ray":
        raise ConfigError("--ray_address needs --executor ray")
    if kw["executor"] == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'moopt[ray]'") from None
        from moopt.study.ray_executor import check_ray_address

        if kw["ray_address"]:
            check_ray_address(kw["ray_address"])
        elif os.environ.get("RAY_ADDRESS"):  # ray.init joins the cluster it names: the same check
            check_ray_address(os.environ["RAY_ADDRESS"], option="RAY_ADDRESS")
    if kw["executor"] != "ray":  # Ray's trials may run on other machines, with GPUs this one lacks
        check_kernels(kw["kernels"])
    objectives = parse_objectives(kw["optimization_objective"], kw["optimization_weights"])
    # every file that is not there said at once (a copied command with the guide's paths), one Error line each
    require_files(kw, ("search_space", "train_file", "validation_file"))
    space = load_space(kw["search_space"]) if kw["search_space"] else default_space()
    if space.fixed.model.quantization != "none" or any(p.name == "model.quantization" for p in space.params):
        require_bitsandbytes(space.source)
    for f in ("train_file", "validation_file"):
        check_records(kw[f])
    if same := same_data(kw["train_file"], kw["validation_file"]):  # every objective would reward memorising it
        raise ConfigError(f"--validation_file {kw['validation_file']}: {same} --train_file; the objectives "
                          "are measured on it, so give held-out records (e.g. a tenth of the data, split off)")
    cfg = StudyConfig(
        base_model=kw["base_model"], model_path="", train_file=kw["train_file"], validation_file=kw["validation_file"],
        output_dir=kw["output_dir"], num_trials=kw["num_trials"], objectives=objectives, space=space, seed=kw["seed"],
        parallel_trials=kw["parallel_trials"], pruning_factor=kw["pruning_factor"], time_budget_hours=kw["time_budget_hours"],
        memory_constraint_gb=kw["memory_constraint"], kernels=kw["kernels"], resume=kw["resume"],
        overwrite=kw["overwrite"], baseline=kw["baseline"], warm_start=kw["warm_start"],
        executor=kw["executor"], ray_address=kw["ray_address"], stall_timeout_s=kw["stall_timeout"],
        warm_workers=kw["warm_workers"], keep_adapters=kw["keep_adapters"], options=recorded_options(kw),
    )
    from dataclasses import replace

    from moopt.journal import JOURNAL, replay

    if kw["warm_start"]:
        journal = Path(kw["warm_start"]) / JOURNAL
        if journal.is_file() and not replay(kw["warm_start"]).header:  # empty, or its study ended before it began
            raise ConfigError(f"--warm_start {kw['warm_start']}: {journal} records no study (no header line): nothing "
                              "to start from")
        if not journal.is_file():
            if not (kw["resume"] and (Path(kw["output_dir"]) / JOURNAL).is_file()):
                raise ConfigError(f"--warm_start {kw['warm_start']}: no study found there (no {JOURNAL})")
            # a study it seeded already goes on without it (its engine is checkpointed); nothing more is taken over
            click.echo(f"Note: the --warm_start study {kw['warm_start']} is gone; this study goes on without it (its "
                       "first generation was seeded from it already; no more of its trials are taken over)")
            cfg = replace(cfg, warm_start=None)
        if kw["overwrite"] and Path(kw["warm_start"]).resolve() == Path(kw["output_dir"]).resolve():
            raise ConfigError(f"--warm_start {kw['warm_start']} is the study --overwrite would replace: give the new "
                              "study another --output_dir (or continue this one with --resume)")
    check_output_dir(cfg)
    pinned = None  # --resume loads the hub commit the study began with, wherever main has moved since
    if kw["resume"] and (Path(kw["output_dir"]) / JOURNAL).is_file():
        pinned = replay(kw["output_dir"]).header.get("model_revision")
    checked = False
    if cfg.memory_constraint_gb and cfg.executor != "ray" and not pinned:
        checked = check_fits_before_download(kw["base_model"], cfg)
    model_path, revision = resolve_model_revision(kw["base_model"], revision=pinned)
    if cfg.memory_constraint_gb and cfg.executor != "ray" and not checked:  # a local or cached model: before it loads
        check_fits(kw["base_model"], cfg, model_path, fetched=True)
    return replace(cfg, model_path=model_path, model_revision=revision)


def check_fits_before_download(base_model: str, cfg) -> bool:
    """Before a hub model's weights are downloaded (not cached yet): :func:`check_fits` on its config.json alone
    (nothing fetched but it); False where there is nothing to download."""
    from moopt.train.models import _cached_snapshot, hub_config, is_hub_id

    if not is_hub_id(base_model) or _cached_snapshot(base_model, None):  # nothing to download
        return False
    check_fits(base_model, cfg, hub_config(base_model), fetched=False)
    return True


def check_fits(base_model: str, cfg, config_source, fetched: bool) -> None:
    """From the model's config.json alone, the smallest peak any configuration of the space could have
    (moopt.study.gate.smallest_peak, a lower bound); if it is over --memory_constraint by more than the estimate's
    error, no trial could run: one line, exit 2, before the base model is loaded (or downloaded). A model whose
    config cannot be read here (a GGUF file) is left to the study's gate."""
    from moopt.memory.estimate import load_model_config
    from moopt.study.gate import smallest_peak
    from moopt.study.placement import _gpu_capacities
    from moopt.study.scheduler import kernel_path

    try:
        model_config = load_model_config(config_source)
    except Exception:  # noqa: BLE001 (no config.json: the gate estimates from the loaded model)
        if not fetched:
            raise
        return
    device = "cuda" if _gpu_capacities() else "cpu"
    gib, trial = smallest_peak(model_config, cfg.space, device, kernel_path(cfg.kernels, device))
    if gib * (1 - FIT_SLACK) > cfg.memory_constraint_gb:
        m, source = trial.model, cfg.space.source
        space = "the default search space" if source.startswith("<") else source
        quant = "no quantisation" if m.quantization == "none" else f"{m.quantization} quantisation"
        values = {p.name: (list(p.values) if p.type == "categorical" else []) for p in cfg.space.params}
        helps = [("model.gradient_checkpointing", True, "gradient checkpointing")]
        if device == "cuda":  # on a CPU 4bit costs memory
            helps.insert(0, ("model.quantization", "4bit", "4bit"))
        lacks = [what for name, value, what in helps
                 if value not in values.get(name, []) and getattr(m, name.split(".")[1]) != value]
        raise ConfigError(
            f"--memory_constraint {cfg.memory_constraint_gb:g}: no configuration of {space} fits {base_model} "
            f"on {device}: the smallest ({quant}, gradient checkpointing "
            f"{'on' if m.gradient_checkpointing else 'off'}, r {trial.lora.r}, batch {trial.training.batch_size}) is "
            f"estimated at {gib:.2f} GiB from its config.json before any activation; raise the limit, "
            + (f"add {' or '.join(lacks)} to the space, " if lacks else "")
            + "or pick a smaller model" + ("" if fetched else " (the weights were not downloaded)"))


FIT_SLACK = 0.2  # the estimate's error allowed for before a space is refused (its worst over-estimate: 16%, ESTIMATE_OVER_PRIOR)


@main.command(short_help="Rebuild a study's result files from its journal.")
@click.argument("output_dir", type=click.Path())
def report(output_dir: str) -> None:
    """Rebuild every result file of a study from its journal (no GPU or model needed)."""
    from moopt.journal import JOURNAL
    from moopt.report.results import write_results
    from moopt.study.lock import is_live

    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        fail(f"{output_dir}: a file, not a study folder (moopt report takes the --output_dir of a study)")
    from moopt.journal import replay
    from moopt.report.results import SPACE_FILE, check_study_space

    journal = Path(output_dir) / JOURNAL
    rec = replay(output_dir)  # (read once for the notes: a long study's journal is megabytes)
    try:
        live = is_live(output_dir)
        restored = check_study_space(output_dir, rec.header) if rec.header else None  # before any file is rewritten
        if rec.header.get("objectives") and (note := rec.damaged_note(live)):  # said first: the summary below leaves
            # out what those lines recorded (a damaged header is an Error of its own)
            click.echo(f"Note: {Path(output_dir) / note}")
        if restored:
            click.echo(f"Note: {restored}")
        if journal.is_file() and journal.stat().st_size > 100_000:  # hundreds of trials: fANOVA and plots take seconds
            click.echo(f"Writing the report of {output_dir} (importance, plots) ...")
        write_results(output_dir, stopped=not live)  # a trial with no end: running, or interrupted
    except FileNotFoundError as e:
        fail(str(e))
    except ConfigError as e:
        fail(f"{e}; mend it (or delete it: moopt report puts it back from the journal)"
             if SPACE_FILE in str(e).split(":")[0] else str(e))
    except OSError as e:  # a read-only copy of a study (or file system): nothing is written, said in one line (a
        # read-only mount was an OSError traceback from the study lock)
        if e.errno in FULL_DISK_ERRNOS:  # ("copy the study somewhere writable" for a full disk)
            fail(f"{output_dir}: cannot write the result files: no space left on the device"
                 + (f" (writing {e.filename})" if e.filename else "") + f"; free some, then run moopt report {output_dir} "
                 "again")
        fail(f"{output_dir}: cannot write the result files ({e.strerror}" + (f": {e.filename}" if e.filename else "")
             + "); copy the study somewhere writable and run moopt report there")
    if note := study_state_note(output_dir, live, replay(output_dir)):  # (read again: the files' state, not the one
        # before they were written: a trial that ended meanwhile was RUNNING in one and done in the other)
        click.echo(note)
    if not live and (note := replaced_note(output_dir)):
        click.echo(f"Note: {note}")


def put_back_replaced(output_dir: str) -> str | None:
    """--resume where an --overwrite was killed (kill -9, an OOM killer) before its first trial: the earlier study it
    set aside is put back, as a Ctrl-C there would have, and this resume continues it (the replacement had trained
    nothing; resuming it removed the earlier study without a word). What was done, or None."""
    from moopt.study.lock import StudyLock
    from moopt.study.outdir import left_aside, restore_study

    out = Path(output_dir)
    if (n := left_aside(out)) is None:
        return None
    try:
        StudyLock(out).check()  # (that --overwrite still running: its own check says so)
    except ConfigError:
        return None
    restore_study(out)
    return (f"an --overwrite of {output_dir} stopped before its first trial (killed) left the earlier study aside; it is "
            f"back ({plural(n, 'trial')} finished) and this --resume continues it (--overwrite starts the new one)")


def replaced_note(output_dir: str) -> str | None:
    """What ``moopt report`` and a refusal say where an --overwrite was killed before its first trial."""
    from moopt.study.outdir import REPLACED, left_aside

    out = Path(output_dir)
    if (n := left_aside(out)) is None:
        return None
    return (f"an --overwrite stopped before its first trial (killed) left the earlier study ({plural(n, 'trial')} "
            f"finished) aside in {out / REPLACED}: --resume puts it back and continues it, --overwrite starts the new "
            "one again")


def study_state_note(output_dir: str, live: bool, rec=None) -> str | None:
    """After ``moopt report``: a study still running, or one stopped short of --num_trials, is said, with how to go
    on (the report read "Trials: 3 (2 COMPLETE, 1 INTERRUPTED)" and nothing of the study's end). ``rec``: its
    journal's replay, where the caller has it."""
    from moopt.journal import replay

    rec = rec if rec is not None else replay(output_dir)
    total = int(rec.header.get("num_trials") or 0)
    done = sum(not e.taken_from for e in rec.finished.values())
    if live:
        return f"The study is running ({done} of {total} trials done): these files are its state now"
    resume = f"`{program()} optimize --output_dir {shlex.quote(str(output_dir))} --resume"
    if rec.running:
        more = f" --num_trials {done + len(rec.running)}" if done >= total else ""  # else the interrupted stay so
        return (f"The study was stopped at {done} of {total} trials, {len(rec.running)} interrupted: {resume}{more}` "
                + (("reruns it" if len(rec.running) == 1 else "reruns them") if more else "continues it"))
    if rec.ended is not None:  # it ended: all its trials, or an early stop its end gave the reason for
        note = rec.ended.get("stop_note")
        return f"The study ended early at {done} of {total} trials: {note}" if note and done < total else None
    if done < total:  # stopped between trials (or before the first), nothing under way
        return f"The study was stopped at {done} of {total} trials: {resume}` continues it"
    return None


@main.command(short_help="Train the final adapter with a chosen configuration, and test it.")
@opt("config", required=True, type=click.Path(), help="A best_config.yaml (sections training/lora/data[/model]).")
@opt("base_model", default=None, help="As for optimize. Default: the study's, when --config is a study's "
     "best_config.yaml or trial config.yaml; else smollm2-135m.")
@opt("train_file", default=None, type=click.Path(), help="Training data: JSONL, a JSON array or Parquet. Default: the study's.")
@opt("validation_file", default=None, type=click.Path(), help="Validation data (same formats). Default: the study's.")
@opt("test_file", default=None, type=click.Path(), help="Held-out test data, same formats (never seen by the search): "
     "its metrics beside validation's, and a warning where they part. Without one, validation metrics only.")
@opt("output_dir", required=True, type=click.Path(), help="Where the final adapter and metrics go.")
@opt("kernels", default=None, type=click.Choice(["auto", "triton", "torch"]),
     help="LoRA kernel path. Default: the study's (dropout masks differ between the paths), else auto.")
@opt("seed", default=None, type=click.IntRange(0, SEED_MAX), help="Seed of LoRA initialisation and data order. Default: the study's (its "
     "trials' seed, so that the final run repeats the chosen trial), else 42.")
@opt("eval_max_seq_length", default=None, type=click.IntRange(1, None), help="Cut validation and test examples at "
     "this many tokens. Default: what the study evaluated every trial at (the space's longest max_seq_length), else "
     "the config's max_seq_length.")
@opt("revision", default=None, help="A hub model's branch, tag or commit. Default: the commit the study searched on, "
     "when --base_model is the study's; else the main branch.")
@opt("overwrite", is_flag=True, help="Replace a final model already in output_dir.")
def train(**kw) -> None:
    """Train the final adapter with a chosen configuration (full budget, no pruning) and test it."""
    from moopt.cli.final import copied_header, differences, study_of
    from moopt.config import absent_keys, cpu_dtype_override, load_trial_config, lr_note
    from moopt.journal import JOURNAL, replay
    from moopt.study.gate import data_notes, require_completions
    from moopt.study.outdir import check_writable_dir
    from moopt.train.data import formats_across, mixed_formats, repeated_records, shared_records
    from moopt.train.models import recorded_name, resolve_model_revision

    try:
        cpu_dtype_override()
        given = kw["kernels"] is not None
        if given:  # refused before anything is read (else the study's, checked once it is known)
            check_kernels(kw["kernels"])
        require_files(kw, ("config", "train_file", "validation_file", "test_file"))
        cfg = load_trial_config(kw["config"])
        if cfg.model.quantization != "none":
            require_bitsandbytes(kw["config"])
        # a study's best_config.yaml (or a trial's config.yaml): its base model and data are the defaults, and the
        # final model trains on the hub commit that study searched on
        study_dir, number = study_of(kw["config"])
        record = replay(study_dir) if study_dir is not None else None
        header = record.header if record is not None else copied_header(kw["config"])
        notes = study_defaults(kw, header)  # said once the input is checked: an error stays one line
        if record is None and (Path(kw["config"]).resolve().parent / JOURNAL).is_file():  # (study_of: moved in)
            notes.insert(0, f"Note: {Path(kw['config']).name}'s first lines name another study than the one in its "
                            f"folder ({Path(kw['config']).resolve().parent}): taking what they name, not that study's")
        # a study's file gives every setting: a line lost in an edit (in the study's folder, the differences from its
        # trial are said instead, with the values it trained with)
        if record is None and header and (gone := absent_keys(kw["config"])):
            many = len(gone) > 1
            notes.append(f"Note: {Path(kw['config']).name} gives no {', '.join(k for k, _ in gone)}: moopt's "
                         f"default{'s' if many else ''} ({', '.join(v for _, v in gone)}) {'are' if many else 'is'} "
                         "taken, which may not be what the study's trial trained with")
        if number is not None:
            notes += trial_outcome_note(record, number)
        if not given:
            check_kernels(kw["kernels"])
        kw["base_model"] = recorded_name(kw["base_model"])
        if note := lr_note([cfg.training.learning_rate], verb=""):
            notes.append(f"Note: {note}")
        files = ("train_file", "validation_file", *(("test_file",) if kw["test_file"] else ()))
        for f in files:
            check_records(kw[f])
        if same := same_data(kw["train_file"], kw["validation_file"]):  # as moopt optimize refuses it
            raise ConfigError(f"--validation_file {kw['validation_file']}: {same} --train_file; the validation "
                              "metrics are measured on it, so give held-out records (the study's validation file)")
        out = Path(kw["output_dir"])
        check_writable_dir(out)
        busy_output_dir(out)  # refused before its notes are said (the run itself holds the lock: _train_locked)
        if (out / JOURNAL).is_file() or (out.absolute().parent.name == "trial_results"
                                         and (out.absolute().parent.parent / JOURNAL).is_file()):
            # its adapter, config.yaml and metrics.json would replace the study's or the trial's own
            raise ConfigError(f"--output_dir {out}: a study's folder (or one of its trials'); give the final model a "
                              "folder of its own")
        if (out / "final_metrics.json").is_file() and not kw["overwrite"]:
            raise ConfigError(f"{out}: holds a trained model already; pass --overwrite to replace it")
        pinned = header.get("model_revision") if header.get("base_model") == kw["base_model"] else None
        model_path, commit = resolve_model_revision(kw["base_model"], revision=kw["revision"] or pinned)
        kw["hub_id"], kw["hub_revision"] = (kw["base_model"], commit) if commit else (None, None)  # the adapter names them
        if kw["revision"] and not commit:
            notes.append(f"Note: --revision {kw['revision']} is a hub model's branch, tag or commit; {kw['base_model']} is "
                         "not a hub id, so it is ignored")
        searched = header.get("base_model")
        kw["same_weights"] = False
        if header.get("model_digest") and searched:
            from moopt.model_files import model_digest

            same = model_digest(model_path) == header["model_digest"]
            if searched == kw["base_model"] and not same:  # a folder retrained in place since the study
                notes.append(f"Note: {kw['base_model']}'s weights or config.json changed since the study searched on "
                             "it: these hyperparameters were chosen for the weights it had then")
            elif searched != kw["base_model"] and same:  # the study's folder, moved or copied
                kw["same_weights"] = True
                notes = [n for n in notes if not n.startswith("Note: the study searched these hyperparameters on")]
                notes.append(f"Base model: {kw['base_model']}, the same weights and config.json as the study's {searched}")
        # validation (and test) cut at the length the study evaluated every trial at
        studied = int(header.get("eval_max_seq_length") or 0)
        if not kw["eval_max_seq_length"] and studied > cfg.data.max_seq_length:  # said, as the other defaults are
            notes.append(f"Validation{' and test' if kw['test_file'] else ''} examples cut at {studied} tokens, as the "
                         f"study evaluated every trial ({whose_of(header)}; this configuration trains at "
                         f"{cfg.data.max_seq_length})")
        kw["eval_max_seq_length"] = kw["eval_max_seq_length"] or max(studied, cfg.data.max_seq_length)
        for f in files:  # the study's check (Study.check_data), and its notes on what max_seq_length leaves out or cuts
            at = cfg.data.max_seq_length if f == "train_file" else kw["eval_max_seq_length"]
            require_completions(model_path, kw[f], at)  # a refusal raises before any note is said
            if not (f == "test_file" and os.path.samefile(kw[f], kw["validation_file"])):  # (said for validation)
                notes += [f"Note: {n}" for n in data_notes(model_path, kw[f], at,
                                                           role="training" if f == "train_file" else "evaluation")]
                notes += [f"Note: {n}" for n in (mixed_formats(kw[f]), formats_across(kw[f])) if n]
                notes += [f"Note: {n}" for n in [repeated_records(kw[f])] if n and f == "train_file"]
        if cfg.model.quantization != "none" and not _has_cuda():  # as a study says it at its start
            notes.append(f"Note: model.quantization {cfg.model.quantization} on a CPU: bitsandbytes' layers work here "
                         "but cost memory instead of saving it and train slower (minutes where unquantised takes "
                         "seconds); they pay on a GPU")
        if record is not None:
            if number is None:
                from moopt.report.table import load_study

                number = load_study(study_dir).best
            kw["study_trial"] = number
            # on a CPU, the trial's threads where they are more than this process would take (a study's one slot
            # takes every logical CPU, torch's default only the physical cores): the same sums, not slower
            threads = int((record.starts.get(number) or {}).get("threads") or 0)
            import torch

            if not torch.cuda.is_available() and threads > torch.get_num_threads():
                kw["threads"] = threads
            kw["differs_from_trial"] = differences(cfg, kw, record, number)
    except ConfigError as e:
        fail(str(e))
    for note in notes:
        click.echo(note)
    shared, n_val = shared_records(kw["train_file"], kw["validation_file"])
    if shared:
        click.echo(f"Note: {shared} of {n_val} examples of {kw['validation_file']} also appear in {kw['train_file']}: "
                   "the validation metrics are not held-out ones for them")
    for f in ("train_file", "validation_file") if kw["test_file"] else ():  # the test set: what the search never saw
        if os.path.samefile(kw[f], kw["test_file"]):
            click.echo(f"Note: --test_file {kw['test_file']} is the {f.removesuffix('_file')} file: its metrics are "
                       "not held-out ones")
            continue
        shared, n_test = shared_records(kw[f], kw["test_file"])
        if shared:
            click.echo(f"Note: {shared} of {n_test} examples of {kw['test_file']} also appear in "
                       f"{kw[f]}: the test metrics are not held-out ones for them")
    sys.exit(_train_locked(cfg, kw, model_path))


def lock_output_dir(out: Path, shown: str | os.PathLike) -> int:
    """An flock on the folder ``out`` itself (nothing left behind), its fd held until closed; ConfigError naming
    ``shown`` when another ``moopt train`` holds it."""
    import fcntl

    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"--output_dir {shown}: another moopt train is writing into it now; wait for it to end or "
                          "give another folder") from None
    return fd


def busy_output_dir(out: Path) -> None:
    """ConfigError when another ``moopt train`` holds ``out`` (taken by _train_locked for the run)."""
    if out.is_dir():
        os.close(lock_output_dir(out, out))  # closing releases it: the run takes it again for good


def _train_locked(cfg, kw: dict, model_path: str) -> int:
    """train_final with ``--output_dir`` held (a second ``moopt train`` into it is refused, not mixed in), Ctrl-C and
    SIGTERM ending it with nothing of the run kept, and a failed write (a full disk) said in one line. The exit code."""
    import shutil
    import signal

    from moopt.cli.final import ASIDE, ATTEMPT, train_final

    out = Path(kw["output_dir"]).absolute()
    out.mkdir(parents=True, exist_ok=True)
    try:
        fd = lock_output_dir(out, kw["output_dir"])
    except ConfigError as e:
        fail(str(e))
    if (out / "final_metrics.json").is_file() and not kw["overwrite"]:  # one that ended since the check
        fail(f"{kw['output_dir']}: holds a trained model already; pass --overwrite to replace it")
    signals = []

    def terminated(signum, frame):
        signals.append(signum)
        raise KeyboardInterrupt

    earlier = signal.signal(signal.SIGTERM, terminated)
    had = (out / "final_metrics.json").is_file()

    def left() -> str:  # what the folder holds now
        shutil.rmtree(out / ATTEMPT, ignore_errors=True)
        (out / ASIDE).unlink(missing_ok=True)
        if kw.get("_replacing"):  # stopped while its files replaced the earlier ones: neither model is whole
            return (f"it stopped while replacing the files in {out}, which now holds neither model whole: train "
                    "again with --overwrite")
        return "nothing of this run was kept" + (f"; the final model trained before in {out} is untouched" if had else "")

    try:
        return 0 if train_final(cfg, kw["config"], model_path, kw) else 1
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted: {left()}.", err=True)
        return 128 + (signals[0] if signals else signal.SIGINT)
    except OSError as e:  # writing the adapter or the metrics (run_trial says a failure while training itself)
        where = f" {e.filename}" if e.filename else ""
        click.echo(f"Error: writing the final model failed{where}: {e.strerror or e}; {left()}", err=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, earlier)
        os.close(fd)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def trial_outcome_note(record, number: int) -> list[str]:
    """What became of the study's trial N whose config.yaml is trained, where it did not complete: a pruned, cut,
    failed or infeasible trial's configuration is trained to the end all the same, and the user should know it."""
    end = record.ends.get(number)
    if end is None:
        return [f"Note: trial {number} of the study has no result (it is running, or was when the study stopped); "
                "training its configuration"]
    state = str(end.state)
    if state == "COMPLETE":
        return []
    why = f" ({end.error})" if end.error else ""
    return [f"Note: trial {number} of the study was {state}{why}; this trains its configuration to the end"
            + (" (it may not fit the memory it was refused for)" if state == "INFEASIBLE" else "")]


def whose_of(header: dict) -> str:
    """Where a default ``moopt train`` takes from the study came from: its journal, or a copy of best_config.yaml
    outside the study whose first lines name it (moopt.cli.final.copied_header)."""
    if header.get("copied_from"):
        return f"the study's, as {Path(header['copied_from']).name}'s first lines name it"
    return "the study's"


def study_defaults(kw: dict, header: dict) -> list[str]:
    """Fill ``moopt train``'s --base_model, --train_file, --validation_file and --seed left out from the study the config
    comes from (its journal header); the lines to say about it. A base model other than the study's is said too:
    the hyperparameters were searched for the study's. ConfigError where a file is neither given nor known."""
    from moopt.train.models import recorded_name

    notes = []
    searched = header.get("base_model")
    away = "" if header else " (--config is not in a study's folder, whose choices it would take)"
    whose = whose_of(header)

    def named(what: str) -> str:
        return f"{what} ({whose})" if header.get("copied_from") else f"the study's {what}"

    if kw["base_model"] is None:
        if searched and os.path.isabs(searched) and not os.path.exists(searched):  # a local folder, moved since
            raise ConfigError(f"--base_model: {named(searched)} is not there"
                              + ("" if header.get("copied_from") else " any more") + "; pass --base_model")
        kw["base_model"] = searched or "smollm2-135m"
        notes.append(f"Base model: {searched} ({whose})" if searched else f"Base model: smollm2-135m, the default{away}")
    elif searched and recorded_name(kw["base_model"]) != searched:  # ./tiny/ from where the study's tiny is, the same
        notes.append(f"Note: the study searched these hyperparameters on {searched}; training on {kw['base_model']}")
    for f in ("train_file", "validation_file"):
        if kw[f] is not None:
            continue
        known = (header.get("fingerprint") or {}).get(f)  # what --resume checks: the study's own file
        if known is None:
            why = (f" ({Path(header['copied_from']).name}'s first lines do not name it)" if header.get("copied_from") else
                   " (the study's journal does not name its data files)" if header else
                   " (--config is not in a study's folder, and its first lines do not name the study's data)")
            raise ConfigError(f"--{f}: required{why}")
        if not Path(known).is_file():
            raise ConfigError(f"--{f}: {named(known)} is not there" + ("" if header.get("copied_from") else " any more")
                              + f"; pass --{f}")
        kw[f] = known
        notes.append(f"{'Training' if f == 'train_file' else 'Validation'} data: {known} ({whose})")
    if kw.get("seed") is None:  # the seed the study's trials trained with, so that the chosen trial is repeated
        seed = (header.get("fingerprint") or {}).get("seed")
        kw["seed"] = 42 if seed is None else int(seed)
        notes.append(f"Seed: {seed} ({whose})" if seed is not None else f"Seed: 42, the default{away}")
    if kw.get("kernels") is None:  # the study's LoRA kernel path: dropout masks differ between triton and torch
        kernels = (header.get("options") or {}).get("kernels")
        kw["kernels"] = kernels or "auto"
        if kernels and kernels != "auto":
            notes.append(f"Kernels: {kernels} ({whose})")
    return notes


def _register_estimate() -> None:
    from moopt.cli.estimate import estimate_memory  # its own module: it imports only click and moopt.config

    main.add_command(estimate_memory)


_register_estimate()

if __name__ == "__main__":
    main()
