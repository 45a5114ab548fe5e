"""A Triton failure never loses a trial under --kernels auto: the trial falls back to the torch path
(one warning, recorded as backend / backend_reason); under --kernels triton it fails with the reason.

The CPU cannot run the compiled kernels, so the test makes the backend choice answer "triton" (as on a
CUDA machine) and every kernel launch fail as an over-sized launch does on a GPU (OutOfResources).
"""

import json
import sys
import warnings
from types import SimpleNamespace

import pytest

import moopt.train.lora
import moopt.train.recipe
from moopt.config import TrialConfig
from moopt.records import TrialSpec
from moopt.train.recipe import run_trial

SHARED_MEMORY_ERROR = "out of resource: shared memory, Required: 245760, Hardware limit: 232448"


class _FailingKernel:
    def __init__(self, calls: list):
        self.calls = calls

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append(grid)
            raise RuntimeError(SHARED_MEMORY_ERROR)

        return launch


@pytest.fixture
def triton_that_fails(monkeypatch) -> list:
    """Every Triton launch raises; the list collects the attempted launches."""
    import moopt_kernels.lora_linear  # noqa: F401  (the package exports a function of that name)

    ll, lm = sys.modules["moopt_kernels.lora_linear"], sys.modules["moopt_kernels.lora_multi"]

    def resolve(backend, device):
        return "torch" if backend == "torch" else "triton"

    for module in (ll, lm, moopt.train.lora):
        monkeypatch.setattr(module, "resolve_backend", resolve)
    calls: list = []
    kernels = SimpleNamespace(**{k: _FailingKernel(calls) for k in ("down", "grad_out", "grad_in", "mask")})
    monkeypatch.setattr(ll, "_kernels", lambda: kernels)
    return calls


def spec(tmp_path, tiny_model, tiny_data, kernels: str, name: str) -> TrialSpec:
    cfg = TrialConfig.from_dict({
        "training": {"num_train_epochs": 1, "batch_size": 8, "gradient_accumulation_steps": 2, "learning_rate": 1e-3},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"max_seq_length": 32},
    })
    return TrialSpec(number=0, config=cfg, base_model=str(tiny_model), train_file=str(tiny_data["train"]),
                     validation_file=str(tiny_data["val"]), output_dir=str(tmp_path / name), kernels=kernels,
                     device="cpu", save_adapter=False)


def test_auto_falls_back_to_torch_with_one_warning(tmp_path, tiny_model, tiny_data, triton_that_fails):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_trial(spec(tmp_path, tiny_model, tiny_data, "auto", "auto"))
    assert res.state == "COMPLETE", res.error
    assert res.backend == "torch"
    assert "triton failed at step 1" in res.backend_reason and SHARED_MEMORY_ERROR in res.backend_reason
    assert "_lora_" not in res.backend_reason and "triton kernel down" in res.backend_reason
    ours = [w for w in caught if "triton failed" in str(w.message)]
    assert len(ours) == 1
    assert len(triton_that_fails) == 1  # the first launch failed; nothing tried Triton again
    saved = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert saved["backend"] == "torch" and saved["backend_reason"] == res.backend_reason


def test_fallback_trial_equals_a_torch_trial(tmp_path, tiny_model, tiny_data, triton_that_fails):
    """The failed step is redone from clean gradients: same losses as --kernels torch (no dropout)."""
    with pytest.warns(RuntimeWarning, match=r"^--kernels auto: triton failed at step 1, torch from there on: triton kernel"):
        fell_back = run_trial(spec(tmp_path, tiny_model, tiny_data, "auto", "auto"))
    plain = run_trial(spec(tmp_path, tiny_model, tiny_data, "torch", "torch"))
    assert plain.backend == "torch" and plain.backend_reason == "--kernels torch"
    assert fell_back.steps == plain.steps > 1
    assert fell_back.metrics["eval_loss"] == pytest.approx(plain.metrics["eval_loss"], rel=1e-6)


def test_forced_triton_fails_the_trial_with_the_reason(tmp_path, tiny_model, tiny_data, triton_that_fails):
    res = run_trial(spec(tmp_path, tiny_model, tiny_data, "triton", "triton"))
    assert res.state == "FAIL"
    assert res.error.startswith("TritonKernelError: triton kernel down") and SHARED_MEMORY_ERROR in res.error
    assert res.backend == "triton" and res.backend_reason == "--kernels triton"


def test_auto_on_cpu_says_why_torch_runs(tmp_path, tiny_model, tiny_data):
    res = run_trial(spec(tmp_path, tiny_model, tiny_data, "auto", "cpu"))
    assert res.state == "COMPLETE" and res.backend == "torch"
    assert res.backend_reason.startswith("--kernels auto: ")


@pytest.fixture
def triton_backward_fails(monkeypatch) -> None:
    """Forward and dS/dB run (torch math under the "triton" label); the dA/dX kernel raises in backward,
    inside autograd, as a launch failure does there on a GPU."""
    import moopt_kernels.lora_linear  # noqa: F401
    from moopt_kernels import TritonKernelError

    ll, lm = sys.modules["moopt_kernels.lora_linear"], sys.modules["moopt_kernels.lora_multi"]

    def resolve(backend, device):
        return "torch" if backend == "torch" else "triton"

    def as_torch(fn):
        return lambda *args, **kw: fn(*args[:-1], "torch", **kw) if args[-1] == "triton" else fn(*args, **kw)

    real_grad_in, real_grad_out = ll.lora_grad_in, ll.lora_grad_out

    def grad_in(x2, a, ds, dx, seed, p, backend):
        if backend == "triton":
            raise TritonKernelError(f"triton kernel grad_in (BLOCK_R=16) failed: RuntimeError: {SHARED_MEMORY_ERROR}")
        return real_grad_in(x2, a, ds, dx, seed, p, backend)

    for module in (ll, lm, moopt.train.lora):
        monkeypatch.setattr(module, "resolve_backend", resolve)
    for module in (ll, lm):
        monkeypatch.setattr(module, "lora_down", as_torch(ll.lora_down))
        monkeypatch.setattr(module, "lora_grad_in", grad_in)
    monkeypatch.setattr(ll, "lora_grad_out", lambda g2, b, s, scaling, backend, ds_out=None:
                        real_grad_out(g2, b, s, scaling, "torch", ds_out))
    monkeypatch.setattr(lm, "lora_grad_out", ll.lora_grad_out)


def test_failure_inside_backward_falls_back_too(tmp_path, tiny_model, tiny_data, triton_backward_fails):
    with pytest.warns(RuntimeWarning, match=r"^--kernels auto: triton failed at step 1, torch from there on: .*grad_in"):
        res = run_trial(spec(tmp_path, tiny_model, tiny_data, "auto", "auto"))
    assert res.state == "COMPLETE", res.error
    assert res.backend == "torch" and "triton kernel grad_in" in res.backend_reason
    plain = run_trial(spec(tmp_path, tiny_model, tiny_data, "torch", "torch"))
    assert res.metrics["eval_loss"] == pytest.approx(plain.metrics["eval_loss"], rel=1e-6)


@pytest.fixture
def triton_fails_when(monkeypatch):
    """The kernels run torch math under the "triton" label; ``set(predicate)``: lora_down (every LoRA forward) raises
    a TritonKernelError where ``predicate(state)`` holds. ``state``: whether a backward has run yet, whether an
    evaluation runs (autograd runs a Function's forward without grad mode either way)."""
    import moopt_kernels.lora_linear  # noqa: F401
    from moopt_kernels import TritonKernelError

    ll, lm = sys.modules["moopt_kernels.lora_linear"], sys.modules["moopt_kernels.lora_multi"]
    real_down, real_in, real_out = ll.lora_down, ll.lora_grad_in, ll.lora_grad_out
    state = {"backward_ran": False, "evaluating": False, "when": lambda s: False}
    real_evaluate = moopt.train.recipe.evaluate

    def evaluate(*args, **kw):
        state["evaluating"] = True
        try:
            return real_evaluate(*args, **kw)
        finally:
            state["evaluating"] = False

    monkeypatch.setattr(moopt.train.recipe, "evaluate", evaluate)

    def down(x2, a, seed, p, backend):
        if backend == "triton" and state["when"](state):
            raise TritonKernelError(f"triton kernel down (BLOCK_R=4) failed: RuntimeError: {SHARED_MEMORY_ERROR}")
        return real_down(x2, a, seed, p, "torch")

    def grad_in(x2, a, ds, dx, seed, p, backend):
        state["backward_ran"] = True
        return real_in(x2, a, ds, dx, seed, p, "torch")

    for module in (ll, lm, moopt.train.lora):
        monkeypatch.setattr(module, "resolve_backend", lambda backend, device: "torch" if backend == "torch" else "triton")
    for module in (ll, lm):
        monkeypatch.setattr(module, "lora_down", down)
        monkeypatch.setattr(module, "lora_grad_in", grad_in)
        monkeypatch.setattr(module, "lora_grad_out", lambda g2, b, s, scaling, backend, ds_out=None:
                            real_out(g2, b, s, scaling, "torch", ds_out))
    return lambda predicate: state.update(when=predicate)


def test_a_failure_in_the_second_micro_batch_redoes_the_step_from_clean_gradients(tmp_path, tiny_model, tiny_data,
                                                                                  triton_fails_when):
    """Accumulation over 2 micro-batches: the first trains on triton, the second's forward fails (as the int32-offset
    check does on a longer batch). The step is redone on torch from zeroed gradients, or the first micro-batch's
    gradient would count twice: the same eval_loss as a torch trial."""
    triton_fails_when(lambda s: s["backward_ran"] and not s["evaluating"])
    with pytest.warns(RuntimeWarning, match=r"^--kernels auto: triton failed at step 1, torch from there on"):
        res = run_trial(spec(tmp_path, tiny_model, tiny_data, "auto", "auto"))
    assert res.state == "COMPLETE" and res.backend == "torch", res.error
    plain = run_trial(spec(tmp_path, tiny_model, tiny_data, "torch", "torch"))
    assert res.metrics["eval_loss"] == pytest.approx(plain.metrics["eval_loss"], rel=1e-6)


def test_a_failure_in_the_evaluation_says_so_and_that_training_ran_on_triton(tmp_path, tiny_model, tiny_data,
                                                                           triton_fails_when):
    """It read "triton failed at step 4" of 3 steps, as if training had moved to torch."""
    triton_fails_when(lambda s: s["evaluating"])
    with pytest.warns(RuntimeWarning, match=r"^--kernels auto: triton failed in the evaluation \(16 validation examples\) "
                                            r"after 3 steps on triton, torch from there on: triton kernel down"):
        res = run_trial(spec(tmp_path, tiny_model, tiny_data, "auto", "auto"))
    assert res.state == "COMPLETE" and res.steps == 3 and res.backend == "torch", res.error


def test_why_auto_runs_torch_and_which_path_a_study_records(monkeypatch):
    """With TRITON_INTERPRET=1 on a CUDA machine, auto runs torch: the reason read "no CUDA device (cuda)"; and
    without triton installed the study recorded the path of an auto trial on CUDA as triton (a warm start's key)."""
    import moopt_kernels._backend as backend_mod
    import torch

    from moopt.study.outdir import kernel_path
    from moopt.train.recipe import backend_reason

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend_reason("auto", "torch", torch.device("cuda")) == (
        "--kernels auto: TRITON_INTERPRET=1 is set (the interpreter runs on CPU tensors)")
    assert kernel_path("auto", "cuda") == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert backend_reason("auto", "torch", torch.device("cpu")) == "--kernels auto: no CUDA device (cpu)"
    assert kernel_path("auto", "cuda") == ("triton" if backend_mod.HAS_TRITON else "torch")
    monkeypatch.setattr(backend_mod, "HAS_TRITON", False)
    assert kernel_path("auto", "cuda") == "torch" and kernel_path("triton", "cuda") == "triton"
