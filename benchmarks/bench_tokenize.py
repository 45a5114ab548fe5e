"""Tokenising a data file: records per second by record format, on SmolLM2-135M's tokenizer and chat template.

Three ways over the same records, alternating (each way once per repeat, the order turned each time):
- ``moopt``: ``moopt.train.data.tokenize_records`` as a study runs it (each chunk's texts, chat renderings
  included, encoded in one call of the tokenizer), with labels on the completion / assistant tokens only;
- ``moopt-one-by-one``: the same function with the batch turned off, each text encoded by a call of its own (a
  chat record's 3 to 5 renderings so, before this benchmark's commit): the same examples, checked equal;
- ``apply_chat_template``: one ``tokenizer.apply_chat_template(tokenize=True)`` a conversation (or one
  ``tokenizer(text)`` a plain record) and no labels: the least a stack pays that tokenises record by record, as
  TRL's SFTTrainer does through ``datasets.map``.

Records are synthetic, their lengths long-tailed (a few to ~1,000 words; benchmarks/common.py's words):

    python -P benchmarks/bench_tokenize.py            # ~3 min on 2 cores
    python -P benchmarks/bench_tokenize.py --records 500 --repeats 1

Writes benchmarks/results/tokenize_cpu.csv (common.py's schema: what = records_per_s, problem = the format,
provider as above) and prints each format's records/s and the ratios.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also under python -P
from common import RESULTS, WORDS, device_name, row, write_rows  # noqa: E402

FORMATS = ["text", "prompt_completion", "instruction", "messages", "messages_multiturn"]


def _text(rng: random.Random) -> str:
    n = min(1000, max(3, int(rng.paretovariate(1.2) * 8)))  # long-tailed: median ~14 words, a tail to 1,000
    return " ".join(rng.choice(WORDS) for _ in range(n))


def records(fmt: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if fmt == "text":
            out.append({"text": _text(rng)})
        elif fmt == "prompt_completion":
            out.append({"prompt": _text(rng) + " answer :", "completion": " " + _text(rng)})
        elif fmt == "instruction":
            out.append({"instruction": _text(rng), "input": _text(rng) if rng.random() < 0.4 else "",
                        "output": _text(rng)})
        else:
            turns = [{"role": "system", "content": _text(rng)}]
            for _ in range(3 if fmt == "messages_multiturn" else 1):
                turns += [{"role": "user", "content": _text(rng)}, {"role": "assistant", "content": _text(rng)}]
            out.append({"messages": turns})
    return out


def floor(recs: list[dict], tok) -> int:
    """Tokens of one call per record, no labels: what any record-by-record stack pays at least."""
    n = 0
    for rec in recs:
        if "messages" in rec or "instruction" in rec:
            msgs = rec.get("messages") or [{"role": "user", "content": rec["instruction"] + "\n\n" + rec["input"]},
                                           {"role": "assistant", "content": rec["output"]}]
            out = tok.apply_chat_template(msgs, tokenize=True)
            n += len(out["input_ids"] if hasattr(out, "keys") else out)
        else:
            n += len(tok(rec.get("text") or rec["prompt"] + rec["completion"])["input_ids"])
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=2000, help="records per format")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--formats", nargs="+", default=FORMATS, choices=FORMATS)
    ap.add_argument("--out", type=Path, default=RESULTS / "tokenize_cpu.csv")
    a = ap.parse_args(argv)
    from transformers import AutoTokenizer

    from moopt.train import data
    from moopt.train.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    batched = data._encode_batch

    def moopt_way(recs, one_by_one: bool):
        data._encode_batch = (lambda tokenizer, records: 1) if one_by_one else batched
        try:
            return [(e.input_ids, e.labels) for e in data.tokenize_records(recs, tok, "bench")]
        finally:
            data._encode_batch = batched

    ways = {"moopt": lambda r: moopt_way(r, False), "moopt-one-by-one": lambda r: moopt_way(r, True),
            "apply_chat_template": lambda r: floor(r, tok)}
    dev, rows = device_name("cpu"), []
    for fmt in a.formats:
        recs = records(fmt, a.records)
        times: dict[str, list[float]] = {w: [] for w in ways}
        outs = {}
        for rep in range(a.repeats):
            for w in (list(ways) if rep % 2 == 0 else list(ways)[::-1]):
                t = time.perf_counter()
                outs[w] = ways[w](recs)
                times[w].append(time.perf_counter() - t)
        if [(i.tolist(), la.tolist()) for i, la in outs["moopt"]] != \
                [(i.tolist(), la.tolist()) for i, la in outs["moopt-one-by-one"]]:
            raise SystemExit(f"{fmt}: the batched examples differ from the one-by-one ones")
        tokens = sum(len(ids) for ids, _ in outs["moopt"])
        rate = {w: a.records / min(ts) for w, ts in times.items()}  # the best repeat: the least disturbed
        print(f"{fmt:20s} " + "  ".join(f"{w} {r:7.0f}/s" for w, r in rate.items())
              + f"   moopt / one-by-one {rate['moopt'] / rate['moopt-one-by-one']:.2f}x, "
              f"/ apply_chat_template {rate['moopt'] / rate['apply_chat_template']:.2f}x  ({tokens / a.records:.0f} tokens a record)")
        for w, r in rate.items():
            rows.append(row("records_per_s", fmt, w, dev, round(r, 1), "records/s",
                            params={"records": a.records, "repeats": a.repeats, "tokens_per_record": round(tokens / a.records)}))
    print("wrote", write_rows(rows, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
