"""How small can a rung's validation subset be? Keep/prune calls on a subset against the whole set.

A rung evaluation only decides who goes on (moopt/search/pruner.py), so it reads a fixed random subset of the
validation set. This measures what the subset's size costs in decisions: the finished trials of real
studies (their PEFT adapters) are evaluated example by example on the whole validation set; then, for
many random subsets of each size, the trials of each study are ranked as a rung ranks them (Pareto rank,
then crowding, on eval_loss and eval_accuracy) and the top half kept, as at an eta = 2 rung holding the
whole study. Reported per size:

- ``same_call``: share of trials whose keep/prune call is the one the whole set makes;
- ``same_order_good``: share of pairs of well-trained trials (eval_loss < 0.5 on the whole set) that
  the subset orders by eval_loss as the whole set does (the hard calls: close trials);
- ``loss_regret``: mean whole-set eval_loss of the subset's kept trials minus that of the whole set's.

Finished trials are closer to each other than trials at a rung (early in training the spread is
larger), so these figures are a conservative estimate for rung decisions.

    python benchmarks/bench_rung_subset.py W/s1_no_pruning W/s4_no_pruning W/s6_no_pruning

Writes benchmarks/results/rung_subset_smollm2_cpu.csv (benchmarks/common.py's schema: problem = the
subset's size in examples, params studies and draws; what = same_call, same_order_good (fractions),
loss_regret).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, ROOT, long, write_rows  # noqa: E402

WHATS = {"same_call": "fraction", "same_order_good": "fraction", "loss_regret": "eval_loss"}


def per_example(study: Path, val_file: Path) -> dict[str, np.ndarray]:
    """trial -> array (3, n_val): summed CE over completion tokens, correct tokens, tokens."""
    import torch
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moopt.train.data import collate, tokenize_file
    from moopt.train.recipe import causal_lm_loss

    out: dict[str, np.ndarray] = {}
    trials = sorted(study.glob("trial_results/trial_*/adapter"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not trials:
        return out
    cfg = yaml.safe_load((trials[0].parent / "config.yaml").read_text())
    model_path = json.loads((study / "journal.jsonl").read_text().splitlines()[0])["base_model"]
    tok = AutoTokenizer.from_pretrained(model_path)
    val = tokenize_file(val_file, tok, cfg["data"]["max_seq_length"])
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    for ad in trials:
        m = PeftModel.from_pretrained(base, str(ad))  # LoRA layers go into ``base`` in place
        m.eval()
        with torch.no_grad():  # the trials' own evaluation (moopt.train.recipe), one example at a time
            rows = [[float(v) for v in causal_lm_loss(base, collate([ex], pad_id), "torch")] for ex in val.examples]
        out[ad.parent.name] = a = np.array(rows, dtype=float).T
        print(f"{study.name}/{ad.parent.name}: eval_loss {a[0].sum() / a[2].sum():.4f}", flush=True)
        base = m.unload()
    return out


def agreement(studies: list[dict[str, np.ndarray]], sizes: list[int], draws: int, seed: int = 0) -> list[dict]:
    from moopt.search.pruner import pareto_order

    rng = np.random.default_rng(seed)

    def objectives(a, idx):  # minimisation form: (eval_loss, -eval_accuracy)
        n = a[2, idx].sum()
        return [a[0, idx].sum() / n, -a[1, idx].sum() / n]

    rows = []
    for size in sizes:
        call, order, regret = [], [], []
        for trials in studies:
            A = list(trials.values())
            n_val = A[0].shape[1]
            full = np.array([objectives(a, np.arange(n_val)) for a in A])
            half = len(A) // 2
            keep_full = set(pareto_order(full)[:half])
            good = [i for i in range(len(A)) if full[i, 0] < 0.5]
            pairs = [(i, j) for i in good for j in good if i < j]
            for _ in range(draws):
                idx = rng.choice(n_val, min(size, n_val), replace=False)
                sub = np.array([objectives(a, idx) for a in A])
                keep = set(pareto_order(sub)[:half])
                call.append(np.mean([(i in keep_full) == (i in keep) for i in range(len(A))]))
                if pairs:
                    order.append(np.mean([(full[i, 0] < full[j, 0]) == (sub[i, 0] < sub[j, 0]) for i, j in pairs]))
                regret.append(np.mean(full[sorted(keep), 0]) - np.mean(full[sorted(keep_full), 0]))
        rows.append({"examples": size, "same_call": float(np.mean(call)), "same_order_good": float(np.mean(order)),
                     "loss_regret": float(np.mean(regret)), "studies": len(studies), "draws": draws})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("studies", nargs="+", type=Path, help="finished study folders (with trial adapters)")
    ap.add_argument("--validation-file", type=Path, default=ROOT / "data" / "val.jsonl")
    ap.add_argument("--sizes", default="8,16,24,32")
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--out", type=Path, default=RESULTS / "rung_subset_smollm2_cpu.csv")
    a = ap.parse_args()
    for s in a.studies:
        if not (s / "journal.jsonl").is_file():
            print(f"error: {s}: not a study folder (no journal.jsonl)", file=sys.stderr)
            return 2
    studies = [t for t in (per_example(s, a.validation_file) for s in a.studies) if len(t) >= 4]
    if not studies:
        print("error: no study with >= 4 trial adapters", file=sys.stderr)
        return 2
    import pandas as pd

    df = pd.DataFrame(agreement(studies, [int(x) for x in a.sizes.split(",")], a.draws))
    write_rows(long([{**r, "provider": "moopt", "device": "cpu"} for r in df.to_dict("records")], WHATS,
                    {"problem": "examples", "provider": "provider", "device": "device"}, params=("studies", "draws")), a.out)
    n_val = next(iter(studies[0].values())).shape[1]
    print(f"\nkeep/prune calls of a rung subset against the whole validation set ({n_val} examples), "
          f"{len(studies)} studies, {sum(len(s) for s in studies)} trials")
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
