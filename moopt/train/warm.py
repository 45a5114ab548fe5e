"""A worker's warm state: the loaded (and quantised) base model and the tokenised data, kept between
the trials a worker process runs one after another.

LoRA never changes the base weights, so a trial needs only fresh LoRA modules, optimizer and RNG
state (``run_trial`` attaches and seeds them for every trial) and the base model as it was loaded:
:meth:`WarmBase.release` takes the trial's LoRA modules out again, turns gradient checkpointing off
and frees what the trial allocated. A worker holds one base model, keyed by what loading depends on
(folder, dtype, quantisation, device); another key replaces it.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import torch

from moopt.config import TrialConfig, resolve_dtype
from moopt.train.data import TokenizedSet, cut_examples, read_records, tokenize_records


def base_key(base_model: str, cfg: TrialConfig, device: torch.device) -> tuple:
    """What a loaded base model depends on (gradient checkpointing is toggled per trial)."""
    return (str(base_model), resolve_dtype(cfg.model.dtype, device.type), cfg.model.quantization, str(device))


class WarmBase:
    def __init__(self):
        self.key: tuple | None = None
        self.model = None
        self.tokenizer = None
        self._data: dict[tuple, TokenizedSet] = {}
        self.loads = 0  # base models loaded by this worker (1 for a worker that ran only one key)
        # the peak memory of loading the current base model (moopt.memory.measure.measure_peak right after
        # the load): part of every trial's peak_memory_gb, as it is of a fresh process's (:meth:`trial_peak_gb`)
        self.load_peak_bytes = 0

    def model_and_tokenizer(self, base_model: str, cfg: TrialConfig, device: torch.device, load):
        """The base model for this trial, loaded by ``load(base_model, cfg, device)`` once per key;
        (model, tokenizer, loaded_now)."""
        key = base_key(base_model, cfg, device)
        if key == self.key:
            return self.model, self.tokenizer, False
        from moopt.memory.measure import measure_peak, reset_peak

        self.drop()
        if self.loads:  # a fresh process's peak starts at its imports; a later load's starts here
            reset_peak(device.type)
        self.model, self.tokenizer = load(base_model, cfg, device)
        self.load_peak_bytes = measure_peak(device.type).peak_bytes
        self.key = key
        self.loads += 1
        return self.model, self.tokenizer, True

    def trial_peak_gb(self, device: torch.device) -> float:
        """A trial's ``peak_memory_gb`` in this worker: its own peak (the caller reset the peak after taking
        the base model) and at least the base model's load. A fresh process measures both, and so do the
        memory probe and the estimate: without the load, a warm trial on a CPU reported 0.92 GiB where a
        fresh process peaks at 1.27 (SmolLM2 in bf16 from its fp32 file, the load's transient), and
        calibrating the gate on such pairs let trials over the budget through."""
        from moopt.memory.measure import GIB, measure_peak

        return max(measure_peak(device.type).peak_bytes, self.load_peak_bytes) / GIB

    def tokenized(self, path: str, max_seq_length: int, beat=None) -> TokenizedSet:
        """``tokenize_file`` of ``path``: its untruncated examples kept per (file, size, mtime, tokenizer), cut for
        each trial's ``max_seq_length`` (a space searching it made the worker tokenise the whole file again for each
        length, and hold a copy per length)."""
        st = os.stat(path)
        key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, self.key)
        if key not in self._data:
            records = read_records(path)
            self._data[key] = list(tokenize_records(records, self.tokenizer, path, beat=beat))
            if beat is not None:
                beat(len(records), len(records))
        return cut_examples(self._data[key], max_seq_length, path)

    def release(self) -> None:
        """Undo a trial: its LoRA modules out (the base linears back in place), gradient checkpointing
        off, and the memory it held freed (the caller has dropped its optimizer and tensors)."""
        from moopt.train.lora import detach_lora

        if self.model is None:
            return
        detach_lora(self.model)
        if checkpointing_on(self.model):
            disable_checkpointing(self.model)
        self.model.zero_grad(set_to_none=True)
        self.model.eval()
        free_memory()

    def drop(self) -> None:
        self.key = self.model = self.tokenizer = None
        self.load_peak_bytes = 0
        self._data.clear()
        free_memory()


def free_memory() -> None:
    """Collect what nothing references any more and give it back: the CUDA cache to the driver, the
    C heap's free pages to the system (so the worker's RSS falls back to its base model's)."""
    from moopt.memory.rss import trim_heap

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trim_heap()


def checkpointing_on(model) -> bool:
    """Whether gradient checkpointing is on: transformers >= 5.2x names it ``is_activation_checkpointing`` (its old
    name warns, a FutureWarning in every trial's log), earlier ones ``is_gradient_checkpointing``."""
    on = getattr(model, "is_activation_checkpointing", None)
    return bool(on if on is not None else getattr(model, "is_gradient_checkpointing", False))


def enable_checkpointing(model) -> None:
    """Gradient checkpointing on, non-reentrant: transformers >= 5.2x names it ``activation_checkpointing_enable`` (its
    old name, gradient_checkpointing_enable, warns: a FutureWarning in every checkpointed trial's log.txt and in the
    middle of moopt train's progress), earlier ones ``gradient_checkpointing_enable``."""
    on = getattr(model, "activation_checkpointing_enable", None)
    if on is not None:
        on(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def disable_checkpointing(model) -> None:
    off = getattr(model, "activation_checkpointing_disable", None)
    (off if off is not None else model.gradient_checkpointing_disable)()
