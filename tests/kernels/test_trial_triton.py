"""A whole trial on the Triton path (interpreted on CPU): the path --kernels auto takes on a GPU."""

import pytest
import torch

from moopt.config import TrialConfig
from moopt.records import TrialSpec
from moopt.train.recipe import run_trial


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU trial on the Triton path needs the interpreter (no CUDA)")
def test_trial_runs_on_the_triton_path(tmp_path, tiny_model, tiny_data):
    """Without dropout the two paths compute the same thing (fp32 on CPU: the same eval_loss to 1e-6), so a kernel
    that trains wrong (a gradient lost or mis-scaled) fails here; it passed with dA and dB zeroed when it only
    asked for a finished trial."""
    cfg = TrialConfig.from_dict({
        "training": {"num_train_epochs": 1, "batch_size": 16, "learning_rate": 1e-2},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"max_seq_length": 32},
    })

    def trial(kernels):
        return run_trial(TrialSpec(number=0, config=cfg, base_model=str(tiny_model), train_file=str(tiny_data["train"]),
                                   validation_file=str(tiny_data["val"]), output_dir=str(tmp_path / kernels),
                                   kernels=kernels, device="cpu", save_adapter=False))

    res, plain = trial("triton"), trial("torch")
    assert res.state == "COMPLETE", res.error
    assert res.backend == "triton" and res.backend_reason == "--kernels triton" and plain.backend == "torch"
    assert res.steps == plain.steps == 3
    assert res.metrics["eval_loss"] == pytest.approx(plain.metrics["eval_loss"], rel=1e-6)
    base = run_trial(TrialSpec(number=-1, config=cfg, base_model=str(tiny_model), train_file=str(tiny_data["train"]),
                               validation_file=str(tiny_data["val"]), output_dir=str(tmp_path / "base"), kernels="torch",
                               device="cpu", save_adapter=False, baseline=True))
    assert abs(res.metrics["eval_loss"] - base.metrics["eval_loss"]) > 1e-3  # the LoRA update moved the model
