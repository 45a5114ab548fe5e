"""A whole trial on the Triton path (interpreted on CPU): the path --kernels auto takes on a GPU."""

import pytest
import torch

from moopt.config import TrialConfig
from moopt.records import TrialSpec
from moopt.train.recipe import run_trial


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU trial on the Triton path needs the interpreter (no CUDA)")
def test_trial_runs_on_the_triton_path(tmp_path, tiny_model, tiny_data):
    cfg = TrialConfig.from_dict({
        "training": {"num_train_epochs": 1, "batch_size": 16, "learning_rate": 1e-3},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": "all-linear"},
        "data": {"max_seq_length": 32},
    })
    spec = TrialSpec(number=0, config=cfg, base_model=str(tiny_model), train_file=str(tiny_data["train"]),
                     validation_file=str(tiny_data["val"]), output_dir=str(tmp_path), kernels="triton", device="cpu",
                     save_adapter=False)
    res = run_trial(spec)
    assert res.state == "COMPLETE", res.error
    assert res.backend == "triton" and res.backend_reason == "--kernels triton"
    assert res.steps == 3 and res.metrics["eval_loss"] > 0
