"""Warm workers: a worker keeps its base model between trials, and a trial's results are the same as
in a fresh process; a failed trial costs only its worker; a finished trial's memory is released."""

from __future__ import annotations

import gc
import io
import weakref

import pytest
import torch
from rich.console import Console

from moopt.config import TrialConfig
from moopt.records import TrialSpec, TrialState
from moopt.train.recipe import run_trial
from moopt.train.warm import WarmBase, checkpointing_on

CONFIGS = [  # different r, targets, dropout, checkpointing, packing: nothing may leak from one trial to the next
    {"training": {"learning_rate": 3e-3, "batch_size": 8, "num_train_epochs": 1},
     "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": "all-linear"},
     "data": {"max_seq_length": 32}, "model": {"gradient_checkpointing": True}},
    {"training": {"learning_rate": 1e-3, "batch_size": 4, "num_train_epochs": 1},
     "lora": {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": "qv"},
     "data": {"max_seq_length": 32, "packing": False}},
]


def spec(i, cfg, tiny_model, tiny_data, tmp_path, seed=7):
    return TrialSpec(number=i, config=TrialConfig.from_dict(cfg), base_model=str(tiny_model),
                     train_file=str(tiny_data["train"]), validation_file=str(tiny_data["val"]),
                     output_dir=str(tmp_path / f"t{i}"), seed=seed, kernels="torch", device="cpu", save_adapter=False)


def test_a_warm_trial_gives_what_a_fresh_one_gives(tiny_model, tiny_data, tmp_path):
    warm = WarmBase()
    base_before = None
    results = []
    for i, cfg in enumerate(CONFIGS + CONFIGS[::-1]):
        r = run_trial(spec(i, cfg, tiny_model, tiny_data, tmp_path), warm=warm)
        assert r.state == TrialState.COMPLETE, r.error
        results.append(r)
        warm.release()
        state = {k: v.clone() for k, v in warm.model.state_dict().items()}
        if base_before is None:
            base_before = state
        assert state.keys() == base_before.keys()  # the LoRA modules are out again
        assert all(torch.equal(state[k], base_before[k]) for k in state)  # base weights untouched
    assert warm.loads == 1 and [r.warm for r in results] == [False, True, True, True]
    for i, cfg in enumerate(CONFIGS + CONFIGS[::-1]):
        fresh = run_trial(spec(i, cfg, tiny_model, tiny_data, tmp_path / "fresh"))
        assert fresh.metrics["eval_loss"] == results[i].metrics["eval_loss"]
        assert fresh.metrics["eval_accuracy"] == results[i].metrics["eval_accuracy"]
        assert fresh.steps == results[i].steps and fresh.train_tokens == results[i].train_tokens


def test_release_frees_what_the_trial_held(tiny_model, tiny_data, tmp_path):
    from moopt.train.lora import LoRALinear

    warm = WarmBase()
    run_trial(spec(0, CONFIGS[0], tiny_model, tiny_data, tmp_path), warm=warm)
    loras = [weakref.ref(m.lora_A) for m in warm.model.modules() if isinstance(m, LoRALinear)]
    assert loras
    warm.release()
    gc.collect()
    assert all(ref() is None for ref in loras)  # LoRA weights, their grads and AdamW's states are gone
    assert not any(isinstance(m, LoRALinear) for m in warm.model.modules())
    assert not checkpointing_on(warm.model)


def test_the_peak_restarts_for_each_trial():
    from moopt.memory.measure import peak_memory_gb, reset_peak

    block = bytearray(300 * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page
    high = peak_memory_gb("cpu")
    del block
    gc.collect()
    reset_peak("cpu")
    assert peak_memory_gb("cpu") < high - 0.2


def test_a_warm_trial_peak_includes_the_base_models_load():
    """A fresh process's peak includes loading its base model; a warm worker resets the peak after
    taking the model, so its trials' peak_memory_gb must still count the load (the estimate and the
    probe do). Here the load touches 300 MiB it frees again."""
    from moopt.memory.measure import GIB, peak_memory_gb, reset_peak

    def load(base_model, cfg, device):
        block = bytearray(300 * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page
        del block
        return object(), object()

    warm = WarmBase()
    warm.model_and_tokenizer("m", TrialConfig(), torch.device("cpu"), load)
    gc.collect()
    reset_peak("cpu")  # as run_trial does once it has the model
    assert warm.load_peak_bytes / GIB > peak_memory_gb("cpu") + 0.2  # the reset dropped the load's peak ...
    assert warm.trial_peak_gb(torch.device("cpu")) == warm.load_peak_bytes / GIB  # ... the trial's peak keeps it
    warm.drop()
    assert warm.load_peak_bytes == 0


def test_a_cpu_memory_budget_runs_each_trial_in_a_fresh_process(tmp_path, monkeypatch):
    """Under --memory_constraint on a CPU a warm worker's RSS carries the trials before it, so each
    trial gets a fresh process; on a GPU, or without a budget, workers stay warm."""
    import moopt.study.placement as placement
    from moopt.search.objectives import parse_objectives
    from moopt.search.space import parse_space
    from moopt.study.scheduler import Study, StudyConfig

    def cfg(budget, objective="eval_loss"):
        return StudyConfig(base_model="m", model_path="m", train_file="t.jsonl", validation_file="v.jsonl",
                           output_dir=str(tmp_path), num_trials=1, objectives=parse_objectives(objective, None),
                           space=parse_space({"training": {"learning_rate": 1e-3}}, source="<test>"),
                           memory_constraint_gb=budget)

    console = Console(file=io.StringIO())
    monkeypatch.setattr(placement, "_gpu_capacities", lambda: [])
    assert Study(cfg(None), console=console).warm_workers()
    assert Study(cfg(None, "multi:eval_loss,eval_accuracy"), console=console).warm_workers()
    assert not Study(cfg(8.0), console=console).warm_workers()
    assert "--memory_constraint on a CPU: a fresh process per trial" in console.file.getvalue()
    assert "mmap threshold fixed" in console.file.getvalue()
    # peak memory as an objective: a warm worker's peak would rank trials by the order they ran in
    assert not Study(cfg(None, "multi:eval_loss,peak_memory_gb"), console=console).warm_workers()
    assert "peak_memory_gb as an objective on a CPU: a fresh process per trial" in console.file.getvalue()
    # ... and those processes fix malloc's thresholds (moopt.memory.rss.steady_heap)
    assert Study(cfg(8.0), console=console).peak_rss_measured() == "--memory_constraint"
    assert Study(cfg(None), console=console).peak_rss_measured() is None
    monkeypatch.setattr(placement, "_gpu_capacities", lambda: [("0", 80.0)])
    assert Study(cfg(8.0), console=console).warm_workers()
    assert Study(cfg(None, "multi:eval_loss,peak_memory_gb"), console=console).warm_workers()
    assert Study(cfg(8.0), console=console).peak_rss_measured() is None


def study(tiny_model, tiny_data, out, warm: bool, fault: str | None, monkeypatch):
    from moopt.search.objectives import parse_objectives
    from moopt.search.space import parse_space
    from moopt.study.executor import LocalExecutor
    from moopt.study.scheduler import Study, StudyConfig

    if fault:
        monkeypatch.setenv("MOOPT_INJECT_FAULT", fault)
    else:
        monkeypatch.delenv("MOOPT_INJECT_FAULT", raising=False)
    space = parse_space({"training": {"learning_rate": {"type": "log_uniform", "min": 1e-4, "max": 3e-2},
                                      "batch_size": {"type": "categorical", "values": [4, 8]}, "num_train_epochs": 1},
                         "lora": {"r": {"type": "categorical", "values": [4, 8]}, "dropout": 0.05},
                         "data": {"max_seq_length": 32}}, source="<test>")
    cfg = StudyConfig(base_model=str(tiny_model), model_path=str(tiny_model), train_file=str(tiny_data["train"]),
                      validation_file=str(tiny_data["val"]), output_dir=str(out), num_trials=3,
                      objectives=parse_objectives("eval_loss", None), space=space, seed=3, kernels="torch")
    made = []

    def executor(**kw):
        made.append(LocalExecutor(warm=warm, **kw))
        return made[-1]

    Study(cfg, console=Console(file=io.StringIO()), executor=executor).run()
    from moopt.journal import replay

    return made[0], {n: e for n, e in replay(out).finished.items()}


@pytest.mark.slow
def test_a_warm_study_uses_one_process_and_matches_a_cold_one(tiny_model, tiny_data, tmp_path, monkeypatch):
    ex_warm, warm = study(tiny_model, tiny_data, tmp_path / "warm", True, None, monkeypatch)
    ex_cold, cold = study(tiny_model, tiny_data, tmp_path / "cold", False, None, monkeypatch)
    assert ex_warm.started == 1  # the base model's evaluation and 3 trials, one process
    assert ex_cold.started == 4
    assert [warm[n].warm for n in range(3)] == [True, True, True]
    assert all(warm[n].metrics["eval_loss"] == cold[n].metrics["eval_loss"] for n in range(3))


@pytest.mark.slow
def test_a_failed_trial_costs_only_its_worker(tiny_model, tiny_data, tmp_path, monkeypatch):
    ex, ends = study(tiny_model, tiny_data, tmp_path / "fault", True, "1:exception", monkeypatch)
    assert ends[1].state == TrialState.FAIL and "injected fault" in ends[1].error
    assert ends[0].state == ends[2].state == TrialState.COMPLETE
    assert ex.started == 2 and not ends[2].warm  # trial 2 ran in a new worker, which loaded the model again


def _one_trial(tiny_model, tiny_data, out, **kw):
    """A LocalExecutor running one short trial of the tiny model; its result."""
    from moopt.config import TrialConfig
    from moopt.records import TrialSpec
    from moopt.study.executor import LocalExecutor, wait_for_any
    from moopt.study.placement import plan_slots

    cfg = TrialConfig.from_dict({"training": {"batch_size": 4, "num_train_epochs": 1}, "data": {"max_seq_length": 32}})
    spec = TrialSpec(number=0, config=cfg, base_model=str(tiny_model), train_file=str(tiny_data["train"]),
                     validation_file=str(tiny_data["val"]), output_dir=str(out), seed=0, kernels="torch", save_adapter=False)
    ex = LocalExecutor(**kw)
    try:
        ex.submit(spec, plan_slots(1)[0])
        return wait_for_any(ex)
    finally:
        ex.close()


def test_a_failing_progress_display_does_not_stop_the_trial(tiny_model, tiny_data, tmp_path, capsys):
    def broken(number, msg):
        raise ValueError("display bug")

    res = _one_trial(tiny_model, tiny_data, tmp_path / "t", on_progress=broken)
    assert res.state == TrialState.COMPLETE, res.error
    err = capsys.readouterr().err
    assert err.count("moopt: progress display failed (ValueError: display bug); trials go on") == 1


def test_a_failure_in_the_studys_watch_of_a_trial_fails_that_trial_with_the_reason(tiny_model, tiny_data, tmp_path,
                                                                                  monkeypatch):
    """Not a hang, and not 'killed by SIGKILL (likely out of memory)': the watcher's own error."""
    from moopt.study import executor

    def result_that_breaks(cls, ev):  # reading the worker's result; the FAIL built in its place is built directly
        raise TypeError("injected")

    monkeypatch.setattr(executor.TrialResult, "from_event", classmethod(result_that_breaks))
    res = _one_trial(tiny_model, tiny_data, tmp_path / "t")
    assert res.state == TrialState.FAIL and res.error == "the study's watch of this trial failed (TypeError: injected)"
    assert not res.oom


def test_the_executor_says_whether_a_trial_would_find_its_base_model_warm(tiny_model, tiny_data, tmp_path):
    """The time budget's prediction counts a process start and a model load for a trial that will pay them (the first
    after a --resume; a slot of its own): before any trial none is warm; after one, its kind (dtype, quantisation) is,
    another kind is not; with --no_warm_workers never."""
    from moopt.records import TrialSpec
    from moopt.study.executor import LocalExecutor, wait_for_any
    from moopt.study.placement import plan_slots

    cfg = TrialConfig.from_dict({"training": {"batch_size": 4, "num_train_epochs": 1}, "data": {"max_seq_length": 32}})
    other = TrialConfig.from_dict({"model": {"dtype": "float32"}}, base=cfg)
    for warm in (True, False):
        ex = LocalExecutor(warm=warm)
        try:
            assert not ex.warm_ready(cfg)
            ex.submit(TrialSpec(number=0, config=cfg, base_model=str(tiny_model), train_file=str(tiny_data["train"]),
                                validation_file=str(tiny_data["val"]), output_dir=str(tmp_path / f"t{warm}"), seed=0,
                                kernels="torch", save_adapter=False), plan_slots(1)[0])
            assert wait_for_any(ex).state == TrialState.COMPLETE
            assert ex.warm_ready(cfg) == warm and not ex.warm_ready(other)
        finally:
            ex.close()


def test_a_checkpointed_trial_warns_nothing(tiny_model, tiny_data, tmp_path):
    """transformers 5.2x deprecates gradient_checkpointing_enable/_disable: each checkpointed trial's log.txt and moopt
    train's progress carried its FutureWarning. The trial and the warm worker's release use the new names."""
    import warnings

    warm = WarmBase()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        r = run_trial(spec(0, CONFIGS[0], tiny_model, tiny_data, tmp_path), warm=warm)
        warm.release()
    assert r.state == TrialState.COMPLETE, r.error
    assert not checkpointing_on(warm.model)
    assert not [w for w in seen if "checkpointing" in str(w.message)], [str(w.message) for w in seen]


def test_a_warm_worker_tokenises_a_file_once_whatever_the_trials_max_seq_length(tiny_model, tiny_data, monkeypatch):
    """A space searching max_seq_length made a warm worker tokenise the whole training file again for each length
    (6 s a trial on 100k records) and hold a copy per length: it keeps the untruncated examples once and cuts them."""
    from transformers import AutoTokenizer

    from moopt.train import warm as warm_mod
    from moopt.train.data import tokenize_file

    warm = WarmBase()
    warm.key, warm.tokenizer = "k", AutoTokenizer.from_pretrained(tiny_model)
    calls = []
    real = warm_mod.tokenize_records
    monkeypatch.setattr(warm_mod, "tokenize_records", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    for length in (10, 11, 32, 10):  # 10 cuts every example inside its completion; 11 keeps them whole
        got, want = warm.tokenized(str(tiny_data["train"]), length), tokenize_file(tiny_data["train"], warm.tokenizer, length)
        assert [e.input_ids.tolist() for e in got.examples] == [e.input_ids.tolist() for e in want.examples]
        assert [e.labels.tolist() for e in got.examples] == [e.labels.tolist() for e in want.examples]
        assert (got.n_truncated, got.n_tokens, got.n_label_tokens, got.n_unlabelled) == \
            (want.n_truncated, want.n_tokens, want.n_label_tokens, want.n_unlabelled)
    assert calls == [str(tiny_data["train"])]
