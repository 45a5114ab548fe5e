"""The user's guide (shared/guide/hpo-guide.md), command by command, on the tiny test model.

Each command line is the guide's, verbatim, with only the model name and the data and output paths
swapped; ``--num_trials`` is capped at 2 to keep CI short (every other flag as written). The guide's
example space is ``config/hpo_search_space.yaml`` byte for byte in its YAML.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from moopt.cli import main

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT.parent / "shared" / "guide" / "hpo-guide.md"  # beside the repository, where present

# The guide's five command lines (its "Using", "Basic", "Comprehensive", "Multi-objective" and
# "Memory-Constrained" sections), as written there.
COMMANDS = {
    "main": """python scripts/run_hyperparameter_optimization.py --base_model meta-llama/Llama-3.3-8B
      --train_file data/processed/dataset/train.jsonl --validation_file data/processed/dataset/val.jsonl
      --output_dir data/models/hpo-results/ --num_trials 10 --optimization_objective "eval_loss"
      --search_space config/hpo_search_space.yaml""",
    "basic": """python scripts/run_hyperparameter_optimization.py --base_model meta-llama/Llama-3.3-8B
      --train_file data/processed/dataset/train.jsonl --validation_file data/processed/dataset/val.jsonl
      --output_dir data/models/hpo-basic/ --num_trials 5 --pruning_factor 2.0
      --search_space config/hpo_basic_search_space.yaml""",
    "comprehensive": """python scripts/run_hyperparameter_optimization.py --base_model meta-llama/Llama-3.3-8B
      --train_file data/processed/dataset/train.jsonl --validation_file data/processed/dataset/val.jsonl
      --output_dir data/models/hpo-comprehensive/ --num_trials 30 --parallel_trials 3
      --optimization_objective "eval_loss" --search_space config/hpo_comprehensive_search_space.yaml""",
    "multi": """python scripts/run_hyperparameter_optimization.py --base_model meta-llama/Llama-3.3-8B
      --train_file data/processed/dataset/train.jsonl --validation_file data/processed/dataset/val.jsonl
      --output_dir data/models/hpo-multi-objective/ --num_trials 20
      --optimization_objective "multi:eval_loss,eval_accuracy" --optimization_weights "0.7,0.3"
      --search_space config/hpo_search_space.yaml""",
    "memory": """python scripts/run_hyperparameter_optimization.py --base_model meta-llama/Llama-3.3-8B
      --train_file data/processed/dataset/train.jsonl --validation_file data/processed/dataset/val.jsonl
      --output_dir data/models/hpo-memory-constrained/ --num_trials 15 --memory_constraint 8
      --search_space config/hpo_memory_constrained_space.yaml""",
}
MAX_TRIALS = 2


def guide_commands(text: str) -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [shlex.split(b.replace("\\\n", " ")) for b in blocks if "run_hyperparameter_optimization.py" in b]


def swapped(name: str, tiny_model, tiny_data, tmp_path) -> list[str]:
    argv = shlex.split(COMMANDS[name])[2:]  # after `python scripts/run_hyperparameter_optimization.py`
    swap = {"meta-llama/Llama-3.3-8B": str(tiny_model), "data/processed/dataset/train.jsonl": str(tiny_data["train"]),
            "data/processed/dataset/val.jsonl": str(tiny_data["val"])}
    out = []
    for i, a in enumerate(argv):
        if argv[i - 1] == "--output_dir":
            a = str(tmp_path / Path(a).name)
        elif argv[i - 1] == "--num_trials":
            a = str(min(int(a), MAX_TRIALS))
        elif argv[i - 1] == "--search_space":
            a = str(ROOT / a)
        out.append(swap.get(a, a))
    return out


def test_the_commands_here_are_the_guides():
    if not GUIDE.is_file():
        pytest.skip("shared/guide/hpo-guide.md is not beside the repository")
    assert guide_commands(GUIDE.read_text()) == [shlex.split(c) for c in COMMANDS.values()]


def test_the_example_space_is_the_guides():
    if not GUIDE.is_file():
        pytest.skip("shared/guide/hpo-guide.md is not beside the repository")
    example = re.search(r"```yaml\n(# Example: config/hpo_search_space.yaml.*?)```", GUIDE.read_text(), flags=re.S).group(1)
    assert yaml.safe_load(example) == yaml.safe_load((ROOT / "config" / "hpo_search_space.yaml").read_text())


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_guide_command_runs_on_the_tiny_model(name, tiny_model, tiny_data, tmp_path):
    argv = swapped(name, tiny_model, tiny_data, tmp_path)
    r = CliRunner().invoke(main, ["optimize", *argv])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    out = Path(argv[argv.index("--output_dir") + 1])
    for f in ("trials_summary.csv", "optimization_plot.png", "report.html"):
        assert (out / f).is_file(), f
    assert (out / "trial_results" / "trial_0").is_dir()
    text = r.output
    if (out / "best_config.yaml").is_file():
        assert "Best hyperparameter configuration:\n{\n" in text
        assert re.search(r"^Best value: -?\d+\.\d{3} \(higher is better\)$", text, flags=re.M), text
        assert f"Results in {out}/:" in text and "best_config.yaml" in text
        # report.html holds a Pareto front only where there are several objectives (it was promised for one too)
        multi = "multi:" in " ".join(argv)
        assert ("the report: Pareto front, trials table" in text) == multi, text
        assert ("the report: the objective by trial, trials table" in text) != multi, text
    else:  # every trial infeasible or failed: the summary says so instead
        assert "configurations tried fits" in text or "No trial completed" in text


def test_the_guides_script_runs_as_a_script(tiny_model, tiny_data, tmp_path):
    argv = swapped("basic", tiny_model, tiny_data, tmp_path)
    argv[argv.index("--num_trials") + 1] = "1"
    r = subprocess.run([sys.executable, "scripts/run_hyperparameter_optimization.py", *argv, "--no-baseline"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Best hyperparameter configuration:" in r.stdout
