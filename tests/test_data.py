import json
import math
import os

import numpy as np
import pytest
import torch

from moopt.errors import ConfigError
from moopt.train.data import (
    IGNORE,
    Example,
    batch_order,
    collate,
    micro_batches,
    read_jsonl,
    tokenize_file,
    tokenize_record,
    tokenized_set,
)


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_prompt_completion_loss_only_on_completion_plus_eos(tok):
    ex = tokenize_record({"prompt": "what is the color of sky ? answer :", "completion": " blue"}, tok)
    n_prompt = len(tok("what is the color of sky ? answer :", add_special_tokens=False)["input_ids"])
    assert ex.labels[:n_prompt].tolist() == [IGNORE] * n_prompt
    assert ex.labels[n_prompt:].tolist() == ex.input_ids[n_prompt:].tolist()
    assert ex.input_ids[-1] == tok.eos_token_id


class _SentencePieceLike:
    """Llama 2's tokenizer in miniature: a text that starts with a space gets a lone word-start marker "▁" first, and
    every word is "▁word", so " blue" alone is ["▁", "▁blue"] while "answer : blue" ends in "▁blue"."""

    eos_token_id, bos_token_id, all_special_ids, chat_template = 3, 2, [2, 3], None

    def __init__(self):
        self.vocab = {"▁": 4}

    def __call__(self, text, add_special_tokens=True):
        pieces = (["▁"] if text.startswith(" ") else []) + ["▁" + w for w in text.split()]
        return {"input_ids": [self.bos_token_id] * add_special_tokens + [self.vocab.setdefault(p, len(self.vocab) + 4)
                                                                         for p in pieces]}


def test_prompt_and_completion_are_tokenised_together_as_trl_does():
    """Tokenised apart, a SentencePiece tokenizer's completion " blue" starts with a "▁" token the joined text has not:
    the model would learn to say it. Together, the loss starts at the first token after the prompt's."""
    sp = _SentencePieceLike()
    ex = tokenize_record({"prompt": "what is it ? answer :", "completion": " blue"}, sp)
    joined = sp("what is it ? answer : blue")["input_ids"]
    assert ex.input_ids.tolist() == joined + [sp.eos_token_id]  # BOS, the joined text, EOS: no lone "▁"
    assert [t for t, lab in zip(ex.input_ids.tolist(), ex.labels.tolist()) if lab != IGNORE] == [sp.vocab["▁blue"], sp.eos_token_id]


def test_text_records_train_on_every_token(tok):
    ex = tokenize_record({"text": "the sky is blue"}, tok)
    assert ex.labels.tolist() == ex.input_ids.tolist()


def test_instruction_records_mask_the_instruction(tok):
    ex = tokenize_record({"instruction": "what is the color of sky ?", "input": "", "output": "blue"}, tok)
    assert (ex.labels == IGNORE).any() and ex.labels[-1] == tok.eos_token_id


def test_messages_loss_only_on_assistant_turns(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}assistant : {% endif %}"
    rec = {"messages": [{"role": "user", "content": "what is the color of sky ?"}, {"role": "assistant", "content": "blue"}]}
    ex = tokenize_record(rec, tok)
    kept = [t for t, l in zip(ex.input_ids.tolist(), ex.labels.tolist()) if l != IGNORE]
    assert tok.convert_ids_to_tokens(kept)[0] == "blue"
    assert "what" not in tok.convert_ids_to_tokens(kept)


def test_a_conversation_that_opens_with_an_assistant_turn_has_no_loss_on_the_template_before_it(tiny_model):
    """SmolLM2's template puts a default system prompt before the first turn: the loss starts at the assistant's
    content, not at the first token of the rendering."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = ("what is the color : {% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> "
                         "{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}")
    rec = {"messages": [{"role": "assistant", "content": "red"}, {"role": "user", "content": "sky ?"},
                        {"role": "assistant", "content": "blue"}]}
    ex = tokenize_record(rec, tok)
    kept = tok.convert_ids_to_tokens([t for t, lab in zip(ex.input_ids.tolist(), ex.labels.tolist()) if lab != IGNORE])
    assert kept == ["red", "</s>", "blue", "</s>"], kept


def _bos_tokenizer(tiny_model, tmp_path):
    """The tiny tokenizer with a Llama-3-style tokenizer.json: its post-processor puts BOS before every text, while
    ``add_bos_token`` reads False (transformers 5)."""
    from tokenizers import processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    fast = AutoTokenizer.from_pretrained(tiny_model)
    inner = fast.backend_tokenizer
    inner.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", fast.bos_token_id)])
    PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(tmp_path / "bos_tok")
    return AutoTokenizer.from_pretrained(tmp_path / "bos_tok")


def test_a_tokenizer_that_puts_bos_before_a_text_gets_it_in_every_example(tiny_model, tok, tmp_path):
    """Llama's BOS: each example starts as ``tokenizer(text)`` does (TRL keeps it), whatever ``add_bos_token`` says;
    a tokenizer without one (the tiny model's, SmolLM2's) adds nothing."""
    from moopt.train.data import special_prefix

    bos_tok = _bos_tokenizer(tiny_model, tmp_path)
    bos = bos_tok.bos_token_id
    assert bos_tok("the sky")["input_ids"][0] == bos and special_prefix(bos_tok) == [bos]
    for rec in ({"prompt": "what is the color of sky ? answer :", "completion": " blue"}, {"text": "the sky is blue"},
                {"instruction": "what is the color of sky ?", "output": "blue"}):
        ex = tokenize_record(rec, bos_tok)
        assert ex.input_ids[0] == bos and (ex.input_ids == bos).sum() == 1 and ex.labels[0] in (IGNORE, bos), rec
        plain = tokenize_record(rec, tok)
        assert ex.input_ids[1:].tolist() == plain.input_ids.tolist(), rec  # the rest as before
    assert special_prefix(tok) == [] and tokenize_record({"text": "the sky"}, tok).input_ids[0] != tok.bos_token_id


def test_a_record_the_tokenizer_refuses_is_one_error_naming_file_and_record(tiny_model, tmp_path):
    """Llama 2's chat template raises where roles do not alternate: one ConfigError with the file and the record."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('Conversation roles must "
                         "alternate user/assistant/user/assistant/...') }}{% endif %}"
                         "{% for m in messages %}{{ m['content'] }} </s> {% endfor %}")
    p = tmp_path / "chat.jsonl"
    ok = {"messages": [{"role": "user", "content": "sky ?"}, {"role": "assistant", "content": "blue"}]}
    bad = {"messages": [{"role": "system", "content": "the"}, *ok["messages"]]}
    p.write_text(json.dumps(ok) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ConfigError, match=r"chat.jsonl: record 2: the tokenizer cannot encode it \(TemplateError: "
                                          "Conversation roles must alternate"):
        tokenize_file(p, tok, 32)
    tok.chat_template = None
    with pytest.raises(ConfigError, match="chat.jsonl: record 1: records with `messages` need a tokenizer with a chat"):
        tokenize_file(p, tok, 32)


def test_text_that_is_not_unicode_is_refused_where_it_is(tmp_path):
    """JSON's "\\ud800" escape is valid JSON but no text a tokenizer can take (it raised a TypeError)."""
    p = tmp_path / "s.jsonl"
    p.write_text('{"prompt": "what", "completion": " red"}\n{"prompt": "what\\ud800", "completion": " red"}\n'
                 '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "\\udc00"}]}\n')
    with pytest.raises(ConfigError) as e:
        read_jsonl(p)
    assert ":2: `prompt` is not valid Unicode text (a lone surrogate '\\ud800' at character 5)" in str(e.value)
    assert ":3: messages[1].content is not valid Unicode text" in str(e.value)


def test_records_with_dates_and_bytes_compare_for_the_overlap_check(tmp_path):
    """A Parquet export with a timestamp column (HF datasets often have one): the train/validation overlap check
    compared records through json.dumps, which raised on a datetime."""
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    from moopt.train.data import shared_records

    when = datetime.datetime(2026, 1, 2, 3, 4, 5)
    for name, rows in (("a", [("what", " red", when), ("who", " blue", when)]), ("b", [("what", " red", when)])):
        pq.write_table(pa.table({"prompt": [r[0] for r in rows], "completion": [r[1] for r in rows],
                                 "created": [r[2] for r in rows]}), tmp_path / f"{name}.parquet")
    assert shared_records(tmp_path / "a.parquet", tmp_path / "b.parquet") == (1, 1)


def test_a_compressed_or_utf16_file_is_named_as_such(tmp_path):
    import gzip

    p = tmp_path / "d.jsonl.gz"
    p.write_bytes(gzip.compress(b'{"prompt": "a", "completion": "b"}\n'))
    with pytest.raises(ConfigError, match="gzip-compressed; decompress it first"):
        read_jsonl(p)
    p = tmp_path / "u.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n', encoding="utf-16")
    with pytest.raises(ConfigError, match="UTF-16 text; save it as UTF-8"):
        read_jsonl(p)


def test_a_null_input_is_no_input_in_json_as_in_parquet(tmp_path, tok):
    p = tmp_path / "i.jsonl"
    p.write_text(json.dumps({"instruction": "what is the color of sky ?", "input": None, "output": " blue"}) + "\n")
    (rec,) = read_jsonl(p)
    assert tokenize_record(rec, tok).input_ids.tolist() == tokenize_record({k: v for k, v in rec.items() if k != "input"}, tok).input_ids.tolist()


def test_conversational_prompt_completion_learns_the_completion_turns_only(tiny_model):
    """TRL's conversational prompt-completion: the prompt's turns (an assistant turn of a few-shot prompt included)
    carry no loss; the completion's assistant turn does."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}assistant : {% endif %}"
    rec = {"prompt": [{"role": "user", "content": "what is the color of sky ?"}, {"role": "assistant", "content": "red"},
                      {"role": "user", "content": "what is the color of sun ?"}],
           "completion": [{"role": "assistant", "content": "yellow"}]}
    ex = tokenize_record(rec, tok)
    kept = tok.convert_ids_to_tokens([t for t, l in zip(ex.input_ids.tolist(), ex.labels.tolist()) if l != IGNORE])
    assert kept[0] == "yellow" and "red" not in kept and "what" not in kept
    as_messages = tokenize_record({"messages": rec["prompt"] + rec["completion"]}, tok)
    assert as_messages.input_ids.tolist() == ex.input_ids.tolist()  # the same conversation; messages learns every assistant turn
    assert "red" in tok.convert_ids_to_tokens([t for t, l in zip(as_messages.input_ids.tolist(), as_messages.labels.tolist()) if l != IGNORE])


def test_the_overlap_check_compares_what_is_trained_on_not_ids(tmp_path):
    """Validation records copied from the training file with an id of their own (most data sets carry one) are the
    same examples: they were counted as different."""
    from moopt.train.data import shared_records

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"id": i, "prompt": f"q{i}", "completion": " r"}) + "\n" for i in range(5)))
    b.write_text("".join(json.dumps({"id": 100 + i, "prompt": f"q{i}", "completion": " r"}) + "\n" for i in range(3))
                 + json.dumps({"id": 7, "prompt": "q9", "completion": " r"}) + "\n")
    assert shared_records(a, b) == (3, 4)


def test_truncation_is_counted(tmp_path, tok):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": " ".join(["the"] * 40)}) + "\n" + json.dumps({"text": "the sky"}) + "\n")
    ds = tokenize_file(p, tok, max_seq_length=16)
    assert ds.n_truncated == 1
    assert max(len(e.input_ids) for e in ds.examples) == 16


@pytest.mark.parametrize("content, fragment", [
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n', ":2: invalid JSON"),
    ('{"question": "a", "answer": "b"}\n', ":1: unknown record format"),
    ('{"prompt": "a", "completion": ""}\n', ":1: `completion` is empty"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', "no assistant turn"),
    ('[1, 2]\n', "expected a JSON object"),
    ('', "no records (empty file)"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}\n',
     ":1: messages[1].content is empty (an assistant turn the loss is taken on"),
    ('{"prompt": [{"role": "user", "content": "hi"}], "completion": "b"}\n', "`completion` must be a list of messages"),
    ('{"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "user", "content": "b"}]}\n',
     "`completion` has no assistant turn"),
    ('[\n  {"prompt": "a", "completion": "b"}\n]\n', "a JSON array, not JSON Lines (one record per line): name it .json"),
    ('{\n  "data": [{"prompt": "a", "completion": "b"}]\n}\n', "one JSON object, not records (its records may be the list "
     "under 'data')"),
    ('prompt,completion\nwhat is it,red\n', "not JSON (its first line reads 'prompt,completion': CSV?)"),
    # a key given twice: json kept the last value without a word (a YAML file refuses it)
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "prompt": "b", "completion": "c"}\n',
     "bad.jsonl:2: `prompt` is given twice in one object of the record (json would keep the last value without a word: "
     "remove the other)"),
    ('{"messages": [{"role": "user", "content": "a", "content": "b"}, {"role": "assistant", "content": "c"}]}\n',
     ":1: `content` is given twice in one object of the record"),
    ('{"prompt": "a", "completion": "b\n', ":1: invalid JSON (Unterminated string starting at column 31)"),  # not "at at"
    ('{"prompt": "a", "completion": "b"}\r{"prompt": "a", "completion": "b"}\r', "its lines end in a lone CR"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, content, fragment):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(ConfigError) as e:
        read_jsonl(p)
    assert str(p) in str(e.value) and fragment in str(e.value)


def test_data_order_is_seeded_and_strategies_differ():
    lengths = list(range(1, 41))
    a = batch_order(lengths, 4, "random", torch.Generator().manual_seed(1))
    b = batch_order(lengths, 4, "random", torch.Generator().manual_seed(1))
    c = batch_order(lengths, 4, "random", torch.Generator().manual_seed(2))
    assert a == b and a != c
    assert batch_order(lengths, 4, "sequential", torch.Generator())[0] == [0, 1, 2, 3]
    grouped = batch_order(lengths, 4, "length_grouped", torch.Generator().manual_seed(1))
    spreads = [max(lengths[i] for i in bt) - min(lengths[i] for i in bt) for bt in grouped]
    assert max(spreads) <= 3  # sorted inside the window: neighbours in length share a batch


def test_fractional_epochs_cut_the_last_pass(tiny_data, tok):
    ds = tokenize_file(tiny_data["train"], tok, 64)  # 48 examples
    n = sum(1 for _ in micro_batches(ds, 8, 1.5, "random", 0, tok.pad_token_id))
    assert n == 9  # 6 batches per epoch x 1.5


@pytest.mark.parametrize("pack", [None, 16])
def test_every_epoch_sees_every_example_once(pack):
    # examples told apart by their first token; lengths vary so that packing is sometimes chosen
    examples = [Example([100 + i] + [1] * (i % 7), [100 + i] + [1] * (i % 7)) for i in range(22)]
    ds = tokenized_set(examples, 0)
    seen: dict[int, list[int]] = {}  # epoch (1-based) -> first tokens of its examples
    for pos, batch in micro_batches(ds, 4, 3.0, "random", 0, 0, pack_capacity=pack):
        firsts = [t for t in batch["input_ids"].flatten().tolist() if t >= 100]
        seen.setdefault(math.ceil(pos - 1e-9), []).extend(firsts)
    assert sorted(seen) == [1, 2, 3]
    for epoch, firsts in seen.items():
        assert sorted(firsts) == list(range(100, 122)), epoch


def test_examples_whose_prompt_fills_max_seq_length_are_left_out_and_none_left_is_refused(tok, tmp_path):
    """Cut on the right, an example whose prompt fills max_seq_length keeps no token that carries loss: it is
    left out (it added nothing to the loss, only compute, and a set of nothing else scored a loss of 0)."""
    long_prompt = " ".join(["the color of"] * 12)  # 36 tokens
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": long_prompt, "completion": " red"},
        {"prompt": "what is the color of sky ? answer :", "completion": " blue"},
        {"text": long_prompt},  # every token of a text record carries loss: kept, cut
    ]))
    ds = tokenize_file(path, tok, 16)
    assert ds.n_unlabelled == 1 and len(ds.examples) == 2 and ds.n_truncated == 1
    assert all(any(x != IGNORE for x in e.labels[1:]) for e in ds.examples)
    assert tokenize_file(path, tok, 64).n_unlabelled == 0  # long enough: all kept
    only_long = tmp_path / "long.jsonl"
    only_long.write_text(json.dumps({"prompt": long_prompt, "completion": " red"}) + "\n")
    with pytest.raises(ConfigError, match=r"long.jsonl: no example keeps a completion token within max_seq_length 16 \(in all 1"):
        tokenize_file(only_long, tok, 16)
    # the boundary: the completion's first token at index 15 is kept at 16, not at 15
    edge = tmp_path / "edge.jsonl"
    edge.write_text(json.dumps({"prompt": " ".join(long_prompt.split()[:15]), "completion": " red"}) + "\n")
    assert len(tokenize_file(edge, tok, 16).examples) == 1
    with pytest.raises(ConfigError):
        tokenize_file(edge, tok, 15)


def test_evaluation_batches_never_hold_more_tokens_than_a_training_batch():
    """Validation is cut at the space's longest max_seq_length; a trial that trains shorter evaluates in batches
    of at most batch_size x its own max_seq_length padded tokens (one row at least), shortest first. Where every
    example fits, the batches are the plain batch_size ones, as before."""
    from moopt.train.recipe import eval_batches

    lengths = [5, 40, 8, 8, 30, 100, 6, 12]
    ds = tokenized_set([Example([1] * n, [1] * n) for n in lengths], 0)
    plain = eval_batches(ds, 3)
    assert [[lengths[i] for i in b] for b in plain] == [[5, 6, 8], [8, 12, 30], [40, 100]]
    capped = eval_batches(ds, 3, max_tokens=48)
    assert [[lengths[i] for i in b] for b in capped] == [[5, 6, 8], [8, 12], [30], [40], [100]]
    assert all(len(b) * max(lengths[i] for i in b) <= 48 for b in capped if len(b) > 1)
    assert sorted(i for b in capped for i in b) == list(range(len(lengths)))
    assert eval_batches(ds, 3, max_tokens=3 * 100) == plain


def test_evaluation_runs_without_autograd(tiny_model, tok, tmp_path):
    """evaluate() builds no graph (an evaluation with grad on would hold every layer's activations)."""
    from moopt.config import TrialConfig
    from moopt.train.lora import attach_lora
    from moopt.train.recipe import evaluate, load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(tiny_model), TrialConfig(), torch.device("cpu"))
    attach_lora(model, r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"), backend="torch")
    seen = []
    path = tmp_path / "v.jsonl"
    path.write_text(json.dumps({"prompt": "what is the color of sky ? answer :", "completion": " blue"}) + "\n")
    model.model.register_forward_hook(lambda m, a, out: seen.append(out.last_hidden_state.requires_grad))
    m = evaluate(model, tokenize_file(path, tok, 32), 4, tok.pad_token_id, "cpu", "torch")
    assert m["eval_loss"] > 0 and seen == [False]


def _chat_tok(tiny_model, template):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = template
    return tok


def _learnt(ex, tok):
    return tok.convert_ids_to_tokens([t for t, lab in zip(ex.input_ids.tolist(), ex.labels.tolist()) if lab != IGNORE])


def test_a_template_that_adds_to_the_last_turn_only_ends_earlier_turns_where_they_end(tiny_model):
    """Qwen3's template puts an empty think block only before an assistant turn after the last user message: rendered
    as the conversation's last turn, an earlier turn is longer than it is within the whole, and counting that length
    labelled the next user turn's first tokens (``the the`` stands in for the think block)."""
    tok = _chat_tok(tiny_model, "{% for m in messages %}{{ m['role'] }} : {% if m['role'] == 'assistant' and loop.last %}"
                                "the the {% endif %}{{ m['content'] }} </s> {% endfor %}"
                                "{% if add_generation_prompt %}assistant : {% endif %}")
    rec = {"messages": [{"role": "user", "content": "sky ?"}, {"role": "assistant", "content": "red"},
                        {"role": "user", "content": "sea ?"}, {"role": "assistant", "content": "blue"}]}
    assert _learnt(tokenize_record(rec, tok), tok) == ["red", "</s>", "the", "the", "blue", "</s>"]


def test_a_template_that_renders_the_start_otherwise_in_the_whole_is_refused_by_record(tiny_model, tmp_path):
    """Mistral v0.3's template renders the system prompt only before the last user turn: the conversation before the
    assistant turn (with the system prompt) is no start of the whole (without it). Counting its tokens labelled part of
    the answer, or nothing (a study then trained on nothing, with a loss of 0 and exit 0)."""
    tok = _chat_tok(tiny_model, "{% for m in messages if m['role'] != 'system' %}{% if m['role'] == 'user' and loop.last "
                                "and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }} {% endif %}"
                                "{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                                "{% if add_generation_prompt %}assistant : {% endif %}")
    ok = {"messages": [{"role": "user", "content": "sky ?"}, {"role": "assistant", "content": "blue"}]}
    assert _learnt(tokenize_record(ok, tok), tok) == ["blue", "</s>"]
    f = tmp_path / "sys.jsonl"
    f.write_text(json.dumps(ok) + "\n" + json.dumps({"messages": [{"role": "system", "content": "the color"}]
                                                     + ok["messages"]}) + "\n")
    with pytest.raises(ConfigError, match=r"sys.jsonl: record 2: turn 3 \(assistant\): the chat template renders the "
                                          r"conversation before it differently .*\(Mistral v0\.3"):
        tokenize_file(f, tok, 64)


def test_a_prompt_with_its_bos_or_a_completion_with_its_eos_written_out_gets_no_second_one(tiny_model, tmp_path):
    """A prompt rendered with a chat template as text starts with the BOS; a completion may end with the EOS token:
    each was doubled."""
    bos_tok = _bos_tokenizer(tiny_model, tmp_path)
    bos, eos = bos_tok.bos_token_id, bos_tok.eos_token_id
    for rec in ({"prompt": "<s> what is the color of sky ? answer :", "completion": " blue </s>"},
                {"prompt": "what is the color of sky ? answer :", "completion": " blue"},
                {"text": "<s> the sky is blue </s>"}, {"text": "the sky is blue"}):
        ex = tokenize_record(rec, bos_tok)
        assert ex.input_ids[0] == bos and (ex.input_ids == bos).sum() == 1, rec
        assert ex.input_ids[-1] == eos and (ex.input_ids == eos).sum() == 1 and ex.labels[-1] == eos, rec


class _SpaceJoiningTok:
    """A BPE tokenizer in miniature: a space belongs to the word after it ("Route: Garden" is ["Route:", " Garden"]),
    and a space at the end of a text is a token of its own."""

    eos_token_id, bos_token_id, all_special_ids, chat_template, add_bos_token = 3, 2, [2, 3], None, False

    def __init__(self):
        self.vocab = {}

    def __call__(self, text, add_special_tokens=True):
        import re

        return {"input_ids": [self.vocab.setdefault(p, len(self.vocab) + 4) for p in re.findall(r" ?\S+| +$", text)]}


def test_a_prompt_whose_tokens_change_when_the_completion_is_appended_is_said(tmp_path, monkeypatch):
    """"Route: " + "Garden" trains on " Garden" after "Route:", while the prompt alone (at inference) ends in a lone
    space token the model never saw there: TRL warns of it, the study's start says how many examples do it."""
    import transformers

    from moopt.study.gate import data_notes

    fake = _SpaceJoiningTok()
    spaced = tokenize_record({"prompt": "Route: ", "completion": "Garden"}, fake)
    plain = tokenize_record({"prompt": "Route:", "completion": " Garden"}, fake)
    assert spaced.merged and not plain.merged and spaced.input_ids.tolist() == plain.input_ids.tolist()
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"Item {i}\nRoute:" + " " * (i < 2), "completion": "Garden" if i < 2
                                     else " Garden"}) + "\n" for i in range(5)))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: fake)
    notes = data_notes(str(tmp_path), f, 64)
    assert any(n.startswith(f"2 of 5 examples of {f} have a prompt whose last tokens change when the completion is "
                            "appended (a prompt that ends in a space?)") for n in notes), notes


def test_a_studys_start_parses_each_data_file_once(tmp_path, monkeypatch):
    """The start's checks (format, completions, formats, overlap) read each file four times: 1 s and ~5x the file's
    size in RSS each on 300k records. Kept from keep_records() to forget_records(); a changed file is read again."""
    from moopt.train import data

    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n')
    parsed = []
    real = data._records
    monkeypatch.setattr(data, "_records", lambda p: parsed.append(p) or real(p))
    data.keep_records()
    try:
        assert data.read_records(f) is data.read_records(f) and len(parsed) == 1
        f.write_text('{"prompt": "a", "completion": "c"}\n{"text": "d"}\n')  # changed: read again
        assert len(data.read_records(f)) == 2 and len(parsed) == 2
    finally:
        data.forget_records()
    data.read_records(f)
    data.read_records(f)
    assert len(parsed) == 4 and not data._READ  # not kept outside a start


def test_records_encoded_in_batches_tokenise_as_one_by_one(tok, tmp_path, monkeypatch):
    """tokenize_records encodes each chunk's plain texts in one call of the tokenizer (its per-call overhead was most of
    a prompt/completion file's tokenising): the same examples as one by one, every format and chunk boundary."""
    from moopt.train import data

    monkeypatch.setattr(data, "ENCODE_CHUNK", 3)
    f = tmp_path / "mix.jsonl"
    rows = [{"prompt": f"what is the color of {t} ? answer :", "completion": " red"} for t in ("sky", "sun", "sea")]
    rows += [{"text": "the sky is blue"}, {"instruction": "what is the color of sky ?", "output": "blue"},
             {"prompt": "what is the color of sky ? answer :", "completion": " red"}] * 2
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    batched = tokenize_file(f, tok, 64)
    assert getattr(tok, "_moopt_encoded", None) is None  # nothing kept on the tokenizer
    monkeypatch.setattr(data, "_encode_batch", lambda tokenizer, records: 1)  # (one record, encoded alone)
    single = tokenize_file(f, tok, 64)
    assert [(e.input_ids.tolist(), e.labels.tolist(), e.merged) for e in batched.examples] == \
        [(e.input_ids.tolist(), e.labels.tolist(), e.merged) for e in single.examples]


def test_json_lines_are_read_one_line_at_a_time_as_split_would():
    """The bytes, the text and a list of all its lines were held at once: reading a 200 MB file peaked at 1.01 GB RSS,
    0.62 GB one line at a time."""
    from moopt.train.data import _lines

    for text in ("", "a", "a\n", "a\nb", "\n\n", "a\r\nb\n", "{}\n\n{}"):
        assert list(_lines(text)) == text.split("\n"), text


def test_chat_records_rendered_and_encoded_in_batches_tokenise_as_one_by_one(tiny_model, tmp_path, monkeypatch):
    """A chat record's 3 to 5 renderings (the whole, and before and up to each assistant turn) were each encoded with
    a call of their own, ~4x slower than a prompt/completion record: now rendered per chunk and encoded in one call,
    with the same examples as one by one (a template that adds to the last turn only, every chat format), and a
    record the template refuses still named by its number."""
    from moopt.train import data

    tok = _chat_tok(tiny_model, "{% for m in messages %}{{ m['role'] }} : {% if m['role'] == 'assistant' and loop.last %}"
                                "the the {% endif %}{{ m['content'] }} </s> {% endfor %}"
                                "{% if add_generation_prompt %}assistant : {% endif %}")
    monkeypatch.setattr(data, "ENCODE_CHUNK", 4)
    turns = [{"role": "user", "content": "sky ?"}, {"role": "assistant", "content": "red"},
             {"role": "user", "content": "sea ?"}, {"role": "assistant", "content": "blue"}]
    rows = [{"messages": turns}, {"messages": turns[:2]}, {"messages": [{"role": "assistant", "content": "red"}]},
            {"prompt": turns[:3], "completion": turns[3:]}, {"instruction": "what is the color of sky ?", "output": "blue"},
            {"instruction": "the color ?", "input": "sky", "output": "blue"}, {"text": "the sky is blue"}] * 2
    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = []
    real_call = type(tok).__call__
    monkeypatch.setattr(type(tok), "__call__", lambda self, *a, **k: calls.append(a) or real_call(self, *a, **k))
    batched = tokenize_file(f, tok, 64)
    assert len([a for a in calls if isinstance(a[0], list)]) == 4  # one call per chunk of 4 records
    assert len(calls) <= 4 + 2, calls  # and special_prefix's two ("a"): no record encoded alone
    monkeypatch.setattr(type(tok), "__call__", real_call)
    assert getattr(tok, "_moopt_encoded", None) is None and getattr(tok, "_moopt_rendered", None) is None
    assert _learnt(batched.examples[0], tok) == ["red", "</s>", "the", "the", "blue", "</s>"]
    monkeypatch.setattr(data, "_encode_batch", lambda tokenizer, records: 1)  # (one record, encoded alone)
    single = tokenize_file(f, tok, 64)
    assert [(e.input_ids.tolist(), e.labels.tolist()) for e in batched.examples] == [(e.input_ids.tolist(), e.labels.tolist()) for e in single.examples]
    monkeypatch.undo()
    monkeypatch.setattr(data, "ENCODE_CHUNK", 4)
    tok.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
                         + tok.chat_template)
    f.write_text("".join(json.dumps(r) + "\n" for r in rows[:5])
                 + json.dumps({"messages": [{"role": "system", "content": "be brief"}] + turns}) + "\n")
    with pytest.raises(ConfigError, match=r"chat.jsonl: record 6: the tokenizer cannot encode it .*no system role"):
        tokenize_file(f, tok, 64)


def test_records_of_several_formats_in_one_file_are_said(tmp_path):
    """A text record among prompt/completion ones trains on every token, its prompt included: it ran with no word."""
    from moopt.train.data import formats_across

    rows = [{"prompt": f"what is {i} ?", "completion": " red"} for i in range(99)]
    rows.insert(56, {"text": "the sky is blue"})
    f = tmp_path / "mixed.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert formats_across(f) == (f"the records of {f} are of 2 formats: 99 prompt+completion, 1 text (record 57); each "
                                 "trains as its format does (loss on prompt+completion: the completion; text: every token)")
    f.write_text("".join(json.dumps(r) + "\n" for r in rows if "prompt" in r))
    assert formats_across(f) is None


def test_a_device_given_as_a_data_file_is_not_said_to_be_missing():
    with pytest.raises(ConfigError, match=r"^/dev/null: not a regular file \(a device, a pipe or a socket\)"):
        read_jsonl("/dev/null")


def test_a_key_given_twice_in_a_json_array_record_names_the_record_and_its_line(tmp_path):
    f = tmp_path / "a.json"
    f.write_text('[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "a",\n   "completion": "b", "completion": "c"}\n]\n')
    with pytest.raises(ConfigError, match=r"a.json: record 2 \(line 3\): `completion` is given twice in one object of the record"):
        read_jsonl(f)


def test_a_training_file_whose_records_repeat_is_said_from_a_twentieth_of_them(tmp_path):
    """5% of a 20k chat file duplicated started with no word; short records repeating by chance (the bundled data: 10
    of 300) are not said."""
    from moopt.train.data import repeated_records

    rows = [{"prompt": f"what is {i} ?", "completion": " red"} for i in range(95)]
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:5]))
    assert repeated_records(f) == (f"5 of 100 records of {f} repeat an earlier record (records 96, 97, 98, 99, 100): "
                                   "each copy is trained on, so they weigh more than the rest")
    f.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:4]))
    assert repeated_records(f) is None
    assert repeated_records(os.path.join(os.path.dirname(__file__), "..", "data", "train.jsonl")) is None


def test_the_newline_a_chatml_template_writes_after_the_end_of_turn_token_is_not_learnt(tmp_path):
    """ChatML (SmolLM2, Qwen) renders "<|im_end|>\\n" after each turn: the newline was learnt and counted in
    eval_accuracy (a near-certain token a turn), though generation stops at <|im_end|>; TRL's assistant masks leave it
    out. The end-of-turn token itself stays learnt."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "\n", ":", "user", "assistant", "sky", "?", "blue", "sea",
             "green"]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Split(" ", "removed")])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} : {{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant : {% endif %}")
    rec = {"messages": [{"role": "user", "content": "sky ?"}, {"role": "assistant", "content": "blue"},
                        {"role": "user", "content": "sea ?"}, {"role": "assistant", "content": "green"}]}
    ex = tokenize_record(rec, tok)
    assert _learnt(ex, tok) == ["blue", "<|im_end|>", "green", "<|im_end|>"]
    assert tok.convert_ids_to_tokens(ex.input_ids)[-2:] == ["<|im_end|>", "\n"]  # still there, not learnt


def test_a_batch_of_texts_holds_at_most_its_character_budget(tiny_model, tmp_path, monkeypatch):
    """Long multi-turn chats' renderings grow with the square of their turns: 1024 records of 30 turns held 4.6 GB at
    once. A batch stops at ENCODE_CHARS (a record of more is a batch of its own), with the same examples."""
    from moopt.train import data

    tok = _chat_tok(tiny_model, "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                                "{% if add_generation_prompt %}assistant : {% endif %}")
    turns = [{"role": r, "content": "the sky is blue"} for _ in range(10) for r in ("user", "assistant")]
    rows = [{"messages": turns[: 2 * (i % 10 + 1)]} for i in range(30)]
    f = tmp_path / "long.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(data, "ENCODE_CHARS", 3000)
    sizes = []
    real = data._encode_batch
    monkeypatch.setattr(data, "_encode_batch", lambda tokenizer, records: sizes.append(real(tokenizer, records)) or sizes[-1])
    batched = tokenize_file(f, tok, 512)
    covered = [n for n in sizes if n]
    assert sum(covered) == 30 and len(covered) > 3, sizes  # several batches, every record in one
    monkeypatch.setattr(data, "_encode_batch", lambda tokenizer, records: 1)
    single = tokenize_file(f, tok, 512)
    assert [(e.input_ids.tolist(), e.labels.tolist()) for e in batched.examples] == [(e.input_ids.tolist(), e.labels.tolist()) for e in single.examples]


def test_examples_are_held_as_int32_arrays_not_lists_of_python_ints(tok, tmp_path):
    # a list of Python ints took ~76 bytes a token held (20k chats: 522 MiB); an int32 array takes 8 for ids and labels
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "what is the color of sky ? answer : blue"}) + "\n")
    ds = tokenize_file(f, tok, 64)
    ex = ds.examples[0]
    assert ex.input_ids.dtype == ex.labels.dtype == np.int32 and ex.input_ids.nbytes == 4 * len(ex.input_ids)
    cut = tokenize_file(f, tok, 3).examples[0]  # cut to length: a view of the same kind
    assert cut.input_ids.dtype == np.int32 and len(cut.input_ids) == 3
    assert cut.input_ids.base is None and cut.labels.base is None  # its own 3 tokens, not a view of the uncut array
    assert collate([ex], 0)["input_ids"][0].tolist() == ex.input_ids.tolist()
