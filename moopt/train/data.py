"""Instruction data: reading/validation (JSONL, JSON array, Parquet), tokenisation with completion-only labels,
batching.

Files: JSON Lines (``.jsonl``; also a ``.json`` file that is not an array), a JSON array of records (``.json``,
as Alpaca's ``alpaca_data.json``), or Parquet (``.parquet``, or any file starting with Parquet's magic bytes),
one record per row with the keys as columns.
Record formats (TRL's conventions), detected per record:
- ``{"text": ...}``: language modelling, loss on every token;
- ``{"prompt": ..., "completion": ...}``: the two strings concatenated as is and tokenised together, loss on the
  completion's tokens; both lists of chat turns (TRL's conversational prompt-completion): the chat template over
  both, loss on the completion's assistant turns;
- ``{"instruction": ..., "input": ..., "output": ...}`` (``input`` optional): rendered with the
  tokenizer's chat template (user = instruction + input, assistant = output) when it has one, else
  with the Alpaca template; loss on the output;
- ``{"messages": [{"role": ..., "content": ...}, ...]}``: chat template, loss on assistant turns.
An EOS token is appended after a plain-text completion so the model learns to stop (a chat template's turn ends with
its own end-of-turn token, learnt as part of the turn), and each example starts with the special tokens the tokenizer
puts before a text (Llama's BOS: ``special_prefix``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moopt.errors import ConfigError

IGNORE = -100
ALPACA = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
ROLES = ("system", "user", "assistant")
MAX_REPORTED = 5  # errors listed before "... and N more"
_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate every record; raise one ConfigError listing the first problems, each located as
    ``file:line`` (JSON Lines), ``file: record N (line L)`` (JSON array) or ``file: row N`` (Parquet), N from 1."""
    if not str(path).strip():
        raise ConfigError("a data file option is empty: give the file's path")
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a data file (JSONL, a JSON array or Parquet)")
    if not path.is_file():
        raise ConfigError(f"{path}: " + ("not a regular file (a device, a pipe or a socket); give a data file: a study "
                                         "reads it more than once" if path.exists() else "file not found"))
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _READ:  # a study's start checks each file four ways (format, completions, formats, overlap)
        return _READ[key]
    rows, errors = [], []
    for where, rec, problem in _records(path):
        problem = problem or record_problem(rec)
        if problem:
            errors.append(f"{where}: {problem}")
        else:
            rows.append(rec)
    if not rows and not errors:
        errors.append(f"{path}: no records (empty file)")
    if errors:
        more = f"; ... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise ConfigError("; ".join(errors[:MAX_REPORTED]) + more)
    if _KEEP_READ:
        _READ[key] = rows
    return rows


_READ: dict[tuple, list[dict[str, Any]]] = {}  # (path, size, mtime) -> records, while a study's start reads them
_KEEP_READ = False


def keep_records() -> None:
    """From now on ``read_records`` of an unchanged file parses it once (a study's start read each file four times:
    1 s and ~5x the file's size in RSS each for 300k records), until ``forget_records``."""
    global _KEEP_READ
    _KEEP_READ = True


def forget_records() -> None:
    """Let go of the records ``keep_records`` had kept, and keep no more (a study's start does, once checked)."""
    global _KEEP_READ
    _KEEP_READ = False
    _READ.clear()


read_jsonl = read_records  # a second name for it (moopt.study.gate and tests/test_data.py use it)


def data_format(path: Path) -> str:
    """``jsonl`` | ``json_array`` | ``parquet``: ``.parquet`` and ``.jsonl`` by extension; any other file by its
    content (Parquet's magic bytes ``PAR1``; a first character ``[`` makes a JSON array, else JSON Lines)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    suffix = path.suffix.lower()
    if suffix == ".parquet" or head[:4] == b"PAR1":
        return "parquet"
    if suffix == ".jsonl":
        return "jsonl"
    return "json_array" if head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")[:1] == b"[" else "jsonl"


def _records(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    """``(where, record, problem)`` for each record; ``problem`` is set for a JSON Lines line that does not parse."""
    fmt = data_format(path)
    if fmt == "parquet":
        yield from _parquet_records(path)
        return
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raise ConfigError(f"{path}: gzip-compressed; decompress it first (gunzip -k {path})")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ConfigError(f"{path}: UTF-16 text; save it as UTF-8 (iconv -f UTF-16 -t UTF-8 {path})")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    del raw  # the text alone from here: the bytes, the text and a list of its lines were held at once (~3x the file)
    if fmt == "json_array":
        yield from _array_records(path, text)
        return
    if (whole := _one_json_document(text)) is not None:  # a whole file of JSON that is not JSON Lines
        if isinstance(whole, list):
            raise ConfigError(f"{path}: a JSON array, not JSON Lines (one record per line): name it .json")
        if isinstance(whole, dict) and record_format(whole) is None:
            lists = [k for k, v in whole.items() if isinstance(v, list)]
            where = f" (its records may be the list under {', '.join(repr(k) for k in lists[:3])})" if lists else ""
            raise ConfigError(f"{path}: one JSON object, not records{where}: give a JSON array of records or JSON "
                              "Lines (one record per line)")
    first = text.lstrip("\ufeff \t\r\n").split("\n", 1)[0]
    if first and first[0] not in "{[" and "," in first and _json_value(first) is None:
        raise ConfigError(f"{path}: not JSON (its first line reads {first[:60]!r}: CSV?); give JSON Lines, a JSON array "
                          "or Parquet")
    for lineno, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            cr = " (its lines end in a lone CR, old Mac style: convert them, e.g. tr '\\r' '\\n')" if "\r" in line.rstrip() else ""
            yield f"{path}:{lineno}", None, f"invalid JSON ({e.msg.removesuffix(' at')} at column {e.colno}){cr}"
        except _DuplicateKey as e:
            yield f"{path}:{lineno}", None, f"`{e.key}` is given twice in one object of the record ({TWICE})"
        else:
            yield f"{path}:{lineno}", rec, None


TWICE = "json would keep the last value without a word: remove the other"


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: a key given twice in one object is an error, as in a YAML file (json keeps the last
    value and drops the other without a word)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _lines(text: str) -> Iterator[str]:
    """``text.split("\n")`` one line at a time: the list of them all held another copy of the file (io.StringIO
    holds one of 4 bytes a character)."""
    start = 0
    while start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        yield text[start:end]
        start = end + 1


def _json_value(text: str) -> Any:
    """``text`` parsed as JSON; None where it is not JSON (or is JSON's null)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _one_json_document(text: str) -> Any:
    """The file's JSON value where the whole text is one value spread over several lines (a pretty-printed array or
    object that JSON Lines would read as broken lines); None otherwise."""
    return _json_value(text) if text.strip().count("\n") else None


def _array_records(path: Path, text: str) -> Iterator[tuple[str, Any, str | None]]:
    """The records of a JSON array, one at a time with the line each starts on; malformed JSON stops the read
    with one error at its line and column."""

    def malformed(msg: str, at: int) -> ConfigError:
        line, col = text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
        return ConfigError(f"{path}: invalid JSON at line {line} column {col} ({msg})")

    decoder = json.JSONDecoder(object_pairs_hook=_unique_keys)
    pos = _WS.match(text, _WS.match(text).end() + 1).end()  # past "[" and the whitespace after it
    line, counted, n = 1, 0, 0
    if not text.startswith("]", pos):
        while True:
            try:
                rec, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise malformed(e.msg, e.pos) from None
            except _DuplicateKey as e:
                line = line + text.count("\n", counted, pos)
                raise ConfigError(f"{path}: record {n + 1} (line {line}): `{e.key}` is given twice in one object of the "
                                  f"record ({TWICE})") from None
            n += 1
            line, counted = line + text.count("\n", counted, pos), pos
            yield f"{path}: record {n} (line {line})", rec, None
            pos = _WS.match(text, end).end()
            if text.startswith(",", pos):
                pos = _WS.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                break
            else:
                raise malformed("expected ',' or ']' after a record", pos)
    rest = _WS.match(text, pos + 1).end()
    if rest < len(text):
        raise malformed("extra data after the array", rest)


def _parquet_records(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        rows = pq.read_table(path).to_pylist()  # plain Python: lists and dicts, None for null
    except (pa.ArrowException, OSError) as e:
        raise ConfigError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    for i, row in enumerate(rows, 1):
        clean = _without_nulls(row)
        if record_format(clean) is None and (fmt := record_format(row)) is not None:  # its format's field is null
            null = next(k for k in REQUIRED[fmt] if row.get(k) is None)
            yield f"{path}: row {i}", None, f"`{null}` is null"
            continue
        yield f"{path}: row {i}", clean, None


def _without_nulls(x: Any) -> Any:
    """Drop null fields: a column (or a message struct's field) that this row does not have."""
    if isinstance(x, dict):
        return {k: _without_nulls(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_without_nulls(v) for v in x]
    return x


def record_format(rec: dict[str, Any]) -> str | None:
    if "messages" in rec:
        return "messages"
    if "prompt" in rec and "completion" in rec:
        return "prompt_completion"
    if "instruction" in rec and "output" in rec:
        return "instruction"
    if "text" in rec:
        return "text"
    return None


def _not_unicode(text: str) -> str | None:
    """Why ``text`` is no Unicode text a tokenizer can take (a lone surrogate, as JSON's "\\ud800" escape gives), or
    None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"is not valid Unicode text (a lone surrogate {text[e.start]!r} at character {e.start + 1})"
    return None


REQUIRED = {"text": ["text"], "prompt_completion": ["prompt", "completion"], "instruction": ["instruction", "output"],
            "messages": ["messages"]}


def record_problem(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    fmt = record_format(rec)
    if fmt is None:
        return (
            f"unknown record format with keys {sorted(rec)}; expected text | prompt+completion | "
            "instruction+input+output | messages"
        )
    if fmt == "messages":
        return _turns_problem(rec["messages"], "messages")
    if fmt == "prompt_completion" and isinstance(rec["prompt"], list):  # TRL's conversational prompt-completion
        if not isinstance(rec["completion"], list):
            return f"`completion` must be a list of messages as `prompt` is, got {type(rec['completion']).__name__}"
        return _turns_problem(rec["prompt"], "prompt", learn=False) or _turns_problem(rec["completion"], "completion")
    keys = REQUIRED[fmt]
    for k in keys + (["input"] if fmt == "instruction" and rec.get("input") is not None else []):
        if not isinstance(rec[k], str):
            return f"`{k}` must be a string, got {type(rec[k]).__name__}"
        if (bad := _not_unicode(rec[k])) is not None:
            return f"`{k}` {bad}"
    if not rec[keys[-1]].strip():
        return f"`{keys[-1]}` is empty"
    return None


def _turns_problem(msgs: Any, name: str, learn: bool = True) -> str | None:
    """What is wrong with a list of chat turns (``messages``, or a conversational record's ``prompt``/``completion``);
    ``learn``: it must hold an assistant turn, none of them empty (the loss is taken on them)."""
    if not isinstance(msgs, list) or not msgs:
        return f"`{name}` must be a non-empty list"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"{name}[{i}] must be {{'role': one of {list(ROLES)}, 'content': str}}"
        if (bad := _not_unicode(m["content"])) is not None:
            return f"{name}[{i}].content {bad}"
        if learn and m["role"] == "assistant" and not m["content"].strip():
            return f"{name}[{i}].content is empty (an assistant turn the loss is taken on: it would teach empty replies)"
    if learn and not any(m["role"] == "assistant" for m in msgs):
        return f"`{name}` has no assistant turn to learn from"
    return None


@dataclass(eq=False)  # (arrays: == would compare element by element; compare .tolist()s)
class Example:
    """One tokenised record. Its ids and labels are held as int32 arrays (given as lists or arrays): as lists of
    Python ints they took ~76 bytes a token (20k multi-turn chats, 7.2M tokens: 522 MiB held, outside the memory
    estimate and the probe; a warm worker keeps them between trials); as arrays, 8."""

    input_ids: np.ndarray
    labels: np.ndarray  # IGNORE where no loss is taken
    merged: bool = False  # a prompt/completion whose prompt tokenises otherwise alone (a merge across the join)

    def __post_init__(self):
        self.input_ids = np.asarray(self.input_ids, dtype=np.int32)
        self.labels = np.asarray(self.labels, dtype=np.int32)


@dataclass
class TokenizedSet:
    examples: list[Example]
    n_truncated: int  # examples longer than max_seq_length (cut on the right)
    n_tokens: int  # tokens after truncation
    n_label_tokens: int  # tokens that carry loss
    n_unlabelled: int = 0  # examples left out: cut to max_seq_length, they kept no token that carries loss


def _render(tokenizer, messages, generation_prompt: bool) -> str:
    """The chat template's text of ``messages``: ``apply_chat_template(tokenize=True)`` is this text encoded without
    special tokens added (transformers' own call), which ``_ids`` does, in batches where it can."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _chat_texts(tokenizer, msgs: list[dict[str, str]], learn_from: int = 0) -> dict[tuple, str]:
    """Every rendering ``_chat_example`` compares: the whole conversation; for each assistant turn it learns, the
    conversation before it with the generation prompt (an empty assistant turn, for one that opens it) and up to it."""
    texts: dict[tuple, str] = {("all",): _render(tokenizer, msgs, False)}
    for i, m in enumerate(msgs):
        if m["role"] != "assistant" or i < learn_from:
            continue
        texts[("before", i)] = (_render(tokenizer, msgs[:i], True) if i else
                                _render(tokenizer, [{"role": "assistant", "content": ""}], False))
        # (the conversation up to its last turn is the whole: the same call, not rendered twice)
        texts[("upto", i)] = texts[("all",)] if i == len(msgs) - 1 else _render(tokenizer, msgs[: i + 1], False)
    return texts


def _ids(tokenizer, text: str) -> list[int]:
    memo = getattr(tokenizer, "_moopt_encoded", None)  # (tokenize_records' batch of this chunk's texts)
    if memo is not None and text in memo:
        return memo[text]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _as_chat(rec: Any, tokenizer) -> tuple[list[dict[str, str]], int] | None:
    """A record that ``tokenize_record`` renders with the chat template, as (its turns, the first turn learnt from);
    else None."""
    fmt = record_format(rec) if isinstance(rec, dict) else None
    if fmt == "messages":
        return rec["messages"], 0
    if fmt == "prompt_completion" and isinstance(rec["prompt"], list):  # conversational: the completion's turns learnt
        return rec["prompt"] + rec["completion"], len(rec["prompt"])
    if fmt == "instruction" and getattr(tokenizer, "chat_template", None):
        user = rec["instruction"] + (("\n\n" + rec["input"]) if rec.get("input") else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}], 0
    return None


ENCODE_CHUNK = 1024  # records whose plain texts are encoded in one call of the tokenizer, at most
ENCODE_CHARS = 2_000_000  # ... and texts of at most about this many characters (one record's more): long multi-turn
# chats' renderings grow with the square of their turns, and 1024 of 30 turns held 4.6 GB at once


def _plain_texts(rec: Any) -> list[str]:
    """The texts ``tokenize_record`` encodes with ``_ids`` for a text or string prompt/completion record (the others
    go through the chat template): what tokenize_records encodes in batches."""
    if not isinstance(rec, dict):
        return []
    fmt = record_format(rec)
    if fmt == "text" and isinstance(rec.get("text"), str):
        return [rec["text"]]
    if fmt == "prompt_completion" and isinstance(rec["prompt"], str) and isinstance(rec["completion"], str):
        return [rec["prompt"] + rec["completion"], rec["prompt"]]
    return []


def _encode_batch(tokenizer, records: list) -> int:
    """Encode the texts of the first of ``records`` in one call (transformers' per-call overhead was ~85% of
    tokenising a prompt/completion file: 13 s of 100k records' 15, where the Rust encoder took 2; a chat record's 3 to
    5 renderings, encoded one by one, made it ~4x slower than a prompt/completion one) and keep them on the tokenizer
    for ``_ids``, with each chat record's renderings (``_chat_texts``) for ``_chat_example``: as many records as
    ENCODE_CHARS of text allow (at least one); how many. A record whose template or text the tokenizer refuses is left
    to the records one by one (their error names the record)."""
    texts: list[str] = []
    rendered: dict[int, dict[tuple, str]] = {}
    chars, n = 0, 0
    chat = getattr(tokenizer, "chat_template", None)
    for rec in records:
        if n and chars >= ENCODE_CHARS:
            break
        n += 1
        mine = _plain_texts(rec)
        if chat and (turns := _as_chat(rec, tokenizer)) is not None:
            try:
                rendered[id(rec)] = _chat_texts(tokenizer, *turns)
            except Exception:  # noqa: BLE001 - jinja2's TemplateError, ...: said by that record's own call
                continue
            mine = list(rendered[id(rec)].values())
        texts += mine
        chars += sum(map(len, mine))
    texts = list(dict.fromkeys(texts))
    memo = None
    if texts and getattr(tokenizer, "is_fast", False):
        try:
            ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
            memo = dict(zip(texts, ids))
        except Exception:  # noqa: BLE001 - one text it cannot encode: said by that record's own call
            memo = None
    try:
        tokenizer._moopt_encoded = memo
        tokenizer._moopt_rendered = rendered if records else None
    except AttributeError:
        pass
    return n


def _shared_start(a: list[int], b: list[int]) -> int:
    """How many tokens ``a`` and ``b`` share at their start."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def special_prefix(tokenizer) -> list[int]:
    """The special tokens the tokenizer itself puts before a text (Llama's BOS), as ``tokenizer(text)`` does: read
    from an encoding with and without them, since a fast tokenizer adds BOS in its tokenizer.json post-processor while
    ``add_bos_token`` reads False (transformers 5). Cached on the tokenizer."""
    cached = getattr(tokenizer, "_moopt_prefix", None)
    if cached is not None:
        return cached
    plain = _ids(tokenizer, "a")
    full = list(tokenizer("a")["input_ids"])
    at = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    prefix = [t for t in full[:at] if t in special]
    if not prefix and getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None:
        prefix = [tokenizer.bos_token_id]
    try:
        tokenizer._moopt_prefix = prefix
    except AttributeError:
        pass
    return prefix


def _framed(ids: list[int], bos: list[int], eos: list[int]) -> tuple[list[int], int]:
    """``ids`` with the tokenizer's prefix before and EOS after, each unless the text has it already (a prompt
    rendered with a chat template as text starts with <|begin_of_text|>; a completion may end with the EOS token
    written out): no doubled BOS or EOS. (The ids, how many prefix tokens were put before.)"""
    lead = bos if bos and ids[:len(bos)] != bos else []
    end = eos if eos and ids[-len(eos):] != eos else []
    return lead + ids + end, len(lead)


def tokenize_record(rec: dict[str, Any], tokenizer) -> Example:
    fmt = record_format(rec)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos = special_prefix(tokenizer)
    if (chat := _as_chat(rec, tokenizer)) is not None:
        texts = (getattr(tokenizer, "_moopt_rendered", None) or {}).get(id(rec))  # (rendered by _encode_batch)
        return _chat_example(chat[0], tokenizer, chat[1], texts=texts)
    if fmt == "text":
        ids = _framed(_ids(tokenizer, rec["text"]), bos, eos)[0]
        return Example(ids, list(ids))
    if fmt == "prompt_completion":
        # tokenised together, as TRL does: a SentencePiece tokenizer (Llama 2, Mistral) encodes a completion alone with
        # a word-start marker of its own that the joined text has not; the loss starts where the prompt's tokens end
        # (where a merge crosses the join, at the first token that differs from the prompt's)
        both, p = _ids(tokenizer, rec["prompt"] + rec["completion"]), _ids(tokenizer, rec["prompt"])
        cut = _shared_start(p, both)
        ids, lead = _framed(both, bos, eos)
        return Example(ids, [IGNORE] * (lead + cut) + ids[lead + cut:], merged=cut < len(p))
    if fmt == "instruction":  # no chat template: Alpaca's
        block = f"### Input:\n{rec['input']}\n\n" if rec.get("input") else ""
        prompt = ALPACA.format(instruction=rec["instruction"], input_block=block)
        return tokenize_record({"prompt": prompt, "completion": rec["output"]}, tokenizer)
    return _chat_example(rec["messages"], tokenizer)


def _chat_example(msgs: list[dict[str, str]], tokenizer, learn_from: int = 0,
                  texts: dict[tuple, str] | None = None) -> Example:
    """A conversation rendered with the chat template, loss on the tokens each assistant turn (from turn ``learn_from``
    on: a conversational record's completion) adds to it.

    A turn starts where the conversation before it, with the generation prompt, ends; that rendering must be the
    whole conversation's start (Mistral v0.3's template renders a system prompt only before the last user turn, so it
    is not: an error, where counting its tokens would label the wrong ones). A turn ends where its own rendering
    (the conversation up to it) ends, as found in the whole: a template that adds to the last turn what it leaves out
    of earlier ones (Qwen3's empty think block) makes that rendering longer than the turn is within the whole, and
    the turn is the longest end of it that the whole has at its place."""
    if not getattr(tokenizer, "chat_template", None):
        what = "records with `messages`" if learn_from == 0 else "conversational prompt/completion records"
        raise ConfigError(f"{what} need a tokenizer with a chat template")
    if texts is None:
        texts = _chat_texts(tokenizer, msgs, learn_from)
    ids = _ids(tokenizer, texts[("all",)])
    labels = [IGNORE] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant" or i < learn_from:
            continue
        if i:
            before = _ids(tokenizer, texts[("before", i)])
            if ids[:len(before)] != before:
                raise ConfigError(
                    f"turn {i + 1} (assistant): the chat template renders the conversation before it differently from "
                    "the whole conversation, so its tokens cannot be told apart (Mistral v0.3's template, for one, "
                    "renders a system prompt only before the last user turn: put the system text into the first user "
                    "turn instead)")
            start = len(before)
        else:  # it opens the conversation: its content starts where an empty turn's rendering parts from this one
            start = _shared_start(_ids(tokenizer, texts[("before", i)]), ids)
        turn = _ids(tokenizer, texts[("upto", i)])[start:]
        rest = ids[start:]
        k = next((k for k in range(min(len(turn), len(rest)), 0, -1) if turn[len(turn) - k:] == rest[:k]), 0)
        if k == 0:
            raise ConfigError(f"turn {i + 1} (assistant): the chat template renders it differently within the whole "
                              "conversation than as its last turn, so its tokens cannot be told apart")
        end = start + k
        while end - start > 1 and _blank_after_special(tokenizer, ids[end - 2], ids[end - 1]):
            end -= 1  # ChatML's "\n" after <|im_end|>: never generated (generation stops at the end-of-turn token)
        labels[start:end] = ids[start:end]
    return Example(ids, labels)


def _blank_after_special(tokenizer, before: int, token: int) -> bool:
    """Whether ``token`` is whitespace only and follows a special token (the end-of-turn token a template writes a
    newline after): not learnt, as TRL's assistant masks leave it out; it counted in eval_accuracy as a near-certain
    token per turn."""
    special = getattr(tokenizer, "_moopt_special", None)
    if special is None:
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        try:
            tokenizer._moopt_special = special
        except AttributeError:
            pass
    return before in special and token not in special and not tokenizer.decode([token]).strip()


def _trained_key(rec: dict[str, Any]) -> str:
    """What a record trains on: its format's fields, not an id or other metadata."""
    fields = REQUIRED[record_format(rec)] + ["input"]
    return json.dumps({k: rec.get(k) for k in fields}, sort_keys=True, ensure_ascii=False, default=str)


def shared_records(reference: str | Path, other: str | Path) -> tuple[int, int]:
    """(How many records of ``other`` also appear, identical, in ``reference``, how many records ``other`` has): a
    validation set copied from the training set, or overlapping it, makes its objectives reward memorising them."""
    seen = {_trained_key(r) for r in read_records(reference)}
    records = read_records(other)
    return sum(_trained_key(r) in seen for r in records), len(records)


REPEATED_NOTED = 0.05  # the share of a training file's records repeating earlier ones from which it is said: short
# synthetic records repeat by chance (the bundled data: 10 of 300), a scrape or a concatenation twice repeats many


def repeated_records(path: str | Path) -> str | None:
    """A note when REPEATED_NOTED or more of the records of ``path`` repeat an earlier one (what they train on,
    ``_trained_key``): how many, the first few record numbers; else None. Each copy is trained on, so they weigh more
    than the rest."""
    seen: set[str] = set()
    records = read_records(path)
    again = []
    for i, rec in enumerate(records, 1):
        k = _trained_key(rec)
        if k in seen:
            again.append(i)
        seen.add(k)
    if len(again) < REPEATED_NOTED * len(records):
        return None
    listed = ", ".join(map(str, again[:MAX_REPORTED])) + (f" and {len(again) - MAX_REPORTED} more" if len(again) > MAX_REPORTED else "")
    return (f"{len(again)} of {len(records)} records of {path} repeat an earlier record ({'record' if len(again) == 1 else 'records'} "
            f"{listed}): each copy is trained on, so {'it weighs' if len(again) == 1 else 'they weigh'} more than the rest")


FORMAT_NAMES = {"messages": "messages", "prompt_completion": "prompt+completion", "instruction": "instruction+output",
                "text": "text"}


def mixed_formats(path: str | Path) -> str | None:
    """A note when records of ``path`` have the fields of more than one format (Alpaca's own file has
    instruction/input/output and a ``text`` that renders them): which format each is read as (``record_format``'s
    order) and which fields are then not trained on; else None."""
    counts: dict[tuple[str, ...], int] = {}
    records = read_records(path)
    for rec in records:
        kinds = tuple(f for f, keys in REQUIRED.items() if all(k in rec for k in keys))
        if len(kinds) > 1:
            order = list(FORMAT_NAMES)
            kinds = tuple(sorted(kinds, key=order.index))
            counts[kinds] = counts.get(kinds, 0) + 1
    if not counts:
        return None
    kinds, n = max(counts.items(), key=lambda kv: kv[1])
    used, unused = kinds[0], [k for f in kinds[1:] for k in REQUIRED[f] if k not in REQUIRED[kinds[0]]]
    more = f" (and {sum(counts.values()) - n} with other pairs of formats)" if len(counts) > 1 else ""
    return (f"{n} of {len(records)} records of {path} have the fields of {' and '.join(FORMAT_NAMES[k] for k in kinds)}"
            f"{more}: they are read as {FORMAT_NAMES[used]}; their {', '.join(f'`{k}`' for k in unused)} "
            f"{'is' if len(unused) == 1 else 'are'} not trained on")


LOSS_ON = {"messages": "the assistant turns", "prompt_completion": "the completion", "instruction": "the output",
           "text": "every token"}


def formats_across(path: str | Path) -> str | None:
    """A note when the records of ``path`` are of more than one format (a text record among prompt/completion ones
    trains on every token, its prompt included): how many of each, the fewer ones' record numbers, and what each
    format's loss is on; else None."""
    from collections import Counter

    records = read_records(path)
    kinds = [record_format(r) if isinstance(r, dict) else None for r in records]
    counts = Counter(k for k in kinds if k is not None)
    if len(counts) < 2:
        return None
    main_kind = counts.most_common(1)[0][0]
    others = []
    for kind, n in counts.most_common()[1:]:
        at = [i + 1 for i, k in enumerate(kinds) if k == kind]
        listed = ", ".join(map(str, at[:MAX_REPORTED])) + (f" and {len(at) - MAX_REPORTED} more" if len(at) > MAX_REPORTED else "")
        others.append(f"{n} {FORMAT_NAMES[kind]} (record{'s' if n > 1 else ''} {listed})")
    return (f"the records of {path} are of {len(counts)} formats: {counts[main_kind]} {FORMAT_NAMES[main_kind]}, "
            + ", ".join(others) + "; each trains as its format does (loss on "
            + "; ".join(f"{FORMAT_NAMES[k]}: {LOSS_ON[k]}" for k in counts) + ")")


def tokenize_records(records, tokenizer, path: str | Path, numbers=None, beat=None) -> Iterator[Example]:
    """``tokenize_record`` of each record; a record the tokenizer or its chat template refuses (Llama 2's template
    raises where roles do not alternate) is one ConfigError naming the file and the record (``numbers``: each record's
    number in the file, from 1; default their order). ``beat(done, total)`` (a reporter's heartbeat) after each chunk
    of records: 20k chat records took minutes with no count shown."""
    records = list(records)
    numbers = list(numbers or range(1, len(records) + 1))
    next_batch = 0  # the record the next batch of texts starts at
    try:
        for at, (n, rec) in enumerate(zip(numbers, records)):
            if at == next_batch:
                if beat is not None:
                    beat(at, len(records))
                next_batch = at + _encode_batch(tokenizer, records[at:at + ENCODE_CHUNK])
            try:
                yield tokenize_record(rec, tokenizer)
            except ConfigError as e:
                raise ConfigError(f"{path}: record {n}: {e}") from None
            except Exception as e:  # noqa: BLE001 - jinja2's TemplateError, the tokenizer's TypeError, ...
                first = (str(e).splitlines() or [""])[0][:200]
                raise ConfigError(f"{path}: record {n}: the tokenizer cannot encode it ({type(e).__name__}: {first})") from None
    finally:
        _encode_batch(tokenizer, [])  # nothing kept on the tokenizer after


def first_label(ex: Example) -> int:
    """Index of the example's first token that carries loss (never 0: no token predicts the first one); NO_LABEL
    (above any length) when none does. Truncated to max_seq_length, the example keeps a loss iff this is below it."""
    at = np.flatnonzero(ex.labels[1:] != IGNORE)
    return int(at[0]) + 1 if len(at) else NO_LABEL


NO_LABEL = 2**62  # first_label of an example no token of which carries loss


def no_completion_left(path: str | Path, n: int, max_seq_length: int) -> str:
    """The one line for a data file of which no example keeps a completion token within max_seq_length."""
    return (f"{path}: no example keeps a completion token within max_seq_length {max_seq_length} (in all {n}, the "
            f"prompt fills the first {max_seq_length} tokens, and sequences are cut on the right): raise "
            "data.max_seq_length or shorten the prompts")


def tokenize_file(path: str | Path, tokenizer, max_seq_length: int, beat=None) -> TokenizedSet:
    """Tokenise every record, cut to max_seq_length on the right. An example that keeps no token carrying loss
    once cut (its prompt fills max_seq_length) is left out: it would add nothing to the loss or to the
    per-token metrics, only compute (and a batch of nothing else would divide 0 by 0). None left: ConfigError."""
    records = read_records(path)
    examples = list(tokenize_records(records, tokenizer, path, beat=beat))
    if beat is not None:
        beat(len(records), len(records))
    return cut_examples(examples, max_seq_length, path)


def cut_examples(examples: list[Example], max_seq_length: int, path: str | Path) -> TokenizedSet:
    """``tokenize_file``'s cut of untruncated ``examples`` (of ``path``) to ``max_seq_length``: a warm worker keeps a
    file's examples once and cuts them for each trial's length (it tokenised the whole file again for each)."""
    kept, n_trunc, n_unlabelled = [], 0, 0
    for ex in examples:
        if first_label(ex) >= max_seq_length:
            n_unlabelled += 1
            continue
        if len(ex.input_ids) > max_seq_length:
            n_trunc += 1
            # copies: a view would keep the whole uncut arrays alive (100 examples of 20k tokens cut to 256: 80 kB
            # each held for 1 kB used)
            ex = Example(ex.input_ids[:max_seq_length].copy(), ex.labels[:max_seq_length].copy())
        kept.append(ex)
    if not kept and n_unlabelled:
        raise ConfigError(no_completion_left(path, n_unlabelled, max_seq_length))
    return tokenized_set(kept, n_trunc, n_unlabelled)


def tokenized_set(examples: list[Example], n_truncated: int, n_unlabelled: int = 0) -> TokenizedSet:
    """A TokenizedSet of ``examples`` with its token counts."""
    return TokenizedSet(
        examples,
        n_truncated=n_truncated,
        n_tokens=sum(len(e.input_ids) for e in examples),
        n_label_tokens=sum(int(np.count_nonzero(e.labels[1:] != IGNORE)) for e in examples),
        n_unlabelled=n_unlabelled,
    )


def subset(ds: TokenizedSet, n: int, seed: int = 0) -> TokenizedSet:
    """A fixed random ``n`` of ``ds``'s examples (the same ones for the same n and seed, in file order);
    ``ds`` itself when n covers it."""
    if n >= len(ds.examples):
        return ds
    keep = sorted(np.random.default_rng(seed).permutation(len(ds.examples))[:n].tolist())
    return tokenized_set([ds.examples[i] for i in keep], n_truncated=-1)  # -1: not tracked for a subset


def collate(batch: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in the batch; labels are IGNORE on padding."""
    T = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.from_numpy(e.input_ids)
        labels[i, :n] = torch.from_numpy(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


PACK_WORTH = 0.8  # a micro-batch is packed when its packed rows hold at most this share of its padded tokens


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of the examples of each row: first-fit decreasing into rows of ``capacity`` tokens (an
    example longer than that gets a row of its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        r = next((k for k, free in enumerate(room) if free >= n), None)
        if r is None:
            rows.append([])
            room.append(max(capacity, n))
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= n
    return rows


def worth_packing(lengths: list[int], capacity: int) -> bool:
    """Packing pays when it removes a fifth of a micro-batch's tokens or more: examples of similar
    lengths pad little, and one packed row's attention spans all of them (its cost grows with the
    square of the row's length), so such batches stay padded."""
    return packing_pays(pack_rows(lengths, capacity), lengths)


def packing_pays(rows: list[list[int]], lengths: list[int]) -> bool:
    """:func:`worth_packing` for rows already packed."""
    packed = len(rows) * max(sum(lengths[i] for i in row) for row in rows)
    return packed <= PACK_WORTH * len(lengths) * max(lengths)


def collate_packed(batch: list[Example], pad_id: int, capacity: int,
                   rows: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """The examples of one micro-batch packed into rows of at most ``capacity`` tokens (first-fit
    decreasing; an example is never split), padded to the longest row. ``position_ids`` restart at 0
    for each example (and for a row's padding), which is what makes transformers' attention keep each
    example to itself (it builds a block-diagonal causal mask from the restarts when no attention mask
    is given). Each example's first token carries no label, as in a padded row (no loss is taken on
    predicting it from the previous example's last token). ``attention_mask`` marks real tokens (for counting; it is not passed to the model)."""
    rows = rows if rows is not None else pack_rows([len(e.input_ids) for e in batch], capacity)
    T = max(sum(len(batch[i].input_ids) for i in row) for row in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    pos = torch.zeros((len(rows), T), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in sorted(row):  # inside a row, the micro-batch's own order
            e = batch[i]
            n = len(e.input_ids)
            ids[r, at:at + n] = torch.from_numpy(e.input_ids)
            labels[r, at:at + n] = torch.from_numpy(e.labels)
            labels[r, at] = IGNORE  # the first token is predicted from the previous example: no loss
            mask[r, at:at + n] = 1
            pos[r, at:at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(T - at)  # padding: a sequence of its own
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "position_ids": pos}


def batch_order(lengths: list[int], batch_size: int, strategy: str, generator: torch.Generator) -> list[list[int]]:
    """Indices of each micro-batch for one epoch.

    random: a fresh seeded shuffle; sequential: file order; length_grouped: shuffle, then sort by
    length inside windows of 50 batches (less padding), then shuffle the batches.
    """
    n = len(lengths)
    if strategy == "sequential":
        order = list(range(n))
    else:
        order = torch.randperm(n, generator=generator).tolist()
    if strategy == "length_grouped":
        window = batch_size * 50
        order = [i for s in range(0, n, window) for i in sorted(order[s : s + window], key=lambda i: -lengths[i])]
    batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    if strategy == "length_grouped":
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches


def batch_plan(
    lengths: list[int], batch_size: int, epochs: float, strategy: str, seed: int, pack_capacity: int | None = None,
) -> Iterator[tuple[float, list[int], list[list[int]] | None]]:
    """What :func:`micro_batches` builds from examples of these token counts, without the tensors: (epoch position,
    the micro-batch's example indices, its packed rows or None where it stays padded). The memory gate's probe reads
    the shapes a trial will meet from it (moopt.study.gate.MemoryGate.varied_shapes)."""
    per_epoch = math.ceil(len(lengths) / batch_size)
    total = max(1, math.ceil(per_epoch * epochs))
    done, epoch = 0, 0
    while done < total:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        for idx in batch_order(lengths, batch_size, strategy, g):
            if done >= total:
                return
            done += 1
            sizes = [lengths[i] for i in idx]
            # rows no wider than the batch's longest example (what its padded rows are): wider ones hold fewer rows
            # but attention's cost grows with the square of a row's width (a batch of 16 examples of 20-200 tokens
            # packed into one row of 1868 at max_seq_length 2048 trained slower than padded), and the memory gate
            # measures the padded batch
            capacity = min(pack_capacity, max(sizes)) if pack_capacity else None
            rows = pack_rows(sizes, capacity) if capacity else None
            yield done / per_epoch, idx, (rows if rows is not None and packing_pays(rows, sizes) else None)
        epoch += 1


def plan_shape(lengths: list[int], idx: list[int], rows: list[list[int]] | None) -> tuple[int, int]:
    """(rows, tokens per row) of one micro-batch of :func:`batch_plan`."""
    if rows is None:
        return len(idx), max(lengths[i] for i in idx)
    return len(rows), max(sum(lengths[idx[i]] for i in row) for row in rows)


def micro_batches(
    data: TokenizedSet, batch_size: int, epochs: float, strategy: str, seed: int, pad_id: int,
    pack_capacity: int | None = None,
) -> Iterator[tuple[float, dict[str, torch.Tensor]]]:
    """Yield (epoch position, batch) for ``epochs`` passes (a fractional last pass is cut short); with
    ``pack_capacity`` each batch's examples are packed into rows of at most that many tokens, and no wider than
    the batch's longest example (:func:`collate_packed`), where that removes a fifth of its tokens or more
    (:func:`worth_packing`), else padded rows (:func:`collate`). The order and rows: :func:`batch_plan`."""
    lengths = [len(e.input_ids) for e in data.examples]
    for pos, idx, rows in batch_plan(lengths, batch_size, epochs, strategy, seed, pack_capacity):
        examples = [data.examples[i] for i in idx]
        if rows is not None:
            yield pos, collate_packed(examples, pad_id, min(pack_capacity, max(lengths[i] for i in idx)), rows)
        else:
            yield pos, collate(examples, pad_id)


def n_micro_batches(n_examples: int, batch_size: int, epochs: float) -> int:
    return max(1, math.ceil(math.ceil(n_examples / batch_size) * epochs))
