"""Data files as users have them: JSON Lines, a JSON array (Alpaca's alpaca_data.json is one) and Parquet, with
the same four record formats and one-line errors that name the file and the record."""

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from moopt.cli import main
from moopt.errors import ConfigError
from moopt.train.data import data_format, read_records, tokenize_file

RECORDS = [
    {"text": "the sky is blue"},
    {"prompt": "what is the color of sky ? answer :", "completion": " blue"},
    {"instruction": "what is the color of leaf ?", "input": "", "output": "green"},
    {"instruction": "what is the color of", "input": "snow", "output": "white"},
    {"messages": [{"role": "user", "content": "what is the color of sun ?"}, {"role": "assistant", "content": "yellow"}]},
    {"messages": [{"role": "system", "content": "answer :"}, {"role": "user", "content": "coal ?"},
                  {"role": "assistant", "content": "black"}, {"role": "user", "content": "milk ?"},
                  {"role": "assistant", "content": "white"}]},
]
SPACE = "training:\n  learning_rate: 1e-3\n  batch_size: 8\n  num_train_epochs: 1\nlora:\n  r: 4\n  alpha: 8\ndata:\n  max_seq_length: 32\n"


def write(path, records, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "json_array":  # laid out as alpaca_data.json is
        path.write_text(json.dumps(records, indent=4))
    elif fmt == "parquet_pyarrow":
        keys = list(dict.fromkeys(k for r in records for k in r))  # every record's keys (from_pylist takes the first's)
        pq.write_table(pa.Table.from_pydict({k: [r.get(k) for r in records] for k in keys}), path)
    elif fmt == "parquet_pandas":  # as datasets on the hub are published: messages are arrays of structs
        pd.DataFrame(records).to_parquet(path)
    return path


@pytest.mark.parametrize("name, fmt, detected", [
    ("d.jsonl", "jsonl", "jsonl"),
    ("d.json", "json_array", "json_array"),
    ("d.json", "jsonl", "jsonl"),  # JSON Lines saved as .json
    ("d.txt", "json_array", "json_array"),  # by content
    ("d.parquet", "parquet_pyarrow", "parquet"),
    ("d.parquet", "parquet_pandas", "parquet"),
    ("d.bin", "parquet_pandas", "parquet"),  # by Parquet's magic bytes
])
def test_every_file_format_reads_every_record_format(tmp_path, name, fmt, detected):
    p = write(tmp_path / name, RECORDS, fmt)
    assert data_format(p) == detected
    assert read_records(p) == RECORDS  # a mixed Parquet file's null columns are dropped per row


@pytest.mark.parametrize("fmt", ["json_array", "parquet_pandas"])
def test_formats_tokenize_as_jsonl_does(tiny_model, tmp_path, fmt):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                         "{% if add_generation_prompt %}assistant : {% endif %}")
    ref = tokenize_file(write(tmp_path / "d.jsonl", RECORDS, "jsonl"), tok, 64)
    got = tokenize_file(write(tmp_path / f"d.{'json' if fmt == 'json_array' else 'parquet'}", RECORDS, fmt), tok, 64)
    def held(ds):  # (examples hold arrays, compared as lists)
        return ([(e.input_ids.tolist(), e.labels.tolist(), e.merged) for e in ds.examples],
                (ds.n_truncated, ds.n_tokens, ds.n_label_tokens, ds.n_unlabelled))

    assert held(got) == held(ref) and len(ref.examples) == len(RECORDS)


def error_of(path) -> str:
    with pytest.raises(ConfigError) as e:
        read_records(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_json_array_errors_name_the_record_and_its_line(tmp_path):
    records = [RECORDS[1], {"prompt": "a", "completion": ""}, RECORDS[2], {"question": "a", "answer": "b"}]
    p = write(tmp_path / "train.json", records, "json_array")
    lines = p.read_text().splitlines()
    line_2 = lines.index("    {", lines.index("    {") + 1) + 1  # where the second record starts
    msg = error_of(p)
    assert msg.startswith(f"{p}: record 2 (line {line_2}): `completion` is empty; ")
    assert f"{p}: record 4 (line " in msg and "unknown record format with keys ['answer', 'question']" in msg


@pytest.mark.parametrize("content, fragment", [
    ('[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "a" "completion": "b"}\n]', "line 3 column 18 (Expecting ',' delimiter)"),
    ('[\n  {"prompt": "a", "completion": "b"},\n]', "line 3 column 1 (Expecting value)"),  # trailing comma
    ('[\n  {"prompt": "a", "completion": "b"}\n  {"prompt": "a", "completion": "b"}\n]', "line 3 column 3 (expected ',' or ']' after a record)"),
    ('[{"prompt": "a", "completion": "b"}]\n[]', "line 2 column 1 (extra data after the array)"),
    ('[{"prompt": "a", "completion": "b"}', "line 1 column 36 (expected ',' or ']' after a record)"),
])
def test_malformed_json_array_is_one_line_with_line_and_column(tmp_path, content, fragment):
    p = tmp_path / "bad.json"
    p.write_text(content)
    assert error_of(p) == f"{p}: invalid JSON at {fragment}"


def test_json_array_edge_cases(tmp_path):
    p = tmp_path / "empty.json"
    p.write_text("  []\n")
    assert error_of(p) == f"{p}: no records (empty file)"
    p.write_text("[1, 2]")
    assert error_of(p).startswith(f"{p}: record 1 (line 1): expected a JSON object, got int; {p}: record 2 (line 1)")
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps([RECORDS[0]]).encode())  # a byte-order mark, as Windows tools write
    assert read_records(p) == [RECORDS[0]]
    p.write_bytes(b'[{"text": "a"},\n{"text": "caf\xe9"}]')
    assert error_of(p) == f"{p}:2: not UTF-8 text (byte 0xe9)"


def test_parquet_errors_name_the_row(tmp_path):
    p = write(tmp_path / "x.parquet", [RECORDS[1], RECORDS[1], {"prompt": "a", "completion": ""}], "parquet_pandas")
    assert error_of(p) == f"{p}: row 3: `completion` is empty"
    p = write(tmp_path / "y.parquet", [{"question": "a", "answer": "b"}], "parquet_pandas")
    assert error_of(p).startswith(f"{p}: row 1: unknown record format with keys ['answer', 'question']")
    p = write(tmp_path / "z.parquet", [{"messages": [{"role": "user", "content": "hi"}]}], "parquet_pandas")
    assert error_of(p) == f"{p}: row 1: `messages` has no assistant turn to learn from"
    p = write(tmp_path / "n.parquet", [{"prompt": "a", "completion": 3}], "parquet_pandas")
    assert error_of(p) == f"{p}: row 1: `completion` must be a string, got int"
    p = write(tmp_path / "t.parquet", [{"text": "a b"}, {"text": None}], "parquet_pyarrow")  # a null cell of its format
    assert error_of(p) == f"{p}: row 2: `text` is null"
    p = tmp_path / "broken.parquet"
    p.write_text('{"prompt": "a", "completion": "b"}\n')
    assert error_of(p).startswith(f"{p}: not a readable Parquet file (")
    p = write(tmp_path / "e.parquet", [], "parquet_pyarrow")
    assert error_of(p) == f"{p}: no records (empty file)"


def test_cli_refuses_a_broken_json_array_with_one_line_and_writes_nothing(tiny_model, tiny_data, tmp_path):
    bad = write(tmp_path / "alpaca_data.json", [RECORDS[2], {"instruction": "a", "input": "", "output": ""}], "json_array")
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(tiny_model), "--train_file", str(bad),
                                  "--validation_file", str(tiny_data["val"]), "--output_dir", str(out)])
    assert r.exit_code == 2
    assert r.output.strip() == f"Error: {bad}: record 2 (line 7): `output` is empty"
    assert not out.exists()


def test_cli_refuses_a_conversation_the_chat_template_refuses_with_one_line(tiny_model, tiny_data, tmp_path):
    """A model whose chat template raises (Llama 2's, where roles do not alternate): one line naming the file and the
    record, exit 2, nothing written (it was jinja2's traceback)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["chat_template"] = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('Conversation roles must "
                            "alternate') }}{% endif %}{% for m in messages %}{{ m['content'] }} </s> {% endfor %}")
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    data = write(tmp_path / "chat.jsonl", RECORDS[4:6], "jsonl")
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(model), "--train_file", str(data),
                                  "--validation_file", str(tiny_data["val"]), "--output_dir", str(out)])
    assert r.exit_code == 2, r.output
    assert r.output.strip() == (f"Error: {data}: record 2: the tokenizer cannot encode it (TemplateError: Conversation "
                                "roles must alternate)")
    assert not out.exists()


def test_study_runs_on_json_array_and_parquet_files(tiny_model, tiny_data, tmp_path):
    train = [json.loads(line) for line in tiny_data["train"].read_text().splitlines()]
    val = [json.loads(line) for line in tiny_data["val"].read_text().splitlines()]
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    out = tmp_path / "hpo"
    r = CliRunner().invoke(main, ["optimize", "--base_model", str(tiny_model),
                                  "--train_file", str(write(tmp_path / "train.json", train, "json_array")),
                                  "--validation_file", str(write(tmp_path / "val.parquet", val, "parquet_pandas")),
                                  "--output_dir", str(out), "--search_space", str(space), "--num_trials", "1",
                                  "--no-baseline"])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "trials_summary.csv")
    assert list(df.state) == ["COMPLETE"] and df.values_eval_loss[0] > 0
