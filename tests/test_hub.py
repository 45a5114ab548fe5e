"""``--base_model <hub id>`` against a fake hub on 127.0.0.1 (tests/fakehub.py) serving the tiny test model.

Each ``moopt`` runs in a fresh process: huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it
is imported, as it does for a user.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakehub import FakeHub

REPO, GATED = "moopt-test/tiny-llama", "moopt-test/gated-llama"
SPACE = """
training:
  learning_rate: {type: log_uniform, min: 1e-4, max: 3e-2}
  batch_size: 8
  num_train_epochs: 1
lora:
  r: 4
  alpha: 8
data:
  max_seq_length: 32
"""


@pytest.fixture
def repo_folder(tiny_model, tmp_path):
    """The tiny model as a hub repository holds it: besides the safetensors, a *.bin copy and Meta's original/."""
    folder = tmp_path / "repo"
    shutil.copytree(tiny_model, folder)
    (folder / "pytorch_model.bin").write_bytes(b"not to be fetched")
    (folder / "original").mkdir()
    (folder / "original" / "consolidated.00.pth").write_bytes(b"not to be fetched")
    return folder


@pytest.fixture
def hub(repo_folder):
    hub = FakeHub().start()
    hub.first = hub.push(REPO, repo_folder)
    hub.push(GATED, repo_folder, gated=True)
    yield hub
    hub.stop()


@pytest.fixture
def env(hub, tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_")) and k != "TRANSFORMERS_OFFLINE"}
    return {**clean, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture
def space(tmp_path):
    p = tmp_path / "space.yaml"
    p.write_text(SPACE)
    return p


def moopt(env, *args, **extra_env):
    return subprocess.run([sys.executable, "-P", "-m", "moopt.cli", *map(str, args)], check=False, env={**env, **extra_env},
                          capture_output=True, text=True, timeout=600)


def optimize(env, tiny_data, space, out, *extra, base_model=REPO, **extra_env):
    return moopt(env, "optimize", "--base_model", base_model, "--train_file", tiny_data["train"],
                 "--validation_file", tiny_data["val"], "--output_dir", out, "--search_space", space,
                 "--no-baseline", *extra, **extra_env)


def resolve(env, name, **extra_env):
    """``(folder, commit)`` or the ConfigError line, from moopt.train.models in a fresh process."""
    code = ("import json, sys\nfrom moopt.config import ConfigError\nfrom moopt.train.models import resolve_model_revision\n"
            "try:\n    print(json.dumps(resolve_model_revision(sys.argv[1])))\n"
            "except ConfigError as e:\n    print(json.dumps(str(e)))\n")
    r = subprocess.run([sys.executable, "-P", "-c", code, name], check=False, env={**env, **extra_env}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def retrained(folder: Path, to: Path) -> Path:
    """A copy of ``folder`` with other weights (every tensor doubled)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, to)
    save_file({k: v * 2 for k, v in load_file(to / "model.safetensors").items()}, to / "model.safetensors", metadata={"format": "pt"})
    return to


def header(out: Path) -> dict:
    return json.loads((out / "journal.jsonl").read_text().splitlines()[0])


def adapter_base(out: Path, number: int) -> tuple[str, str]:
    """An adapter's base model as PEFT reads it: the hub id and the commit (portable to any machine, and exact)."""
    c = json.loads((out / "trial_results" / f"trial_{number}" / "adapter" / "adapter_config.json").read_text())
    return c["base_model_name_or_path"], c["revision"]


@pytest.mark.slow
def test_cold_download_then_study_then_resume_keeps_the_recorded_commit(hub, env, tiny_data, space, tmp_path):
    out = tmp_path / "hpo"
    r = optimize(env, tiny_data, space, out, "--num_trials", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"moopt: downloading {REPO} at commit {hub.first[:12]}" in r.stdout
    assert "Fetching" in r.stderr  # huggingface_hub's progress bar
    assert header(out)["model_revision"] == hub.first
    snapshot = Path(env["HF_HOME"]) / "hub" / "models--moopt-test--tiny-llama" / "snapshots" / hub.first
    assert sorted(p.name for p in snapshot.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert adapter_base(out, 0) == (REPO, hub.first)
    gets = [p for m, p in hub.requests if m == "GET" and "/resolve/" in p]
    assert sum(p.endswith("/model.safetensors") for p in gets) == 1
    assert not [p for p in gets if p.endswith((".bin", ".pth"))]

    # main moves on; --resume still trains on the commit the study began with, without fetching the new one
    new = hub.push(REPO, retrained(tmp_path / "repo", tmp_path / "v2"))
    n = len(hub.requests)
    r = optimize(env, tiny_data, space, out, "--num_trials", "2", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert header(out)["model_revision"] == hub.first
    assert adapter_base(out, 1) == (REPO, hub.first)
    assert hub.requests[n:] == []  # a recorded commit in the cache needs no request at all
    assert not (snapshot.parent / new).exists()

    # the final model trains on the study's commit too (its best_config.yaml sits beside the journal)
    final = tmp_path / "final"
    r = moopt(env, "train", "--config", out / "best_config.yaml", "--base_model", REPO, "--train_file", tiny_data["train"],
              "--validation_file", tiny_data["val"], "--test_file", tiny_data["val"], "--output_dir", final)
    assert r.returncode == 0, r.stderr[-3000:]
    final_adapter = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert (final_adapter["base_model_name_or_path"], final_adapter["revision"]) == (REPO, hub.first)
    assert hub.requests[n:] == []

    # a new study takes the new main
    assert resolve(env, REPO) == [str(snapshot.parent / new), new]


def test_second_resolve_uses_the_cache_without_the_network(hub, env):
    folder, sha = resolve(env, REPO)
    assert sha == hub.first and Path(folder, "model.safetensors").is_file()
    n = len(hub.requests)
    assert resolve(env, REPO, HF_HUB_OFFLINE="1") == [folder, sha]
    assert hub.requests[n:] == []
    hub.stop()
    assert resolve(env, REPO) == [folder, sha]  # hub unreachable: the cached main


@pytest.mark.parametrize("base_model, extra_env, fragments", [
    (GATED, {}, ["a gated repository", "request access at", "set HF_TOKEN"]),
    ("moopt-test/no-such-model", {}, ["no such repository", "check the id"]),
    (REPO, {"HF_HUB_OFFLINE": "1"}, ["HF_HUB_OFFLINE is set", "has no copy", "unset HF_HUB_OFFLINE"]),
])
def test_hub_failures_are_one_line_exit_2_nothing_written(hub, env, tiny_data, space, tmp_path, base_model, extra_env, fragments):
    out = tmp_path / "hpo"
    r = optimize(env, tiny_data, space, out, "--num_trials", "1", base_model=base_model, **extra_env)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"--base_model {base_model}" in errors[0], r.stderr
    assert all(f in errors[0] for f in fragments), errors[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_hub_unreachable_without_a_copy_is_one_line(hub, env):
    hub.stop()
    msg = resolve(env, REPO)
    assert isinstance(msg, str) and "cannot reach" in msg and "has no copy" in msg


def test_gated_repository_with_access_downloads_and_a_revoked_token_is_named(repo_folder, env, tmp_path):
    hub = FakeHub(granted_tokens=("hf_granted",), revoked_tokens=("hf_revoked",)).start()
    try:
        sha = hub.push(GATED, repo_folder, gated=True)
        env = {**env, "HF_ENDPOINT": hub.url}
        assert "set HF_TOKEN" in resolve(env, GATED, HF_TOKEN="hf_other")  # a token without access: 403
        folder, got = resolve(env, GATED, HF_TOKEN="hf_granted")
        assert got == sha and Path(folder, "model.safetensors").is_file()
        msg = resolve(env, REPO, HF_TOKEN="hf_revoked")
        assert "refused the token (HTTP 401)" in msg and "check HF_TOKEN" in msg
    finally:
        hub.stop()


def test_estimate_memory_of_a_hub_model_fetches_its_config_json_only(hub, env, tmp_path):
    """"Does it fit?" must not cost the model's weights (a 70B model's are 140 GB): config.json alone, and the
    hub's refusals are one line, exit 2, as for optimize."""
    r = moopt(env, "estimate-memory", "--base_model", REPO, "--device", "cpu", "--fit", "8")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "GiB" in r.stdout and "Traceback" not in r.stderr
    fetched = [p for m, p in hub.requests if "/resolve/" in p]
    assert fetched and all(p.endswith("/config.json") for p in fetched), fetched
    assert not list((tmp_path / "hf_home").rglob("*.safetensors"))
    n = len(hub.requests)
    hub.stop()  # unreachable: the cached config.json
    again = moopt(env, "estimate-memory", "--base_model", REPO, "--device", "cpu")
    assert again.returncode == 0 and hub.requests[n:] == [], again.stderr[-3000:]
    for base_model, extra_env, fragment in [
        ("moopt-test/never-fetched", {}, "cannot reach"),
        ("moopt-test/never-fetched", {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
    ]:
        r = moopt(env, "estimate-memory", "--base_model", base_model, "--device", "cpu", **extra_env)
        errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
        assert r.returncode == 2 and len(errors) == 1 and fragment in errors[0] and "has no copy of its config.json" in errors[0], r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("base_model, fragment", [(GATED, "a gated repository"), ("moopt-test/no-such-model", "no such repository")])
def test_estimate_memory_hub_refusals_are_one_line(hub, env, base_model, fragment):
    r = moopt(env, "estimate-memory", "--base_model", base_model, "--device", "cpu")
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert r.returncode == 2 and len(errors) == 1 and fragment in errors[0] and f"--base_model {base_model}" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def test_a_space_that_cannot_fit_the_limit_is_refused_before_the_weights_are_downloaded(hub, env, tiny_data, space,
                                                                                         tmp_path):
    """--memory_constraint under the smallest peak any configuration of the space could have (from config.json,
    before any activation): one line, exit 2, config.json alone fetched, nothing written. A limit it fits runs."""
    out = tmp_path / "hpo"
    r = optimize(env, tiny_data, space, out, "--num_trials", "1", "--memory_constraint", "0.01")
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-3000:]
    assert "--memory_constraint 0.01: no configuration of" in errors[0] and "the weights were not downloaded" in errors[0]
    assert "Traceback" not in r.stderr and not out.exists()
    fetched = [p for m, p in hub.requests if "/resolve/" in p]
    assert fetched and all(p.endswith("/config.json") for p in fetched), fetched
    r = optimize(env, tiny_data, space, out, "--num_trials", "1", "--memory_constraint", "8")
    assert r.returncode == 0, r.stderr[-3000:]
    assert any(p.endswith("/model.safetensors") for m, p in hub.requests if "/resolve/" in p)


@pytest.mark.parametrize("spoil, fragment", [
    ("gpt_neox", "model_type gpt_neox: moopt trains Llama-family decoders only"),
    ("no_tokenizer", "the repository has no tokenizer at its root"),
])
def test_a_hub_model_moopt_cannot_train_is_refused_before_its_weights_download(hub, env, repo_folder, tmp_path, spoil,
                                                                            fragment):
    """The refusal a study would give once the weights are in (another architecture, no tokenizer) comes from the
    config.json and the file listing: a 70B repository cost its download for one line."""
    if spoil == "gpt_neox":
        cfg = json.loads((repo_folder / "config.json").read_text())
        (repo_folder / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))
    else:
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (repo_folder / f).unlink(missing_ok=True)
    hub.push("moopt-test/other", repo_folder)
    msg = resolve(env, "moopt-test/other")
    assert isinstance(msg, str) and msg.startswith("--base_model moopt-test/other: ") and fragment in msg, msg
    assert not any(p.endswith(".safetensors") for m, p in hub.requests if m == "GET"), hub.requests


def test_a_recorded_commit_gone_from_the_hub_says_so(hub, env):
    """A study's commit that the hub no longer has (a force-push) and the cache lacks: the line said "the repository
    has no revision <sha>; check the revision" to a user who never gave one."""
    code = ("import sys\nfrom moopt.config import ConfigError\nfrom moopt.train.models import resolve_model_revision\n"
            "try:\n    resolve_model_revision(sys.argv[1], revision='0' * 40)\nexcept ConfigError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-P", "-c", code, REPO], check=False, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"--base_model {REPO}: the commit 000000000000 the study trained on is gone from "), r.stdout
    assert "--warm_start" in r.stdout
