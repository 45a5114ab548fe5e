"""One full training step (fwd + bwd + grad clipping + AdamW step): moopt's trial loop vs HF Trainer + PEFT.

    python benchmarks/bench_trial.py --dtype float32   # CPU: SmolLM2-135M-Instruct, fp32 (the committed figures; the default --dtype auto is bf16 where the CPU has it)
    python benchmarks/bench_trial.py --device cuda     # GPU: random-weight Llama (--gpu-model 1b|3b|8b), bf16

Both providers train the same model, rows, batch, sequence length and LoRA config:
- ``moopt``: the setup of ``moopt.train.recipe.run_trial`` (``load_model_and_tokenizer``, ``attach_lora``,
  ``micro_batches``, AdamW over ``lora_parameters``, LambdaLR) and its step, ``moopt.train.step.train_step``
  (``causal_lm_loss``, ``clip_grad_norm_``, ``opt.step``, ``zero_grad(set_to_none=True)``). ``run_trial``
  itself is not called because its ``train_seconds`` includes the first (warm-up) steps and its run
  includes evaluation.
- ``peer``: ``transformers.Trainer`` on ``peft.get_peft_model(LoraConfig(...))`` with default settings
  (fp32 on CPU, the model's dtype on GPU), a collator that pads and masks prompt tokens with -100.

Each (provider, repeat) is a fresh subprocess, providers alternate (A B, B A, ...) to cancel drift, and
every process uses the same torch thread count. A step's time is the interval between the ends of two
consecutive optimizer steps (so data collation is included for both); the first ``--warmup`` steps are
left out. Memory: CPU, the process's peak RSS (``ru_maxrss``) and that peak minus the RSS right after
the model was loaded; GPU, ``torch.cuda.max_memory_allocated`` over training.

Rows are prompt/completion records, loss on completion tokens only: ``--data synth`` (default) builds
rows of exactly ``seq`` tokens with a 25-75% prompt; ``--data bundled`` reads data/train.jsonl, whose
rows are ~15 tokens (the batch is then much shorter than ``seq``; tokens/s counts real tokens). Writes
``benchmarks/results/trial_<device>.csv`` (benchmarks/common.py's schema: problem = train_step/<targets>/<data>,
params shape, M, r, p, dtype, steps and repeat (a number, or ``median`` for the medians' rows); what =
step_time, tokens_per_s, peak_memory, load_memory, peak_above_load, label_fraction) and a bar chart, and
prints the moopt/peer ratios of tokens/s and peak memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, ROOT, WORDS, long, pyplot, write_rows  # noqa: E402

# the CSV's figures: record key -> (what, unit)
WHATS = {"ms": ("step_time", "ms"), "tokens_per_s": ("tokens_per_s", "tokens/s"), "peak_mib": ("peak_memory", "MiB"),
         "load_mib": ("load_memory", "MiB"), "peak_above_load_mib": ("peak_above_load", "MiB"),
         "label_frac": ("label_fraction", "fraction")}
PROVIDERS = ("moopt", "peer")
TARGETS = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
# Llama-3.2-1B / 3B and Llama-3.1-8B shapes; random weights (only speed and memory are measured).
GPU_MODELS = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False),
}
# The same training hyperparameters for both providers (moopt's TrainingConfig defaults).
LR, WEIGHT_DECAY, MAX_GRAD_NORM, WARMUP_RATIO, SEED = 2e-4, 0.0, 1.0, 0.03, 42


# ------------------------------------------------------------------------------------------------
# Shared by both workers


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    from moopt.memory.rss import peak_rss_bytes  # VmHWM: ru_maxrss would carry the parent's peak across exec

    return peak_rss_bytes() / 2**20


def make_examples(tok, n: int, seq: int, seed: int, data: str):
    """``n`` tokenized prompt/completion rows (moopt.train.data.Example): ``synth``, each exactly ``seq`` tokens
    (no padding, prompt 25-75%); ``full``, the same rows with every token labelled (plain text, as in
    pre-training or ``text`` records); ``bundled``, data/train.jsonl truncated to ``seq`` (its rows are ~15
    tokens, so the batch is far shorter than ``seq``)."""
    from moopt.train.data import IGNORE, Example, tokenize_file

    bundled = ROOT / "data" / "train.jsonl"
    if data == "bundled":
        exs = tokenize_file(bundled, tok, seq).examples
        return [exs[i % len(exs)] for i in range(n)]
    rng = random.Random(seed)
    eos = [tok.eos_token_id]
    out = []
    for _ in range(n):
        n_prompt = rng.randint(seq // 4, 3 * seq // 4) if data == "synth" else 0
        text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731 (~1 token per word)
        prompt = tok(text(2 * seq), add_special_tokens=False)["input_ids"][:n_prompt]
        completion = (tok(" " + text(2 * seq), add_special_tokens=False)["input_ids"][: seq - n_prompt - 1]) + eos
        if data == "full":
            out.append(Example(completion, list(completion)))
            continue
        out.append(Example(prompt + completion, [IGNORE] * len(prompt) + completion))
    return out


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def summarize(step_ends: list[float], tokens: list[int], warmup: int, device: str, load_mib: float) -> dict:
    """Per-step times (ms) after warm-up, tokens/s over the timed steps, memory figures."""
    import torch

    ms = [(b - a) * 1e3 for a, b in zip(step_ends[warmup:], step_ends[warmup + 1:])]
    timed_tokens = sum(tokens[warmup:])
    out = {"ms": statistics.median(ms), "ms_all": ms, "tokens_per_s": timed_tokens / (step_ends[-1] - step_ends[warmup])}
    if device == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["load_mib"] = load_mib
    else:
        out["peak_mib"] = peak_rss_mib()
        out["load_mib"] = load_mib
    out["peak_above_load_mib"] = out["peak_mib"] - out["load_mib"]
    return out


def load_memory(device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    return rss_mib()


# ------------------------------------------------------------------------------------------------
# Workers (one per subprocess)


def worker_moopt(a: dict) -> dict:
    """moopt.train.recipe.run_trial's setup and its step (moopt.train.step.train_step), gradient accumulation 1."""
    import torch

    from moopt.config import DataConfig, LoraConfig, ModelConfig, TrainingConfig, TrialConfig
    from moopt.memory.rss import steady_heap_if_asked
    from moopt.train.data import TokenizedSet, micro_batches, n_micro_batches
    from moopt.train.lora import attach_lora, lora_parameters
    from moopt.train.recipe import load_model_and_tokenizer, lr_lambda, pick_device
    from moopt.train.step import check_finite, train_step

    steady_heap_if_asked()  # as moopt.train.worker does (bench_steady_heap.py sets it)
    torch.set_num_threads(a["threads"])
    device = pick_device(a["device"])
    torch.manual_seed(SEED)
    cfg = TrialConfig(
        training=TrainingConfig(learning_rate=LR, batch_size=a["batch"], weight_decay=WEIGHT_DECAY,
                                max_grad_norm=MAX_GRAD_NORM, warmup_ratio=WARMUP_RATIO),
        lora=LoraConfig(r=a["r"], alpha=a["alpha"], dropout=a["dropout"], target_modules=TARGETS[a["targets"]]),
        data=DataConfig(max_seq_length=a["seq"]),
        model=ModelConfig(dtype=a["dtype"]),
    )
    tc = cfg.training
    model, tok = load_model_and_tokenizer(a["model"], cfg, device)
    load_mib = load_memory(a["device"])
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    info = attach_lora(model, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                       target_modules=cfg.lora.target_modules, backend="auto")
    params = lora_parameters(model)
    n_steps = a["warmup"] + a["steps"]
    examples = make_examples(tok, n_steps * a["batch"], a["seq"], SEED, a["data"])
    train = TokenizedSet(examples, 0, sum(len(e.input_ids) for e in examples), 0)
    total_steps = math.ceil(n_micro_batches(len(examples), tc.batch_size, 1.0) / tc.gradient_accumulation_steps)
    opt = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay,
                            betas=(tc.adam_beta1, tc.adam_beta2), eps=tc.adam_epsilon)
    warmup = math.ceil(tc.warmup_ratio * total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.lr_scheduler_type, warmup, total_steps))
    model.train()
    step_ends, tokens, labels = [time.perf_counter()], [], 0
    for _, batch in micro_batches(train, tc.batch_size, 1.0, cfg.data.sampling_strategy, SEED, pad_id):
        res = train_step(model, [batch], params=params, opt=opt, sched=sched, max_grad_norm=tc.max_grad_norm,
                         device=device, backend=info["backend"],
                         before_update=lambda r: check_finite(r.loss, len(tokens) + 1))
        sync(a["device"])
        step_ends.append(time.perf_counter())
        tokens.append(res.tokens)
        labels += res.label_tokens
        step_loss = res.loss
    out = summarize(step_ends, tokens, a["warmup"], a["device"], load_mib)
    out["label_frac"] = labels / sum(tokens)
    out["last_loss"] = step_loss
    return out


def worker_peer(a: dict) -> dict:
    """transformers.Trainer + PEFT with default settings; step times from a callback at each step end."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from moopt.train.data import IGNORE

    torch.set_num_threads(a["threads"])
    torch.manual_seed(SEED)
    dtype = getattr(torch, a["dtype"])
    tok = AutoTokenizer.from_pretrained(a["model"], local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=dtype, local_files_only=True,
                                                 attn_implementation="sdpa").to(a["device"])
    model.config.use_cache = False
    load_mib = load_memory(a["device"])
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = get_peft_model(model, LoraConfig(r=a["r"], lora_alpha=a["alpha"], lora_dropout=a["dropout"],
                                             target_modules=list(TARGETS[a["targets"]]), task_type="CAUSAL_LM"))
    n_steps = a["warmup"] + a["steps"]
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in make_examples(tok, n_steps * a["batch"], a["seq"], SEED, a["data"])]

    def collate(batch):
        t = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), t), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), t), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), t), dtype=torch.long)
        for i, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    step_ends, tokens = [time.perf_counter()], []
    device = a["device"]

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            sync(device)
            step_ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=a["batch"], max_steps=n_steps, learning_rate=LR,
            warmup_steps=math.ceil(WARMUP_RATIO * n_steps), weight_decay=WEIGHT_DECAY,
            max_grad_norm=MAX_GRAD_NORM, lr_scheduler_type="cosine", eval_strategy="no", save_strategy="no",
            report_to=[], dataloader_num_workers=0, seed=SEED, use_cpu=device == "cpu", disable_tqdm=True,
            logging_strategy="no", remove_unused_columns=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Timer()])
        trainer.train()
    tokens = [a["seq"] * a["batch"]] * n_steps if a["data"] in ("synth", "full") else None
    if tokens is None:  # padded batches: count real tokens in Trainer's (shuffled) order is not exposed; use the mean
        mean = sum(len(r["input_ids"]) for r in rows) / len(rows) * a["batch"]
        tokens = [mean] * n_steps
    out = summarize(step_ends, tokens, a["warmup"], device, load_mib)
    out["label_frac"] = sum(sum(1 for x in r["labels"][1:] if x != IGNORE) for r in rows) / sum(len(r["input_ids"]) for r in rows)
    return out


# ------------------------------------------------------------------------------------------------
# Driver


def gpu_model_folder(name: str, tmp: Path) -> str:
    """A random-weight bf16 Llama saved with SmolLM2's tokenizer (the rows use its ids, all < vocab)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from moopt.train.models import resolve_model

    out = tmp / f"llama-{name}-random"
    if (out / "config.json").is_file():
        return str(out)
    config = LlamaConfig(vocab_size=128256, head_dim=128, rope_theta=500000.0, max_position_embeddings=8192,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, **GPU_MODELS[name])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(resolve_model("smollm2-135m")).save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return str(out)


def run_worker(provider: str, a: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", provider, "--worker-args", json.dumps(a)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a["threads"]), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{provider} worker failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def bench(args) -> list[dict]:
    import torch

    device = args.device
    if args.model:  # a local folder, e.g. a stand-in from benchmarks/standin_models.py
        model = args.model
        dev_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    elif device == "cuda":
        model = gpu_model_folder(args.gpu_model, Path(args.model_cache))
        dev_name = torch.cuda.get_device_name()
    else:
        from moopt.train.models import resolve_model

        model, dev_name = resolve_model("smollm2-135m"), "cpu"
    from moopt.config import resolve_dtype

    dtype = resolve_dtype(args.dtype, device)  # auto: what a moopt trial would run in here
    rows = []
    for targets in args.targets:
        for shape in args.shapes:
            batch, seq = map(int, shape.split("x"))
            a = dict(model=model, device=device, threads=args.threads, batch=batch, seq=seq, r=args.r,
                     alpha=args.alpha, dropout=args.dropout, targets=targets, warmup=args.warmup, steps=args.steps,
                     data=args.data, dtype=dtype)
            per = {p: [] for p in PROVIDERS}
            for rep in range(args.repeats):
                for provider in (PROVIDERS if rep % 2 == 0 else PROVIDERS[::-1]):  # A B, B A, ...
                    res = run_worker(provider, a)
                    per[provider].append(res)
                    row = dict(op=f"train_step/{targets}/{args.data}", shape=shape, M=batch * seq, r=args.r, p=args.dropout,
                               dtype=dtype, device=dev_name, provider=provider, repeat=rep,
                               ms=round(res["ms"], 2), tokens_per_s=round(res["tokens_per_s"], 1),
                               peak_mib=round(res["peak_mib"], 1), load_mib=round(res["load_mib"], 1),
                               peak_above_load_mib=round(res["peak_above_load_mib"], 1),
                               label_frac=round(res["label_frac"], 3), steps=args.steps)
                    rows.append(row)
                    print(row, "step ms:", [round(x) for x in res["ms_all"]], flush=True)
            for provider in PROVIDERS:
                mine = [r for r in rows if r["op"] == f"train_step/{targets}/{args.data}" and r["shape"] == shape
                        and r["provider"] == provider and r["repeat"] != "median"]
                med = dict(mine[0], repeat="median")
                for k in ("ms", "tokens_per_s", "peak_mib", "load_mib", "peak_above_load_mib"):
                    med[k] = round(statistics.median(r[k] for r in mine), 2)
                rows.append(med)
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """moopt/peer of tokens/s, peak memory and peak above load (medians), with the per-repeat spread."""
    out = []
    keys = sorted({(r["op"], r["shape"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for op, shape in keys:
        med = {r["provider"]: r for r in rows if (r["op"], r["shape"]) == (op, shape) and r["repeat"] == "median"}
        reps = {p: [r for r in rows if (r["op"], r["shape"], r["provider"]) == (op, shape, p) and r["repeat"] != "median"]
                for p in PROVIDERS}
        m, q = med["moopt"], med["peer"]

        def spread(p, k):
            v = [r[k] for r in reps[p]]
            return f"{min(v):.0f}-{max(v):.0f}"

        out.append(dict(
            op=op, shape=shape,
            moopt_tok_s=m["tokens_per_s"], peer_tok_s=q["tokens_per_s"], tok_s_ratio=m["tokens_per_s"] / q["tokens_per_s"],
            moopt_peak_mib=m["peak_mib"], peer_peak_mib=q["peak_mib"], peak_ratio=m["peak_mib"] / q["peak_mib"],
            peak_above_load_ratio=m["peak_above_load_mib"] / q["peak_above_load_mib"],
            moopt_tok_s_range=spread("moopt", "tokens_per_s"), peer_tok_s_range=spread("peer", "tokens_per_s"),
            paired_tok_s_ratios=[round(a["tokens_per_s"] / b["tokens_per_s"], 3) for a, b in zip(reps["moopt"], reps["peer"])],
        ))
    return out


def plot(summary: list[dict], path: Path, device: str) -> None:
    plt = pyplot()
    labels = [f"{s['op'].split('/', 1)[1]}\n{s['shape']}" for s in summary]
    xs = list(range(len(summary)))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(summary)), 4))
    for ax, (key_m, key_p, title) in zip(axes, [("moopt_tok_s", "peer_tok_s", "tokens/s (median)"),
                                                ("moopt_peak_mib", "peer_peak_mib",
                                                 "peak RSS, MiB" if device == "cpu" else "peak allocated, MiB")]):
        ax.bar([x - 0.2 for x in xs], [s[key_p] for s in summary], 0.4, label="HF Trainer + PEFT")
        ax.bar([x + 0.2 for x in xs], [s[key_m] for s in summary], 0.4, label="moopt")
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle(f"one LoRA training step, {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--shapes", nargs="+", default=None, help="batch x seq, e.g. 8x128 4x256")
    parser.add_argument("--targets", nargs="+", default=["attention", "all-linear"], choices=sorted(TARGETS))
    parser.add_argument("--data", default="synth", choices=("synth", "full", "bundled"),
                        help="synth: fixed-length prompt/completion rows; full: the same, every token labelled; "
                             "bundled: data/train.jsonl")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=4, help="fresh processes per provider (alternating)")
    parser.add_argument("--warmup", type=int, default=1, help="optimizer steps left out of the timing")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per process")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every worker (default: cores)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="both providers' model dtype (auto: what moopt's model.dtype auto picks: bf16 on CUDA "
                             "and on CPUs with native bf16, else fp32)")
    parser.add_argument("--gpu-model", default="1b", choices=sorted(GPU_MODELS))
    parser.add_argument("--model", default=None, help="a local model folder to train instead (any device)")
    parser.add_argument("--model-cache", default=os.path.join(tempfile.gettempdir(), "moopt-bench-models"))
    parser.add_argument("--out", default=None, help="CSV path (default benchmarks/results/trial_<device>.csv)")
    parser.add_argument("--worker", choices=PROVIDERS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        res = (worker_moopt if args.worker == "moopt" else worker_peer)(json.loads(args.worker_args))
        print("RESULT " + json.dumps(res), flush=True)
        return
    args.threads = args.threads or os.cpu_count()
    args.shapes = args.shapes or (["8x128", "4x256"] if args.device == "cpu" else ["8x1024", "4x2048"])
    rows = bench(args)
    csv_path = write_rows(long(rows, WHATS, {"problem": "op", "provider": "provider", "device": "device"},
                               params=("shape", "M", "r", "p", "dtype", "steps", "repeat")),
                          Path(args.out) if args.out else RESULTS / f"trial_{args.device}.csv")
    summary = ratios(rows)
    plot(summary, csv_path.with_suffix(".png"), args.device)
    for s in summary:
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()))
    print(f"wrote {csv_path}")


if __name__ == "__main__":
    main()
