"""One trial, top to bottom: load model -> attach LoRA -> load data -> train -> evaluate -> save.

``run_trial(spec, reporter)`` is the whole recipe. It runs inside a worker process (see
``moopt/train/worker.py``) so that a crash or an out-of-memory kills only this trial; the ``reporter``
carries progress, rung evaluations (for pruning) and the result back to the study.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import torch

from moopt.config import EAGER_MAX_TOKENS, TrialConfig, attention_implementation, resolve_dtype
from moopt.memory.measure import is_out_of_memory, peak_memory_gb, reset_peak
from moopt.memory.rss import trim_heap_if_steady
from moopt.records import FALLBACK, TIME_BUDGET_CUT, TrialResult, TrialSpec, TrialState
from moopt.search.pruner import rung_eval_size
from moopt.train.data import TokenizedSet, collate, micro_batches, n_micro_batches, subset, tokenize_file
from moopt.train.models import import_bitsandbytes_offline, no_transformers_bars
from moopt.train.step import StepResult, causal_lm_loss, check_finite, train_step
from moopt.train.warm import WarmBase, enable_checkpointing


class Reporter(Protocol):
    def progress(self, step: int, total: int, loss: float, tokens_per_s: float | None = None,
                 step_s: float | None = None) -> None:
        """After each optimizer step: train loss, training tokens/s so far (evaluations excluded),
        and the wall seconds of this step."""
        ...

    def rung(self, step: int, metrics: dict[str, float], rung: int) -> bool:
        """Intermediate evaluation at rung number ``rung``; return False to stop (pruned)."""
        ...

    def phase(self, name: str, detail: str = "") -> None:
        """The trial moves on: loading model | tokenising | training | evaluating | saving."""
        ...

    def heartbeat(self, done: int, total: int) -> None:
        """Still alive inside a long phase (evaluation: ``done`` of ``total`` batches)."""
        ...


class NullReporter:
    def progress(self, step, total, loss, tokens_per_s=None, step_s=None):
        pass

    def rung(self, step, metrics, rung):
        return True

    def phase(self, name, detail=""):
        pass

    def heartbeat(self, done, total):
        pass


def rung_steps(total_steps: int, fractions: tuple[float, ...]) -> dict[int, int]:
    """{optimizer step: rung index} for rungs at ``fractions`` of ``total_steps`` (none at the end: the
    final evaluation decides). A rung's step is rounded up, so a trial has run at least its fraction there (the
    pruner's bound acts only from rungs at >= 1/5: rounded down, the 1/4 rung of a 6-step trial fell on step 1, 17%).
    Two fractions that round to the same step keep the later rung."""
    import math

    at = {}
    for i, f in enumerate(fractions):
        step = max(1, math.ceil(total_steps * f - 1e-9))
        if step < total_steps:
            at[step] = i
    return at


def pick_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def bnb_config(quantization: str, compute_dtype: torch.dtype):
    """4bit: NF4 with double quantisation (QLoRA); 8bit: LLM.int8 with int8-only weights."""
    import logging

    from transformers import BitsAndBytesConfig

    # bitsandbytes' 8-bit matmul logs on every call that fp32 inputs are cast to fp16 for quantisation
    # (its CPU backend's import-time warning is dropped in moopt/__init__.py).
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def longest_row(data: TokenizedSet) -> int:
    """Tokens of the longest example (after truncation to max_seq_length)."""
    return max((len(e.input_ids) for e in data.examples), default=0)


def use_attention(model, device: torch.device, dtype: str, row_tokens: int) -> str:
    """Set the model's attention implementation for rows of at most ``row_tokens`` tokens
    (:func:`moopt.config.attention_implementation`) and return it."""
    return _switch_attention(model, attention_implementation(device.type, dtype, row_tokens))


def _switch_attention(model, impl: str) -> str:
    if getattr(model.config, "_attn_implementation", None) != impl:
        model.set_attn_implementation(impl)  # ~0.3 ms: it sets the config the attention layers read
    return impl


class BatchAttention:
    """Chooses the attention implementation of each batch from its own width
    (:func:`moopt.config.attention_implementation`): a study's rows are as wide as their batch's longest
    example, or its packed rows, which is often far below ``max_seq_length``, and bf16 on a CPU runs
    short rows faster eager, long ones faster with SDPA. Called before each forward (training and
    evaluation); a warm worker's model carries the previous trial's choice, so every batch sets its own.

    Memory: eager keeps ``rows × heads × width²`` attention probabilities per layer. The memory gate
    estimated and probed the trial's widest padded batch, ``batch × longest`` (``longest`` = the longest
    example after truncation), and :func:`moopt.memory.estimate.estimate_peak` counts eager's
    probabilities for ``batch × min(longest, EAGER_MAX_TOKENS)``; a batch whose eager probabilities would
    exceed that runs SDPA. Packed rows are never wider than their batch's longest example, nor more than its
    examples (:func:`moopt.train.data.micro_batches`), so a training batch stays within the padded shape the gate
    measured.
    """

    def __init__(self, model, device: torch.device, dtype: str, batch: int, longest: int):
        self.model, self.device, self.dtype = model, device, dtype
        self.score_budget = batch * min(longest, EAGER_MAX_TOKENS) ** 2
        self.ran: dict[str, int] = {}  # implementation -> batches it ran

    def __call__(self, batch: dict[str, torch.Tensor]) -> str:
        rows, width = batch["input_ids"].shape
        impl = attention_implementation(self.device.type, self.dtype, width)
        if impl == "eager" and rows * width * width > self.score_budget:
            impl = "sdpa"
        self.ran[impl] = self.ran.get(impl, 0) + 1
        return _switch_attention(self.model, impl)

    @property
    def summary(self) -> str | None:
        """What ran: "eager", "sdpa", or both with the share of batches eager ran ("eager 83%+sdpa")."""
        if len(self.ran) < 2:
            return next(iter(self.ran), None)
        return f"eager {100 * self.ran['eager'] / sum(self.ran.values()):.0f}%+sdpa"


def load_model_and_tokenizer(path: str, cfg: TrialConfig, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moopt.model_files import model_folder_for

    dtype_name = resolve_dtype(cfg.model.dtype, device.type)
    dtype = getattr(torch, dtype_name)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # safetensors where the folder has them, else pytorch_model.bin (torch.load with weights_only, transformers' default)
    kwargs = dict(dtype=dtype, local_files_only=True, trust_remote_code=False,
                  attn_implementation="sdpa")
    # transformers' "Loading weights" bar: the caller's "loading model ..." line already says what runs
    with no_transformers_bars():
        if cfg.model.quantization == "none":  # moopt's cached conversions load from their copy in this dtype
            path = model_folder_for(path, dtype_name)
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device)
        else:  # QLoRA: bitsandbytes packs the decoder's linears as they load (CPU or CUDA)
            model = AutoModelForCausalLM.from_pretrained(
                path, quantization_config=bnb_config(cfg.model.quantization, dtype),
                device_map={"": device.index or 0} if device.type == "cuda" else "cpu", **kwargs,
            )
    if cfg.model.quantization != "none":
        for module in model.modules():
            # bitsandbytes repacks 4-bit weights for its AVX512-bf16 CPU kernel the first time a layer
            # runs in eval mode (rows must be whole quantisation blocks, and the weight changes layout
            # between training and evaluation). Keep one dequantising path for both.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    model.config.use_cache = False
    return model, tok


def eval_batches(data: TokenizedSet, batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """The evaluation's batches, as example indices: shortest first (less padding), up to ``batch_size`` rows
    and, with ``max_tokens``, up to that many padded tokens (rows x the batch's longest; one row at least), so
    a validation set cut longer than the trial trained (``TrialSpec.eval_max_seq_length``) never builds a
    batch wider than a training batch."""
    order = sorted(range(len(data.examples)), key=lambda i: len(data.examples[i].input_ids))
    batches: list[list[int]] = []
    for i in order:
        width = len(data.examples[i].input_ids)  # the longest so far: ascending order
        if batches and len(batches[-1]) < batch_size and (max_tokens is None or (len(batches[-1]) + 1) * width <= max_tokens):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def evaluate(model, data: TokenizedSet, batch_size: int, pad_id: int, device, backend: str,
             beat=None, attention: BatchAttention | None = None, max_tokens: int | None = None) -> dict[str, float]:
    """Mean CE per completion token over the whole set, next-token accuracy, perplexity.
    ``beat(done, total)`` (a reporter's heartbeat) is called after each batch; ``attention(batch)``
    before each forward; ``max_tokens``: see :func:`eval_batches`."""
    trim_heap_if_steady()  # training's freed heap pages do not stay resident under the evaluation's
    was_training = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    batches = eval_batches(data, batch_size, max_tokens)
    for b, rows in enumerate(batches):
        batch = collate([data.examples[i] for i in rows], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        if attention is not None:
            attention(batch)
        loss_sum, n_correct, n = causal_lm_loss(model, batch, backend)
        total, correct, count = total + float(loss_sum), correct + int(n_correct), count + n
        if beat is not None:
            beat(b + 1, len(batches))
    model.train(was_training)
    loss = total / max(count, 1)
    return {"eval_loss": loss, "eval_accuracy": correct / max(count, 1), "eval_perplexity": math.exp(min(loss, 50.0))}


def lr_lambda(kind: str, warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))  # cosine

    return f


def backend_reason(kernels: str, backend: str, device: torch.device) -> str:
    """Why ``backend`` runs the LoRA layers for ``--kernels kernels`` on ``device``."""
    if kernels != "auto":
        return f"--kernels {kernels}"
    from moopt_kernels import HAS_TRITON
    from moopt_kernels._backend import interpreting

    if backend == "triton":
        return "--kernels auto: CUDA device and triton installed"
    if not HAS_TRITON:
        return "--kernels auto: triton is not installed"
    if device.type == "cuda" and interpreting():
        return "--kernels auto: TRITON_INTERPRET=1 is set (the interpreter runs on CPU tensors)"
    return f"--kernels auto: no CUDA device ({device.type})"


def injected_fault(number: int, step: int) -> str | None:
    """Test hook: ``MOOPT_INJECT_FAULT="<trial>:<kind>[@step],..."`` with kind in exception | nan |
    oom | kill | hang makes that trial fail that way at that optimizer step (default 1); hang sleeps
    forever (the stall watchdog's case)."""
    for item in filter(None, os.environ.get("MOOPT_INJECT_FAULT", "").split(",")):
        num, _, kind = item.partition(":")
        kind, _, at = kind.partition("@")
        if int(num) == number and step == int(at or 1):
            return kind
    return None


def inject_fault(number: int, step: int, loss: float) -> float:
    fault = injected_fault(number, step)
    if fault == "exception":
        raise RuntimeError("injected fault")
    if fault == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")
    if fault == "kill":
        os.kill(os.getpid(), 9)
    if fault == "hang":
        while True:
            time.sleep(3600)
    return float("nan") if fault == "nan" else loss


def run_trial(spec: TrialSpec, reporter: Reporter | None = None, warm: WarmBase | None = None) -> TrialResult:
    """``warm``: a worker's :class:`~moopt.train.warm.WarmBase`: the base model and the tokenised data
    come from it when an earlier trial of this worker loaded them (the caller then calls its
    ``release`` once this returns); without it everything is loaded here."""
    reporter = reporter or NullReporter()
    t_start = time.time()
    cfg, tc = spec.config, spec.config.training
    if cfg.model.quantization != "none":
        # before the quantised load imports it: no Hub request from a trial. Only then: importing
        # bitsandbytes adds ~52 MiB to the resident set (transformers 5.25, bitsandbytes 0.50), which
        # an unquantised trial never uses and its peak would carry.
        import_bitsandbytes_offline()
    result = TrialResult(number=spec.number, state=TrialState.FAIL)
    out_dir = Path(spec.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = pick_device(spec.device)
    result.dtype = resolve_dtype(cfg.model.dtype, device.type)
    torch.manual_seed(spec.seed)
    curve: list[dict[str, float]] = []
    evals: list[dict[str, float]] = []
    attention: BatchAttention | None = None

    peak_floor = 0.0  # the peak before the data was read (the model's load), kept across the reset after it

    def trial_peak_gb() -> float:
        return max(peak_floor, peak_memory_gb(device) if warm is None else warm.trial_peak_gb(device))

    try:
        # -- load model ---------------------------------------------------------------------------
        if warm is None:
            reporter.phase("loading model", f"{spec.hub_id or Path(spec.base_model).name} on {device.type}")
            model, tok = load_model_and_tokenizer(spec.base_model, cfg, device)
        else:
            from moopt.train.warm import base_key

            name = spec.hub_id or Path(spec.base_model).name
            if warm.key == base_key(spec.base_model, cfg, device):  # loaded by this worker's earlier trial: nothing to load
                reporter.phase("reusing the loaded model", f"{name} on {device.type}")
            else:
                reporter.phase("loading model", f"{name} on {device.type}, kept by this worker for the next trials")
            model, tok, loaded = warm.model_and_tokenizer(spec.base_model, cfg, device, load_model_and_tokenizer)
            result.warm = not loaded
            reset_peak(device.type)  # this trial's peak from here: the model, then what the trial adds

        def tokenize(path: str, max_seq_length: int = cfg.data.max_seq_length) -> TokenizedSet:
            reporter.phase("tokenising", Path(path).name)  # with a count of its records (heartbeats) as it goes
            if warm is None:
                return tokenize_file(path, tok, max_seq_length, beat=reporter.heartbeat)
            return warm.tokenized(path, max_seq_length, beat=reporter.heartbeat)

        eval_length = spec.eval_max_seq_length or cfg.data.max_seq_length
        eval_tokens = tc.batch_size * cfg.data.max_seq_length  # an evaluation batch is never wider than a training one

        torch.manual_seed(spec.seed)  # LoRA init and dropout draw the same numbers, loaded now or earlier
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad_id is None:  # a tokenizer with neither: any id pads, as padded positions carry no loss and no attention
            pad_id = 0
        if cfg.model.gradient_checkpointing:
            enable_checkpointing(model)

        if spec.baseline:
            val = tokenize(spec.validation_file, eval_length)
            attention = BatchAttention(model, device, result.dtype, tc.batch_size, longest_row(val))
            reporter.phase("evaluating", f"{len(val.examples)} validation examples")
            result.metrics = evaluate(model, val, tc.batch_size, pad_id, device, "torch", reporter.heartbeat, attention,
                                      max_tokens=eval_tokens)
            result.attention = attention.summary
            result.metrics["peak_memory_gb"] = trial_peak_gb()
            result.state = TrialState.COMPLETE
            return result

        # -- attach LoRA (moopt's own modules; PEFT is only used to read the saved adapter) -------
        from moopt_kernels import TritonKernelError

        from moopt.train.lora import attach_lora, lora_parameters, set_lora_backend

        info = attach_lora(
            model, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, backend=spec.kernels,
        )
        result.backend = info["backend"]
        result.backend_reason = backend_reason(spec.kernels, result.backend, device)
        params = lora_parameters(model)

        # -- load data ----------------------------------------------------------------------------
        peak_floor = trial_peak_gb()  # the model's load and LoRA: part of the trial's peak
        train = tokenize(spec.train_file)
        val = tokenize(spec.validation_file, eval_length)
        # reading and parsing the files peaks by their size, not the configuration's (a 200 MB file: 1.2 GiB RSS on a
        # CPU, against 0.49 for the same trial on a small one), and no probe or estimate sees it: the trial's peak
        # goes on from here, the examples it holds included
        reset_peak(device.type)
        # the memory gate's shape: the full batch around the longest example (moopt.study.gate.batch_shape)
        attention = BatchAttention(model, device, result.dtype, tc.batch_size, max(longest_row(train), longest_row(val)))
        n_micro = n_micro_batches(len(train.examples), tc.batch_size, tc.num_train_epochs)
        total_steps = math.ceil(n_micro / tc.gradient_accumulation_steps)
        result.total_steps = total_steps
        rung_at = rung_steps(total_steps, spec.rung_fractions)
        # study-level sizes only, so every trial of the study is ranked on the same examples
        rung_val = subset(val, rung_eval_size(len(val.examples), len(train.examples), len(spec.rung_fractions)))

        # -- train --------------------------------------------------------------------------------
        # AdamW keeps 2 fp32 states: 8 bytes per trainable (LoRA) parameter.
        opt = torch.optim.AdamW(
            params, lr=tc.learning_rate, weight_decay=tc.weight_decay,
            betas=(tc.adam_beta1, tc.adam_beta2), eps=tc.adam_epsilon,
        )
        warmup = math.ceil(tc.warmup_ratio * total_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.lr_scheduler_type, warmup, total_steps))
        reporter.phase("training", f"{total_steps} optimizer steps")

        def with_fallback(fn, where: str):
            """``fn()``; under --kernels auto a Triton compile/launch failure moves the whole model to the
            torch path (one warning, recorded in backend/backend_reason, which say ``where`` it failed: a step or
            an evaluation) and runs ``fn`` again from clean gradients. --kernels triton lets it fail the trial
            with the kernel's reason."""
            try:
                return fn()
            except TritonKernelError as e:
                if spec.kernels != "auto" or result.backend != "triton":
                    raise
                set_lora_backend(model, "torch")
                result.backend = "torch"
                ran = f" after {step} step{'s' if step != 1 else ''} on triton" if step else ""
                result.backend_reason = f"{FALLBACK} {where}{ran}, torch from there on: {e}"
                warnings.warn(result.backend_reason, RuntimeWarning, stacklevel=2)
                opt.zero_grad(set_to_none=True)
                return fn()

        def evaluate_on(data: TokenizedSet, detail: str) -> dict[str, float]:
            reporter.phase("evaluating", detail)
            t_eval = time.time()
            m = with_fallback(lambda: evaluate(model, data, tc.batch_size, pad_id, device, result.backend, reporter.heartbeat,
                                               attention, max_tokens=eval_tokens), f"in the evaluation ({detail})")
            result.eval_seconds += time.time() - t_eval
            return m

        def before_update(r: StepResult) -> float:
            result.train_tokens += r.tokens  # a step that fails here has still trained on its tokens
            loss = inject_fault(spec.number, step + 1, r.loss)  # tests only; a no-op otherwise
            return check_finite(loss, step + 1)

        model.train()
        t0 = time.time()
        result.setup_seconds = t0 - t_start
        t_step, busy_s = t0, 0.0  # start of the current step; seconds spent in steps (evaluations excluded)
        step, micro = 0, 0
        stop_reason = None
        batches = micro_batches(train, tc.batch_size, tc.num_train_epochs, cfg.data.sampling_strategy, spec.seed, pad_id,
                                pack_capacity=cfg.data.max_seq_length if cfg.data.packing else None)
        pending: list[dict[str, torch.Tensor]] = []
        packed = 0  # micro-batches packed (packing on: where it removes a fifth of the tokens or more), of ``micro``
        for epoch_pos, batch in batches:
            pending.append(batch)
            micro += 1
            packed += "position_ids" in batch
            if len(pending) < tc.gradient_accumulation_steps and micro < n_micro:
                continue
            step_loss = with_fallback(lambda p=pending: train_step(
                model, p, params=params, opt=opt, sched=sched, max_grad_norm=tc.max_grad_norm, device=device,
                backend=result.backend, before_update=before_update, attention=attention,
            ), f"at step {step + 1}").loss
            pending = []
            step += 1
            result.steps = step
            curve.append({"step": step, "epoch": round(epoch_pos, 4), "train_loss": step_loss, "lr": sched.get_last_lr()[0]})
            step_s = time.time() - t_step
            busy_s += step_s
            reporter.progress(step, total_steps, step_loss, result.train_tokens / busy_s if busy_s else None, step_s)
            if step in rung_at:
                m = evaluate_on(rung_val, f"rung {rung_at[step]} at step {step}, {len(rung_val.examples)} examples")
                m["peak_memory_gb"] = trial_peak_gb()  # so far: the pruner may weigh it (an objective)
                result.eval_tokens += rung_val.n_tokens
                evals.append({"step": step, "examples": len(rung_val.examples), **m})
                if not reporter.rung(step, m, rung_at[step]):
                    stop_reason = "pruned"
                    break
                reporter.phase("training", f"{total_steps} optimizer steps")
            # past the deadline with steps left: cut (after its last step the trial is whole: COMPLETE, evaluated as any)
            if spec.deadline is not None and time.time() > spec.deadline and step < total_steps:
                stop_reason = TIME_BUDGET_CUT
                break
            t_step = time.time()
        result.train_seconds = busy_s  # the steps' time: the rung evaluations between them are in eval_seconds

        # -- evaluate -----------------------------------------------------------------------------
        if stop_reason == "pruned":
            metrics = {k: v for k, v in evals[-1].items() if k not in ("step", "examples")}
            result.state, result.pruned_at_step, result.error = TrialState.PRUNED, step, f"pruned at step {step}"
            if len(rung_val.examples) < len(val.examples):
                result.error += f" (metrics on the rungs' {len(rung_val.examples)} of {len(val.examples)} validation examples)"
        else:
            metrics = evaluate_on(val, f"{len(val.examples)} validation examples")
            result.eval_tokens += val.n_tokens
            evals.append({"step": step, "examples": len(val.examples), **metrics})
            if spec.test_file:
                test = tokenize(spec.test_file, eval_length)  # measured as the validation set is
                tm = evaluate_on(test, f"{len(test.examples)} test examples")
                metrics.update({k.replace("eval_", "test_"): v for k, v in tm.items()})
            result.state = TrialState.COMPLETE if stop_reason is None else TrialState.PRUNED
            result.error = None if stop_reason is None else f"{stop_reason} at step {step}"
        metrics["peak_memory_gb"] = trial_peak_gb()
        result.metrics = metrics

        # -- save ---------------------------------------------------------------------------------
        if spec.save_adapter:
            from moopt.train.lora import save_peft_adapter

            reporter.phase("saving", "adapter")
            save_peft_adapter(
                model, out_dir / "adapter", base_model_name_or_path=spec.model_name, r=cfg.lora.r,
                alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, target_modules=cfg.lora.target_modules,
                revision=spec.hub_revision,
            )
            metrics["peak_memory_gb"] = trial_peak_gb()  # the whole trial's, the save included
        extra = {"truncated_train": train.n_truncated, "truncated_val": val.n_truncated,
                 "unlabelled_train": train.n_unlabelled, "unlabelled_val": val.n_unlabelled,
                 "train_label_tokens": train.n_label_tokens, "val_label_tokens": val.n_label_tokens,
                 # packing on: how many of the micro-batches it packed (the others padded: packing would not pay)
                 **({"packed_micro_batches": packed, "micro_batches": micro} if cfg.data.packing else {})}
    except Exception as e:  # recorded as a failed trial; the study goes on
        is_oom = is_out_of_memory(e)
        result.state, result.oom = (TrialState.INFEASIBLE if is_oom else TrialState.FAIL), is_oom
        result.error = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        result.metrics = result.metrics or ({"peak_memory_gb": trial_peak_gb()} if is_oom else {})
        traceback.print_exc(file=sys.stderr)
        extra = {}
    from moopt.yamlio import write_json

    if attention is not None:
        result.attention = attention.summary  # what ran, the batches of a failed trial included
    result.tokens_per_s = result.train_tokens / result.train_seconds if result.train_seconds else None
    write_json(out_dir / "metrics.json", {**asdict(result), "curve": curve, "evals": evals, **extra})
    return result
