"""``moopt estimate-memory``: the analytic peak of one training step, without loading weights."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import click

from moopt.config import TrialConfig
from moopt.errors import ConfigError


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken torch install means no CUDA here
        return False


@click.command("estimate-memory", short_help="Peak memory (GiB) of a training step, by term; --fit G: what fits in G.")
@click.option("--base_model", "--base-model", "base_model", default="smollm2-135m", show_default=True,
              help="A folder holding config.json, a built-in shape (llama-3.3-70b, llama-3.1-8b, llama-3.2-3b, "
                   "llama-2-7b, llama-2-13b), a hub id (owner/name: its config.json only is downloaded, not the "
                   "weights), a .gguf file, or the alias smollm2-135m.")
@click.option("--config", "config_path", default=None, help="Trial YAML (best_config.yaml layout); defaults if omitted.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="auto: cuda when this machine has a CUDA device, else cpu.")
@click.option("--kernels", type=click.Choice(["auto", "torch", "triton"]), default="auto", show_default=True,
              help="auto: triton on cuda, torch on cpu (what a study's --kernels auto runs).")
@click.option("--loss", type=click.Choice(["chunked", "hf"]), default="chunked", show_default=True,
              help="The loss head estimated: moopt's chunked loss (what its trials run), or transformers' whole-logits "
                   "loss (HF Trainer + PEFT), to compare with a peer stack's peak.")
@click.option("--fit", "fit_gib", type=float, default=None,
              help="Memory budget in GiB (one GPU's memory on cuda, peak RSS on cpu): also print the longest "
                   "sequence that fits for each batch size, and whether the configuration fits (and what would, "
                   "when not).")
@click.option("--json", "as_json", is_flag=True, help="Print {total_gib, breakdown, phase, assumed, notes[, fit]} as JSON.")
def estimate_memory(base_model, config_path, device, kernels, loss, fit_gib, as_json):
    """Estimate the peak memory (GiB) of one training step of a trial."""
    from moopt.memory.estimate import (
        CPU_RUNTIME_SPREAD_BYTES,
        GIB,
        estimate_peak,
        fit_alternatives,
        fit_plan,
        fit_table,
        load_model_config,
        under_prior,
    )
    margin, spread = 0.0, 0
    auto_device = device == "auto"
    if auto_device:
        device = "cuda" if _cuda_available() else "cpu"
    if kernels == "auto":
        kernels = "triton" if device == "cuda" else "torch"
    try:
        if fit_gib is not None and not 0 < fit_gib < math.inf:
            raise ConfigError(f"--fit: must be a finite number > 0 GiB, got {fit_gib:g}")
        if config_path is not None and not Path(config_path).exists():
            raise ConfigError(f"--config {config_path}: file not found")
        trial = TrialConfig() if config_path is None else _load_trial(config_path)
        path, from_gguf = _config_path(base_model)
        model_config = load_model_config(path)
        if from_gguf:
            model_config.moopt_dtype_copies = True  # a study trains from its conversion, which has a copy per dtype
        est = estimate_peak(model_config, trial, device=device, kernels=kernels, loss=loss)
        context = getattr(model_config, "max_position_embeddings", None)
        if isinstance(context, int) and 0 < context < trial.data.max_seq_length:
            est = dataclasses.replace(est, notes=(*est.notes, f"max_seq_length {trial.data.max_seq_length} is past the model's context ({context} tokens, "
                             "its max_position_embeddings): positions past it are ones the model was never trained on; "
                             f"a max_seq_length of at most {context} keeps to them"))
        table = plan = alt = None
        if fit_gib is not None:
            kw = {"device": device, "kernels": kernels, "loss": loss}
            # each row as the plan judges it: estimate x (1 + the error band) + (cpu) the runtime's spread between
            # machines, within the budget; the band is the same for every shape, the spread a fixed amount
            margin = under_prior(device, trial.model.quantization)
            spread = CPU_RUNTIME_SPREAD_BYTES if device == "cpu" else 0
            table = fit_table(model_config, trial, fit_gib * GIB - spread, margin=margin, **kw)
            plan = fit_plan(model_config, trial, fit_gib * GIB, **kw)
            if not table:  # no shorter sequence or smaller batch fits either (the text and --json said the table had one)
                plan = [x for x in plan if "shorter max_seq_length / smaller batch" not in x]
                if plan[-1].endswith("; alternatives:"):  # (and no setting lowers it: a line ending in nothing)
                    plan[-1] = plan[-1].removesuffix("; alternatives:") + ("; no other quantization or gradient "
                                                                          "checkpointing lowers it")
            if not table:  # nothing fits as configured: the table of the first change that fits (70B in bf16 on 80 GiB
                alt = fit_alternatives(model_config, trial, fit_gib * GIB - spread, **kw)  # said none, only)
    except ConfigError as e:  # one line each problem, exit code 2, no traceback (as moopt.cli.fail, which imports this)
        for line in str(e).splitlines() or [""]:
            click.echo(f"Error: {line}", err=True)
        sys.exit(2)
    from moopt.config import resolve_dtype

    why = " (auto: no CUDA device on this machine)" if auto_device and device == "cpu" else \
        " (auto: CUDA device found)" if auto_device else ""
    assumed = (f"assumed: device {device}{why}, kernels {kernels}, loss {loss}, "
               f"batch {est.shape[0]} x seq {est.shape[1]}, dtype {resolve_dtype(trial.model.dtype, device)}"
               f"{' (auto)' if trial.model.dtype == 'auto' else ''}, quantization {trial.model.quantization}, "
               f"gradient checkpointing {'on' if trial.model.gradient_checkpointing else 'off'}")
    if as_json:
        out = est.to_json()
        if table is not None:
            out["fit"] = {"budget_gib": fit_gib, "error_band": margin, "runtime_spread_gib": spread / GIB,
                          "longest_seq_by_batch": [{"batch": b, "seq": s} for b, s in table],
                          "plan": plan}
            if alt is not None:  # nothing fits as configured: each change tried, the one that fits the most first
                out["fit"]["alternatives"] = [{"with": n, "error_band": m, "longest_seq_by_batch": [
                    {"batch": b, "seq": s} for b, s in t]} for n, m, t in alt]
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(assumed)
    # what a study's gate says of the same configuration differs: it estimates the longest batch its data builds
    # (after truncation), and calibrates the estimate with the peaks this machine measured
    click.echo("(uncalibrated, at batch x max_seq_length; a study estimates each trial at its data's longest batch "
               "and calibrates with the peaks measured on this machine: its figures may be lower)")
    click.echo(est.render())
    if table is not None:
        click.echo(f"\nlargest batch x sequence within {fit_gib:g} GiB ({device}), keeping the estimate's "
                   f"+{margin:.0%} error band for {device}/{trial.model.quantization}"
                   + (f" and {spread / 2**20:.0f} MiB for the CPU runtime's spread between machines" if spread else "")
                   + ":")
        if not table:
            click.echo("  none: even batch 1 x 1 token does not fit with the error band")
        if alt:  # what each change would fit, then the table of the one that fits the most
            for name, _, t in alt:
                best = max(t, key=lambda x: x[0] * x[1]) if t else None
                click.echo(f"  with {name}: " + (f"at most {best[0] * best[1]:,} tokens a step (batch {best[0]} x seq "
                                                  f"{best[1]})" if best else "none either"))
            if alt[0][2]:
                click.echo(f"  with {alt[0][0]} (its error band +{alt[0][1]:.0%}):")
        shown = table or (alt[0][2] if alt else [])
        for b, s in shown:
            click.echo(f"  batch {b:>3} x seq {s:>7}  ({b * s:,} tokens)")
        if shown:
            b, s = max(shown, key=lambda x: x[0] * x[1])
            click.echo(f"  most tokens per step: batch {b} x seq {s}")
        click.echo(f"\nthis configuration (batch {est.shape[0]} x seq {est.shape[1]}):")
        for line in plan:
            click.echo(f"  {line}")


def _config_path(base_model: str):
    """(a folder/config.json path, or a built-in shape name (moopt.memory.shapes), as load_model_config takes;
    whether it stands for a GGUF, which a study trains from moopt's conversion)."""
    from moopt.memory.shapes import model_shape

    path = Path(base_model).expanduser()
    if path.is_dir() or path.name == "config.json" or (not path.exists() and model_shape(base_model)):
        return (path if path.exists() else base_model), False
    from moopt.train.models import gguf_config, gguf_source, hub_config, is_hub_id, resolve_model

    if is_hub_id(base_model):  # a hub id not built in: its config.json, not its weights
        return hub_config(base_model), False
    source = gguf_source(base_model)
    if source is not None:  # a .gguf or the alias: the config from its metadata, not its dequantised weights
        return gguf_config(*source), True
    return Path(resolve_model(base_model)), False


def _load_trial(path: str) -> TrialConfig:
    from moopt.config import load_trial_config

    return load_trial_config(path)
