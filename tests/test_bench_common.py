"""benchmarks/common.py: the one CSV schema every benchmark writes reads back as written."""

import pytest


def test_rows_round_trip_and_pivot_to_one_record_per_run(tmp_path, load_bench):
    common = load_bench("common")
    records = [{"problem": "zdt1", "provider": p, "device": "cpu", "seed": s, "n_trials": 12, "eta": 2.0,
                "hv": 0.5 + s / 10, "fits": p == "moopt", "label": "x"}
               for s in (0, 1) for p in ("moopt", "random")]
    rows = common.long(records, {"hv": "HV", "fits": ("fits_budget", "bool")},
                       {k: k for k in ("problem", "provider", "device", "seed", "n_trials")}, params=("eta", "label"))
    assert len(rows) == 8 and {r["what"] for r in rows} == {"hv", "fits_budget"}
    path = common.write_rows(rows, tmp_path / "r.csv")
    assert path.read_text().splitlines()[0] == ",".join(common.COLUMNS)
    back = common.read_rows(path)
    assert back[0]["params"] == {"eta": 2.0, "label": "x"} and back[0]["seed"] == 0 and back[0]["n_trials"] == 12
    wide = common.wide(back)
    assert len(wide) == 4
    assert [(w["provider"], w["seed"], w["hv"], w["fits_budget"]) for w in wide] == [
        ("moopt", 0, 0.5, 1.0), ("random", 0, 0.5, 0.0), ("moopt", 1, 0.6, 1.0), ("random", 1, 0.6, 0.0)]
    assert wide[0]["eta"] == 2.0 and wide[0]["label"] == "x"


def test_a_commit_that_reads_as_a_number_stays_the_commit(tmp_path, load_bench):
    """2e90454 is a float literal (inf) and 3267671 an int; as commits they are text, in and out."""
    common = load_bench("common")
    rows = [{"what": "x", "value": 1.0, "params": {"commit": c, "cpu": "Intel Xeon (amx_bf16)", "eta": 2}}
            for c in ("2e90454", "3267671", "c4b101e")]
    path = common.write_rows(rows, tmp_path / "c.csv")
    back = common.read_rows(path)
    assert [r["params"]["commit"] for r in back] == ["2e90454", "3267671", "c4b101e"]
    assert back[0]["params"]["eta"] == 2
    common.write_rows(back, tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_text() == path.read_text()


def test_the_schema_refuses_what_it_could_not_read_back(tmp_path, load_bench):
    common = load_bench("common")
    with pytest.raises(ValueError, match="not in the schema"):
        common.write_rows([{"what": "x", "value": 1, "arm": "fill"}], tmp_path / "a.csv")
    with pytest.raises(ValueError, match="separate the pairs"):
        common.write_rows([{"what": "x", "value": 1, "params": {"shape": "a;b"}}], tmp_path / "b.csv")
    (tmp_path / "old.csv").write_text("seed,arm,hv_base\n0,wait,1.0\n")
    with pytest.raises(ValueError, match="expected"):
        common.read_rows(tmp_path / "old.csv")


def test_every_results_csv_is_in_the_schema(load_bench):
    """benchmarks/results/ holds current figures only, all in the one schema."""
    from pathlib import Path

    common = load_bench("common")
    files = sorted(Path(common.RESULTS).glob("*.csv"))
    assert len(files) >= 15
    for f in files:
        rows = common.read_rows(f)
        assert rows and all(r["what"] and r["provider"] for r in rows), f.name
