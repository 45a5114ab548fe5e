"""``moopt estimate-memory``: the analytic peak of one training step, without loading weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from moopt.config import ConfigError, TrialConfig


@click.command("estimate-memory")
@click.option("--base_model", "--base-model", "base_model", default="smollm2-135m", show_default=True,
              help="A folder holding config.json, or any name moopt.models.resolve_model accepts.")
@click.option("--config", "config_path", default=None, help="Trial YAML (best_config.yaml layout); defaults if omitted.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True)
@click.option("--kernels", type=click.Choice(["torch", "triton"]), default="torch", show_default=True)
@click.option("--loss", type=click.Choice(["chunked", "hf"]), default="chunked", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print {total_gib, breakdown} as JSON.")
def estimate_memory(base_model, config_path, device, kernels, loss, as_json):
    """Estimate the peak memory (GiB) of one training step of a trial."""
    from moopt.memory import estimate_peak, load_model_config

    try:
        trial = TrialConfig() if config_path is None else _load_trial(config_path)
        path = Path(base_model).expanduser()
        if not (path.is_dir() or path.name == "config.json"):
            from moopt.models import resolve_model

            path = Path(resolve_model(base_model))
        est = estimate_peak(load_model_config(path), trial, device=device, kernels=kernels, loss=loss)
    except ConfigError as e:  # one line, exit code 2, no traceback
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(est.to_json(), indent=2))
    else:
        click.echo(est.render())


def _load_trial(path: str) -> TrialConfig:
    from moopt.config import load_trial_config

    return load_trial_config(path)
