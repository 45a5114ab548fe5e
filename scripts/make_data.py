#!/usr/bin/env python3
"""Generate moopt's demo fine-tuning data set (deterministic, stdlib only).

Task: "warehouse routing". Each prompt is a short, templated order line; the
completion is the department that stocks the item plus a packing rule:

    prompt:      "Order: 7 x garden hose\nRoute:"
    completion:  " Garden, crate"

* Department is one of six fixed labels (Garden, Kitchen, Toys, Office, Pets,
  Sports) chosen by what the item is.
* Packing is a made-up rule on the quantity: 1-4 -> "box", 5-9 -> "crate".

The base model does not know the output format, the label set or the packing
rule; a short LoRA fine-tune learns them. Items are split disjointly between
train / val / test (same departments, same templates and quantity range), so
val/test measure generalisation to unseen items rather than memorisation.

Usage: python scripts/make_data.py [--out data] [--seed 1234]

``--long-tail`` writes the same task with multi-line orders instead (``data/longtail/``): an order
holds k lines, k drawn from a long-tailed (Pareto, alpha 1.1) distribution capped at 90, and the
completion routes every line ("Garden, crate; Kitchen, box; ..."). With SmolLM2's tokenizer the
records run from ~15 to ~1,000 tokens, most of them short, as in instruction sets: the data set the
packing benchmark pads or packs.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# ---------------------------------------------------------------------------
# Vocabulary: department -> items (lower-case, short noun phrases).
# ---------------------------------------------------------------------------
ITEMS: dict[str, list[str]] = {
    "Garden": [
        "garden hose", "flower pot", "lawn mower", "hedge trimmer", "rake",
        "watering can", "tomato seeds", "wheelbarrow", "garden gloves",
        "bag of compost", "pruning shears", "leaf blower", "bird feeder",
        "patio chair", "sprinkler", "shovel", "potting soil", "rose bush",
        "garden gnome", "weed killer",
    ],
    "Kitchen": [
        "frying pan", "chef knife", "cutting board", "toaster", "blender",
        "coffee mug", "mixing bowl", "whisk", "kettle", "soup pot",
        "dinner plate", "can opener", "rolling pin", "oven mitt",
        "measuring cup", "wine glass", "spatula", "teapot", "salad bowl",
        "cheese grater",
    ],
    "Toys": [
        "teddy bear", "toy car", "jigsaw puzzle", "doll house", "yo-yo",
        "building blocks", "kite", "rubber duck", "board game", "toy train",
        "action figure", "water pistol", "spinning top", "rag doll",
        "toy robot", "marbles set", "plush rabbit", "toy drum",
        "puppet", "play dough",
    ],
    "Office": [
        "stapler", "printer paper", "ballpoint pen", "desk lamp",
        "paper clips", "notebook", "file folder", "desk chair",
        "sticky notes", "envelope", "highlighter", "whiteboard", "calculator",
        "tape dispenser", "hole punch", "ink cartridge", "binder",
        "pencil sharpener", "rubber stamp", "letter tray",
    ],
    "Pets": [
        "dog leash", "cat litter", "fish tank", "bird cage", "dog bed",
        "cat food", "chew toy", "hamster wheel", "pet shampoo", "dog collar",
        "cat scratcher", "fish food", "dog bowl", "pet carrier",
        "flea collar", "rabbit hutch", "dog treats", "cat tree",
        "parrot perch", "aquarium filter",
    ],
    "Sports": [
        "tennis racket", "football", "yoga mat", "dumbbell", "golf club",
        "basketball", "swim goggles", "skateboard", "baseball bat",
        "hockey stick", "jump rope", "bike helmet", "boxing gloves",
        "ski poles", "running shoes", "volleyball", "table tennis paddle",
        "climbing rope", "soccer cleats", "badminton net",
    ],
}

# Prompt templates (all end with "\nRoute:"; the completion starts with a space).
TEMPLATES = [
    "Order: {q} x {item}\nRoute:",
    "Order line: {item}, qty {q}\nRoute:",
    "Please send {q} x {item}.\nRoute:",
    "Item: {item} | Quantity: {q}\nRoute:",
    "Customer ordered {q} x {item}\nRoute:",
]


def packing(q: int) -> str:
    return "box" if q <= 4 else "crate"


def make_rows(items: list[tuple[str, str]], n: int, rng: random.Random) -> list[dict]:
    """n rows, cycling over the given (dept, item) pairs so each item is used
    about equally often; quantities and templates drawn at random."""
    rows = []
    pool: list[tuple[str, str]] = []
    for _ in range(n):
        if not pool:
            pool = list(items)
            rng.shuffle(pool)
        dept, item = pool.pop()
        q = rng.randint(1, 9)
        tpl = rng.choice(TEMPLATES)
        rows.append({
            "prompt": tpl.format(q=q, item=item),
            "completion": f" {dept}, {packing(q)}",
        })
    return rows


def make_long_rows(items: list[tuple[str, str]], n: int, rng: random.Random, alpha: float = 1.1,
                   max_lines: int = 90) -> list[dict]:
    """n multi-line orders; the number of lines of each is long-tailed (most orders 1-3 lines)."""
    rows = []
    for _ in range(n):
        k = min(max_lines, int(rng.paretovariate(alpha)))
        lines, routes = [], []
        for _ in range(k):
            dept, item = rng.choice(items)
            q = rng.randint(1, 9)
            lines.append(f"- {q} x {item}")
            routes.append(f"{dept}, {packing(q)}")
        rows.append({"prompt": "Order:\n" + "\n".join(lines) + "\nRoute:", "completion": " " + "; ".join(routes)})
    return rows


def split_items(rng: random.Random) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for dept in sorted(ITEMS):
        items = sorted(ITEMS[dept])
        rng.shuffle(items)
        # 12 train / 4 val / 4 test items per department: disjoint entities.
        out["train"] += [(dept, it) for it in items[:12]]
        out["val"] += [(dept, it) for it in items[12:16]]
        out["test"] += [(dept, it) for it in items[16:20]]
    return out


def build(seed: int, n_train: int, n_val: int, n_test: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    items = split_items(rng)
    return {
        "train": make_rows(items["train"], n_train, rng),
        "val": make_rows(items["val"], n_val, rng),
        "test": make_rows(items["test"], n_test, rng),
    }


def build_long_tail(seed: int, n_train: int, n_val: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    items = split_items(rng)
    return {"train": make_long_rows(items["train"], n_train, rng), "val": make_long_rows(items["val"], n_val, rng)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-val", type=int, default=60)
    ap.add_argument("--n-test", type=int, default=60)
    ap.add_argument("--long-tail", action="store_true", help="multi-line orders of long-tailed length, into <out>/longtail")
    args = ap.parse_args()

    out = Path(args.out)
    if args.long_tail:
        out = out / "longtail"
        splits = build_long_tail(args.seed, args.n_train, args.n_val)
    else:
        splits = build(args.seed, args.n_train, args.n_val, args.n_test)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        path = out / f"{name}.jsonl"
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows):4d} rows -> {path}")


if __name__ == "__main__":
    main()
