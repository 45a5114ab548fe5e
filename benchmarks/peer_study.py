"""The study a user would write without moopt: Optuna driving HF Trainer + PEFT trials.

Same space (a moopt search-space YAML), data, base model and metrics as a `moopt optimize` study, so the
two compare on wall time and on the score a user asked for:

- sampler ``tpe``: Optuna's TPESampler on the weighted score (``--weights`` over eval_loss and
  eval_accuracy, each as progress from the base model toward its ideal: moopt's "Best value"), with
  Optuna's MedianPruner fed the same score at the rungs moopt's ``--pruning_factor 2`` uses (1/8, 1/4,
  1/2 of the steps, on the same validation subset);
- sampler ``nsga2``: Optuna's NSGAIISampler on (eval_loss, eval_accuracy), no pruning (Optuna's
  pruners do not apply to several objectives).

Each trial loads the base model (``from_pretrained``), wraps it with ``peft.get_peft_model`` and trains
with ``transformers.Trainer`` (defaults otherwise, fp32 on the CPU; ``--dtype bfloat16`` loads the model in
bf16). The metrics are moopt's evaluator's
(mean CE per completion token, next-token accuracy) on moopt's tokenisation of the same files, so the
numbers are the same quantity. Run by ``bench_study.py ttq``; writes one JSON line per finished trial
(wall seconds since this process started, state, metrics, score) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

T0 = time.time()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a local model folder (safetensors)")
    ap.add_argument("--train_file", required=True)
    ap.add_argument("--validation_file", required=True)
    ap.add_argument("--search_space", required=True)
    ap.add_argument("--num_trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--sampler", choices=["tpe", "nsga2"], default="tpe")
    ap.add_argument("--weights", default="0.7,0.3")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the base model's dtype (float32: what a user's from_pretrained gives on the CPU; "
                         "bfloat16: as moopt's model.dtype on a CPU with native bf16; PEFT keeps fp32 adapters)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    import optuna
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from moopt.config import TARGET_ALIASES
    from moopt.search.objectives import parse_objectives
    from moopt.search.pruner import rung_eval_size
    from moopt.search.space import parse_space
    from moopt.train.data import collate, subset, tokenize_file
    from moopt.train.recipe import evaluate

    if a.threads:
        torch.set_num_threads(a.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = yaml.safe_load(open(a.search_space))
    max_len = int(space.get("data", {}).get("max_seq_length", 512))
    # integers on a log scale (lora.r: {type: log_uniform} on an integer field) are Optuna's suggest_int(log=True)
    integer = {p.short for p in parse_space(space).params if p.integer}
    steps = {p.short: p.step for p in parse_space(space).params if p.type == "int"}
    objectives = parse_objectives("multi:eval_loss,eval_accuracy", a.weights)
    tok = AutoTokenizer.from_pretrained(a.model, local_files_only=True)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    train = tokenize_file(a.train_file, tok, max_len)
    val = tokenize_file(a.validation_file, tok, max_len)
    fractions = (1 / 8, 1 / 4, 1 / 2)
    rung_val = subset(val, rung_eval_size(len(val.examples), len(train.examples), len(fractions)))
    rows = train.examples  # moopt.train.data.Example records; collated by moopt's padding collate

    def load():
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype), local_files_only=True,
                                                     attn_implementation="sdpa")
        model.config.use_cache = False
        return model

    base = evaluate(load(), val, 16, pad_id, "cpu", "torch")
    start = objectives.to_minimize(base)
    out = open(a.out, "w")
    out.write(json.dumps({"event": "baseline", "t0": T0, "t": time.time() - T0, "metrics": base}) + "\n")
    out.flush()

    def score(m: dict) -> float:
        return float(objectives.score(objectives.to_minimize(m), start)[0])

    def suggest(trial: optuna.Trial) -> dict:
        p = {}
        for section in ("training", "lora"):
            for name, d in space.get(section, {}).items():
                if not isinstance(d, dict):
                    p[name] = d
                elif d["type"] == "log_uniform" and name in integer:
                    p[name] = trial.suggest_int(name, int(d["min"]), int(d["max"]), log=True)
                elif d["type"] == "log_uniform":
                    p[name] = trial.suggest_float(name, float(d["min"]), float(d["max"]), log=True)
                elif d["type"] == "uniform":
                    p[name] = trial.suggest_float(name, float(d["min"]), float(d["max"]))
                elif d["type"] == "int":
                    p[name] = trial.suggest_int(name, int(d["min"]), int(d["max"]), step=steps.get(name, 1))
                else:
                    p[name] = trial.suggest_categorical(name, d["values"])
        return p

    def objective(trial: optuna.Trial):
        p = suggest(trial)
        targets = p.get("target_modules", "attention")
        model = get_peft_model(load(), LoraConfig(
            r=int(p.get("r", 8)), lora_alpha=float(p.get("alpha", 16)), lora_dropout=float(p.get("dropout", 0.0)),
            target_modules=list(TARGET_ALIASES.get(targets, targets.split(","))), task_type="CAUSAL_LM"))
        total = math.ceil(math.ceil(len(rows) / int(p["batch_size"])) * float(p["num_train_epochs"]))
        rungs = {max(1, round(f * total)): i for i, f in enumerate(fractions)}
        pruned = {}

        class Rungs(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step in rungs and a.sampler == "tpe":
                    m = evaluate(model.get_base_model(), rung_val, int(p["batch_size"]), pad_id, "cpu", "torch")
                    trial.report(score(m), state.global_step)
                    if trial.should_prune():
                        pruned.update(step=state.global_step, metrics=m)
                        control.should_training_stop = True
                return control

        args = TrainingArguments(
            output_dir="/tmp/peer_trainer_unused", per_device_train_batch_size=int(p["batch_size"]),
            num_train_epochs=float(p["num_train_epochs"]), learning_rate=float(p["learning_rate"]),
            warmup_steps=math.ceil(float(p.get("warmup_ratio", 0.0)) * total), weight_decay=float(p.get("weight_decay", 0.0)),
            lr_scheduler_type=p.get("lr_scheduler_type", "linear"), max_grad_norm=1.0, eval_strategy="no",
            save_strategy="no", report_to=[], logging_strategy="no", seed=a.seed + trial.number, use_cpu=True,
            disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
        )
        Trainer(model=model, args=args, train_dataset=rows, data_collator=lambda b: collate(b, pad_id), callbacks=[Rungs()]).train()
        event = {"event": "trial", "number": trial.number, "params": p}
        if pruned:
            out.write(json.dumps({**event, "t": time.time() - T0, "state": "PRUNED", **pruned}) + "\n")
            out.flush()
            raise optuna.TrialPruned()
        m = evaluate(model.get_base_model(), val, int(p["batch_size"]), pad_id, "cpu", "torch")
        out.write(json.dumps({**event, "t": time.time() - T0, "state": "COMPLETE", "metrics": m, "score": score(m)}) + "\n")
        out.flush()
        return score(m) if a.sampler == "tpe" else (m["eval_loss"], m["eval_accuracy"])

    if a.sampler == "tpe":
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=a.seed),
                                    pruner=optuna.pruners.MedianPruner())
    else:
        study = optuna.create_study(directions=["minimize", "maximize"],
                                    sampler=optuna.samplers.NSGAIISampler(seed=a.seed))
    study.optimize(objective, n_trials=a.num_trials)
    out.write(json.dumps({"event": "end", "t": time.time() - T0}) + "\n")
    out.close()


if __name__ == "__main__":
    main()
