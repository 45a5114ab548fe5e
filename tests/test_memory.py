"""The analytic memory model: each term by hand, published peaks, the CLI, one real CPU measurement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest
from click.testing import CliRunner
from transformers import LlamaConfig

from moopt.cli.estimate import estimate_memory
from moopt.config import TrialConfig
from moopt.errors import ConfigError
from moopt.memory import nvml
from moopt.memory.estimate import (
    CUDA_CONTEXT_BYTES,
    GIB,
    LORA_BYTES_PER_PARAM,
    NF4_BYTES_PER_PARAM,
    ModelDims,
    apply_calibration,
    estimate_peak,
    fit_calibration,
    load_model_config,
)

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def small_config(**kw) -> LlamaConfig:
    base = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=False)
    base.update(kw)
    return LlamaConfig(**base)


def trial(b=1, s=128, r=8, targets=ALL, quant="none", ckpt=False, dropout=0.0, dtype="auto") -> TrialConfig:
    return TrialConfig.from_dict({
        "training": {"batch_size": b}, "data": {"max_seq_length": s},
        "lora": {"r": r, "dropout": dropout, "target_modules": list(targets)},
        "model": {"quantization": quant, "gradient_checkpointing": ckpt, "dtype": dtype},
    })


# -- terms, by hand ---------------------------------------------------------------------------


def test_dims_read_gqa_head_dim_and_tied_head():
    m = ModelDims.from_config(small_config(head_dim=32, tie_word_embeddings=True))
    assert (m.heads, m.kv_heads, m.head_dim) == (4, 2, 32)
    assert m.linear_shapes()["q_proj"] == (64, 128) and m.linear_shapes()["k_proj"] == (64, 64)
    assert m.embedding_params == 1000 * 64  # tied: one matrix
    assert ModelDims.from_config(small_config()).embedding_params == 2 * 1000 * 64


def test_lora_params_are_L_r_sum_of_din_plus_dout():
    m = ModelDims.from_config(small_config())
    # q 64+64, k 64+32, v 64+32, o 64+64, gate/up 64+176 each, down 176+64
    per_layer = 128 + 96 + 96 + 128 + 240 + 240 + 240
    assert m.lora_params(8, ALL) == 2 * 8 * per_layer
    est = estimate_peak(small_config(), trial(r=8), device="cpu")
    # the LoRA grads do not exist yet in the loss phase (zero_grad(set_to_none=True) ends each step)
    per_param = LORA_BYTES_PER_PARAM - (4 if est.phase == "loss" else 0)
    assert est.breakdown["lora_params_grads_optimizer"] == per_param * 2 * 8 * per_layer


def test_lora_grads_count_in_the_loss_phase_only_when_micro_batches_accumulate():
    from moopt.memory.estimate import StepShape, lora_bytes

    def shape(accum):
        t = TrialConfig.from_dict({"training": {"gradient_accumulation_steps": accum}, "lora": {"r": 8}})
        return StepShape(m=ModelDims.from_config(small_config()), trial=t, device="cpu", kernels="torch",
                         loss="chunked", b=1, s=8, a_b=4)

    one, two = shape(1), shape(2)
    assert lora_bytes(one, "loss") == lora_bytes(one, "optimizer") * 12 // 16
    assert lora_bytes(two, "loss") == lora_bytes(two, "optimizer") == lora_bytes(one, "layer_backward")


def test_llama3_8b_lora_param_count_matches_reference():
    m = ModelDims.from_config(llama31_8b())
    assert m.linear_params == pytest.approx(6.98e9, rel=0.005)
    assert m.lora_params(16, ALL) == pytest.approx(41.9e6, rel=0.005)


def test_weights_by_dtype_and_quantisation():
    cfg = small_config()
    m = ModelDims.from_config(cfg)
    small = m.embedding_params + m.norm_params
    assert estimate_peak(cfg, trial(), device="cpu").breakdown["weights"] == 4 * (m.linear_params + small)
    assert estimate_peak(cfg, trial(), device="cuda").breakdown["weights"] == 2 * (m.linear_params + small)
    nf4 = estimate_peak(cfg, trial(quant="4bit"), device="cuda").breakdown["weights"]
    assert nf4 == int(m.linear_params * NF4_BYTES_PER_PARAM + 2 * small)
    # PEFT's prepare_model_for_kbit_training upcasts embeddings, head and norms to fp32
    peft = estimate_peak(cfg, trial(quant="4bit"), device="cuda", kernels="peft").breakdown["weights"]
    assert peft == int(m.linear_params * NF4_BYTES_PER_PARAM + 4 * small)
    int8 = estimate_peak(cfg, trial(quant="8bit"), device="cuda").breakdown["weights"]
    row_scales = 4 * 2 * (64 + 32 + 32 + 64 + 176 + 176 + 64)  # one fp32 scale per output row
    assert int8 == m.linear_params + row_scales + 2 * small


def test_activations_per_token_per_layer_bf16_all_linear():
    cfg = small_config()
    h, i, q, kv, n_h, r, T, L = 64, 176, 64, 32, 4, 8, 128, 2
    per_layer = (
        8 * h  # two RMSNorms keep an fp32 copy
        + 2 * (q + 2 * kv + q) + 4 * n_h  # SDPA: q, k, v (GQA native, batch 1), out, fp32 lse
        + 2 * 3 * i  # SwiGLU
        + 2 * (h + q + h + i)  # inputs of q/k/v (shared), o, gate/up (shared), down
        + 7 * 4 * r  # fp32 S per module
    )
    outer = 4 * h + 2 * 2 * 16 + 2 * h  # final norm, RoPE cos/sin, hidden kept by the chunked CE
    est = estimate_peak(cfg, trial(s=T), device="cuda")
    assert est.phase == "loss"
    assert est.breakdown["activations"] == per_layer * T * L + outer * T


def test_padding_adds_mask_and_repeated_kv():
    cfg = small_config()
    one = estimate_peak(cfg, trial(b=1, s=128), device="cuda").breakdown["activations"]
    two = estimate_peak(cfg, trial(b=2, s=64), device="cuda").breakdown["activations"]
    # same T; batch 2 adds the b·s² bool mask and K/V repeated from 2 to 4 heads (2·2·32 bytes/token/layer)
    assert two - one == 2 * 64 * 64 + 2 * 2 * 32 * 128 * 2


def test_checkpointing_keeps_layer_inputs_plus_one_recomputed_layer():
    cfg = small_config(num_hidden_layers=8)
    full = estimate_peak(cfg, trial(s=256), device="cuda").breakdown["activations"]
    ck = estimate_peak(cfg, trial(s=256, ckpt=True), device="cuda")
    assert ck.breakdown["activations"] < full / 2
    assert ck.breakdown["activations"] >= 2 * 64 * 256 * 8  # bf16 layer inputs


def test_logits_hf_against_chunked():
    cfg = small_config(vocab_size=32000)
    T = 2048
    hf = estimate_peak(cfg, trial(s=T), device="cuda", loss="hf").breakdown["logits"]
    assert hf == 14 * T * 32000  # bf16: saved fp32 log-softmax, its grad, grad in, held bf16 logits
    hf32 = estimate_peak(cfg, trial(s=T), device="cpu", loss="hf").breakdown["logits"]
    assert hf32 == 16 * T * 32000
    ch = estimate_peak(cfg, trial(s=T), device="cuda", loss="chunked").breakdown["logits"]
    assert ch == (4 + 2) * 1024 * 32000  # one 1024-row chunk (fp32 + its bf16 cast), independent of T beyond it


def test_breakdown_sums_and_json_and_table():
    est = estimate_peak(small_config(), trial(), device="cuda")
    assert sum(est.breakdown.values()) == est.total_bytes
    assert est.breakdown["cuda_context"] == CUDA_CONTEXT_BYTES
    js = est.to_json()
    assert js["total_gib"] == pytest.approx(est.total_gib, abs=1e-4)
    assert set(js["breakdown"]) == set(est.breakdown)
    assert "total" in est.render()
    assert "runtime" in estimate_peak(small_config(), trial(), device="cpu").breakdown


def test_cpu_quantised_counts_the_mapped_checkpoint_and_heap_retention():
    """CPU + bitsandbytes: the fp32/bf16 checkpoint stays resident next to the packed weights."""
    from moopt.memory.estimate import (
        CPU_BNB_RUNTIME_BYTES,
        CPU_QUANT_CHECKPOINT_RESIDENT,
        CPU_QUANT_HEAP_RETENTION,
        CPU_SLACK,
        ModelDims,
        checkpoint_bytes,
    )

    cfg = small_config()
    none = estimate_peak(cfg, trial(), device="cpu").breakdown
    q4 = estimate_peak(cfg, trial(quant="4bit"), device="cpu").breakdown
    dims = ModelDims.from_config(cfg)
    assert "checkpoint_pages" not in none
    assert q4["checkpoint_pages"] == int(CPU_QUANT_CHECKPOINT_RESIDENT * checkpoint_bytes(cfg, dims)) > 0
    assert q4["runtime"] == none["runtime"] + CPU_BNB_RUNTIME_BYTES
    dynamic = q4["activations"] + q4["logits"] + q4["transients"]
    assert q4["allocator_slack"] == pytest.approx((CPU_SLACK + CPU_QUANT_HEAP_RETENTION) * dynamic, abs=2)
    assert "checkpoint_pages" not in estimate_peak(cfg, trial(quant="4bit"), device="cuda").breakdown


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="loss"):
        estimate_peak(small_config(), trial(), loss="fused")


def test_calibration_fit_is_robust_and_does_not_extrapolate_steeply():
    exact = [(10 * GIB, 11 * GIB), (20 * GIB, 21.5 * GIB), (30 * GIB, 32 * GIB)]  # measured = 1.05·e + 0.5 GiB
    cal = fit_calibration(exact)
    assert cal["factor"] == pytest.approx(1.05) and cal["offset_bytes"] == pytest.approx(0.5 * GIB)
    assert all(apply_calibration(int(e), cal) == pytest.approx(m, rel=1e-6) for e, m in exact)
    # one outlier among small probes: the median ignores it, the slope stays clamped to <= 1.1
    noisy = [(1 * GIB, 1.5 * GIB), (1.2 * GIB, 1.7 * GIB), (1.4 * GIB, 1.9 * GIB), (1.6 * GIB, 3.0 * GIB)]
    cal = fit_calibration(noisy)
    assert cal["factor"] == pytest.approx(1.1) and cal["offset_bytes"] == pytest.approx(0.4 * GIB, rel=0.05)
    assert apply_calibration(8 * GIB, cal) < 9.5 * GIB  # least squares would say ~11.6 GiB
    one = fit_calibration([(10 * GIB, 12 * GIB)])
    assert one["factor"] == pytest.approx(1.2) and one["offset_bytes"] == 0
    est = estimate_peak(small_config(), trial(), device="cuda", calibration=one)
    raw = estimate_peak(small_config(), trial(), device="cuda")
    assert est.total_bytes == apply_calibration(raw.total_bytes, one)
    assert sum(est.breakdown.values()) == est.total_bytes


def test_load_model_config_from_a_folder_with_only_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(small_config().to_dict()))
    cfg = load_model_config(tmp_path)
    got, want = ModelDims.from_config(cfg), ModelDims.from_config(small_config())
    assert got.signature() == want.signature() and got.tied == want.tied
    assert cfg.hidden_size == 64 and cfg.num_key_value_heads == 2


# -- published peaks --------------------------------------------------------------------------


def llama31_8b() -> LlamaConfig:
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)


def llama2_7b() -> LlamaConfig:
    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)


QVO_MLP = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def allocator_gib(est) -> float:
    """torchtune logs torch.cuda peak memory: the CUDA context is not in it."""
    return (est.total_bytes - est.breakdown.get("cuda_context", 0)) / GIB


@pytest.mark.parametrize("quant, published_gib", [("4bit", 7.4), ("none", 16.2)])
def test_torchtune_llama31_8b_readme_peaks(quant, published_gib):
    # torchtune README: batch 2, packed 2048, compile, checkpointing, r=8 on q,v,o + MLP.
    # Band: estimate in [published, published × 1.20]. We over-predict (measured 1.14 / 1.12) because
    # torchtune differs from our model: its NF4 linear (torchao) keeps no inputs where bnb keeps all,
    # k_proj stays bf16 (only LoRA'd linears are quantised: +0.2 GiB for us the other way), compile
    # fuses the chunked-output CE (all bf16 logit chunks, 2·T·V = 0.98 GiB, modelled here by our
    # chunk transient of the same size at T = 4096), and its layer inputs may be offloaded.
    est = estimate_peak(llama31_8b(), trial(b=2, s=2048, r=8, targets=QVO_MLP, quant=quant, ckpt=True), loss="chunked")
    assert published_gib <= allocator_gib(est) <= 1.20 * published_gib


def test_torchtune_llama2_7b_lora_tutorial_peak():
    # QLoRA tutorial: LoRA 15.57 GB reserved. Config of the time: r=8 on q,v, batch 2, checkpointing,
    # alpaca (sequence lengths unpublished: we assume the longest batch pads to 1024), fp32 logits +
    # plain CE (our loss="hf"). Band ±10%; measured ratio 0.98.
    est = estimate_peak(llama2_7b(), trial(b=2, s=1024, r=8, targets=["q_proj", "v_proj"], ckpt=True), loss="hf")
    assert allocator_gib(est) == pytest.approx(15.57e9 / GIB, rel=0.10)


def test_torchtune_llama2_7b_qlora_reserved_peak_is_an_upper_bound():
    # QLoRA 9.29 GB reserved during training, but 9.13 GB already at model init: the caching
    # allocator kept the init transient (bf16 weights quantised on GPU). The training step itself
    # needs less, so the band is one-sided: 0.5 × published <= estimate <= published (ratio 0.63).
    est = estimate_peak(llama2_7b(), trial(b=2, s=1024, r=8, targets=ALL, quant="4bit", ckpt=True), loss="hf")
    assert 0.5 * 9.29e9 / GIB <= allocator_gib(est) <= 9.29e9 / GIB


@pytest.mark.parametrize("gpu_gib, tokens", [(12, 932), (16, 2551), (24, 5789), (40, 12264), (48, 15502), (80, 28454)])
def test_unsloth_longest_sequence_fits_its_gpu(gpu_gib, tokens):
    # Unsloth Llama 3.3 blog, HF + FA2 QLoRA r=32 all linear, batch 1: the longest sequence that fits.
    # Peer setup: kernels="peft" (PEFT LoRA, prepare_model_for_kbit_training's fp32 head and
    # embeddings), loss="hf" (fp32 logits since the head is fp32), checkpointing, CUDA context incl.
    # FA2 saves the same q, k, v, out, lse as SDPA. Band: the estimate at that length is within
    # [-10%, +5%] of the GPU's size (measured 0.94-0.97: the peer's peak is just under capacity).
    est = estimate_peak(llama31_8b(), trial(b=1, s=tokens, r=32, targets=ALL, quant="4bit", ckpt=True),
                        kernels="peft", loss="hf")
    assert 0.90 * gpu_gib <= est.total_gib <= 1.05 * gpu_gib


# -- CLI ----------------------------------------------------------------------------------------


def write_model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(small_config().to_dict()))
    return folder


def test_cli_prints_table_and_json(tmp_path):
    folder = write_model(tmp_path)
    cfg = tmp_path / "trial.yaml"
    cfg.write_text("training:\n  batch_size: 2\nlora:\n  r: 4\ndata:\n  max_seq_length: 64\nmodel:\n  gradient_checkpointing: true\n")
    r = CliRunner().invoke(estimate_memory, ["--base-model", str(folder), "--config", str(cfg), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "total" in r.output and "weights" in r.output
    r = CliRunner().invoke(estimate_memory, ["--base_model", str(folder), "--config", str(cfg), "--json", "--device", "cuda"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["total_gib"] > 0 and "cuda_context" in data["breakdown"]


def test_cli_says_a_max_seq_length_past_the_models_context(tmp_path):
    """The model was never trained on positions past max_position_embeddings: estimate-memory says so (the
    estimate itself is still given, as a study would train it)."""
    folder = write_model(tmp_path)
    context = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    for seq, said in ((context, False), (context + 1, True)):
        cfg = tmp_path / "trial.yaml"
        cfg.write_text(f"data:\n  max_seq_length: {seq}\n")
        r = CliRunner().invoke(estimate_memory, ["--base_model", str(folder), "--config", str(cfg), "--device", "cpu",
                                                 "--json"])
        assert r.exit_code == 0, r.output
        notes = [n for n in json.loads(r.output)["notes"] if "past the model's context" in n]
        assert bool(notes) == said, notes
        if said:
            assert f"at most {context}" in notes[0]


@pytest.mark.parametrize("content, needle", [
    (None, "file not found"),
    ("training: [1, 2\n", "malformed YAML"),
    ("training:\n  batch_size: 0\n", "batch_size"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, content, needle):
    folder = write_model(tmp_path)
    cfg = tmp_path / "trial.yaml"
    if content is not None:
        cfg.write_text(content)
    r = CliRunner().invoke(estimate_memory, ["--base-model", str(folder), "--config", str(cfg)])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.output


def test_cli_4bit_on_cpu_estimates_the_bitsandbytes_path(tmp_path):
    folder = write_model(tmp_path)
    cfg = tmp_path / "trial.yaml"
    cfg.write_text("model:\n  quantization: 4bit\n")
    r = CliRunner().invoke(estimate_memory, ["--base-model", str(folder), "--config", str(cfg), "--device", "cpu",
                                             "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["breakdown"]["checkpoint_pages"] > 0


# -- NVML, with a fake pynvml -------------------------------------------------------------------


class FakeNVMLError(Exception):
    pass


def fake_pynvml(v2=True, procs=(), mig=False, fail_init=None):
    mod = types.SimpleNamespace()
    mod.NVMLError = FakeNVMLError
    mod.NVML_DEVICE_MIG_ENABLE = 1
    mod.NVML_VALUE_NOT_AVAILABLE = 2**64 - 1
    mod.used = 10 * GIB

    def init():
        if fail_init:
            raise FakeNVMLError(fail_init)

    mod.nvmlInit = init
    mod.nvmlDeviceGetCount = lambda: 1
    mod.nvmlDeviceGetHandleByIndex = lambda i: ("gpu", i)
    mod.nvmlDeviceGetUUID = lambda h: (b"GPU-8f3c2a1e-0000-4000-8000-00000000000%d" % h[1] if h[0] == "gpu"
                                       else "MIG-5b1d0000-0000-4000-8000-00000000000%d" % h[1])
    mod.nvmlDeviceGetName = lambda h: b"Fake H200" if h[0] == "gpu" else "MIG 1g.18gb"
    if v2:
        mod.nvmlMemory_v2 = object()

    def mem(handle, version=None):
        reserved = 0 if version is not None else 300 * 1024**2  # v1 "used" includes driver reserve
        total = 140 * GIB if handle[0] == "gpu" else 18 * GIB
        used = mod.used + reserved
        return types.SimpleNamespace(total=total, free=total - used, used=used)

    mod.nvmlDeviceGetMemoryInfo = mem
    mod.nvmlDeviceGetMigMode = lambda h: (1, 1) if mig else (0, 0)
    mod.nvmlDeviceGetMaxMigDeviceCount = lambda h: 2
    mod.nvmlDeviceGetMigDeviceHandleByIndex = lambda h, i: ("mig", i)
    mod.nvmlDeviceGetComputeRunningProcesses = lambda h: list(procs)
    mod.nvmlDeviceGetGraphicsRunningProcesses = lambda h: []
    return mod


def test_has_nvidia_explains_missing_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(fail_init="Driver Not Loaded"))
    ok, why = nvml.has_nvidia()
    assert not ok and why == "NVML unavailable: Driver Not Loaded; memory is accounted on CPU (peak RSS)"
    assert nvml.gpu_inventory() == []


def test_inventory_uses_v2_memory_info_when_available(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(v2=True))
    (g,) = nvml.gpu_inventory()
    assert g.name == "Fake H200" and g.used_bytes == 10 * GIB and g.total_bytes == 140 * GIB


def test_inventory_falls_back_to_v1(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(v2=False))
    (g,) = nvml.gpu_inventory()
    assert g.used_bytes == 10 * GIB + 300 * 1024**2


def test_inventory_lists_mig_instances(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(mig=True))
    gpus = nvml.gpu_inventory()
    assert len(gpus) == 2 and all(g.mig and g.total_bytes == 18 * GIB for g in gpus)


def test_process_used_bytes_per_process_then_device_delta(monkeypatch):
    proc = types.SimpleNamespace(pid=1234, usedGpuMemory=3 * GIB)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(procs=[proc]))
    assert nvml.process_used_bytes(1234) == 3 * GIB
    # usedGpuMemory missing (None) or a host PID that does not match: device-level delta
    missing = types.SimpleNamespace(pid=1234, usedGpuMemory=None)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(procs=[missing]))
    assert nvml.process_used_bytes(1234, baseline_used_bytes=8 * GIB) == 2 * GIB
    host = types.SimpleNamespace(pid=98765, usedGpuMemory=5 * GIB)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(procs=[host]))
    assert nvml.process_used_bytes(1234, baseline_used_bytes=7 * GIB) == 3 * GIB
    assert nvml.process_used_bytes(1234) is None


# -- one real CPU measurement ---------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, resource, sys
    from moopt.memory.rss import peak_rss_bytes
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model
    from moopt_kernels import linear_cross_entropy
    torch.set_num_threads(2)
    base = peak_rss_bytes()
    cfg = LlamaConfig(**json.loads(sys.argv[1]))
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (1, int(sys.argv[2])))
    inner = model.base_model.model
    for _ in range(2):  # moopt's step: chunked linear + CE over the hidden states
        hidden = inner.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[:, :-1]
        loss, _ = linear_cross_entropy(hidden.reshape(-1, cfg.hidden_size), inner.lm_head.weight, ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    peak = peak_rss_bytes()
    print(json.dumps({"baseline": base, "peak": peak}))
""")


@pytest.mark.slow
def test_cpu_estimate_matches_peak_rss_of_two_real_steps():
    """Peak RSS of a child training 2 steps vs the CPU estimate (runtime term included).

    Band: estimate / peak RSS in [0.90, 1.30], as test_probe's: both the import-time RSS and what the
    step adds vary by machine. Measured (2 cores, torch 2.13): 2026-06, 538 MiB after imports, peak
    1363 MiB; 2026-12 on the dev machine 556 + 678 MiB (ratio 1.064), on the CI machine 603 + 782 MiB
    (ratio 0.949). The step's extra includes ~70 MiB of runtime growth on the first forward/backward
    (oneDNN, OpenMP and autograd threads), which CPU_RUNTIME_BYTES carries.
    """
    cfg = small_config(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                       num_key_value_heads=2, vocab_size=32000)
    seq = 1024
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg.to_diff_dict() | {
        k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                     "num_key_value_heads", "vocab_size", "tie_word_embeddings")}), str(seq)],
        capture_output=True, text=True, timeout=300, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    measured = got["peak"] - got["baseline"]
    est = estimate_peak(cfg, trial(b=1, s=seq, r=8, targets=ALL), device="cpu", kernels="torch", loss="chunked")
    ratio = est.total_bytes / got["peak"]
    print(f"peak RSS {got['peak'] / 2**20:.0f} MiB (extra {measured / 2**20:.0f} over {got['baseline'] / 2**20:.0f} "
          f"after imports), estimate {est.total_bytes / 2**20:.0f} MiB, ratio {ratio:.3f}")
    assert 0.90 <= ratio <= 1.30


# a child process: malloc/free straight from glibc, steady_heap applied or not (argv[1]); prints
# "<applied> <MiB the measured step gave back>"
HEAP_PRELUDE = r"""
import ctypes, sys
from moopt.memory.rss import current_rss_bytes, steady_heap, trim_heap_if_steady
applied = steady_heap() if sys.argv[1] == "steady" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
MIB = 1 << 20
"""
STEADY_HEAP_SCRIPT = HEAP_PRELUDE + r"""
big = libc.malloc(24 * MIB); libc.memset(big, 1, 24 * MIB); libc.free(big)  # by default raises the threshold to 24 MiB
blocks = [libc.malloc(6 * MIB) for _ in range(10)]
for b in blocks:
    libc.memset(b, 1, 6 * MIB)
before = current_rss_bytes()
for b in blocks[:-1]:  # the last stays: a heap cannot shrink from the top past it
    libc.free(b)
print(applied, (before - current_rss_bytes()) / MIB)
"""


def heap_drop(script: str, mode: str, **env) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_steady_heap_gives_freed_tensor_sized_blocks_back():
    """By default glibc raises its mmap threshold to each freed mapped block's size, so after one 24 MiB
    block is freed, 6 MiB blocks come from the heap and stay resident when freed (a trial's peak RSS then
    depends on the order of its frees); with steady_heap they are mapped and given back on free."""
    def drop(mode, **env):
        return heap_drop(STEADY_HEAP_SCRIPT, mode, **env)

    applied, freed = drop("steady")
    assert applied and freed > 45, freed  # 9 x 6 MiB given back
    applied, freed = drop("default")
    assert not applied and freed < 10, freed  # glibc's default: they stay in the heap
    applied, freed = drop("steady", MALLOC_MMAP_THRESHOLD_="131072")  # the user's own choice is kept
    assert not applied


TRIM_SCRIPT = HEAP_PRELUDE + r"""
# under the mmap threshold: heap blocks, each pinned by a 1 MiB one after it (a smaller one would come from
# a free chunk elsewhere), as the holes training leaves
pairs = [(libc.malloc(2 * MIB), libc.malloc(MIB)) for _ in range(40)]
for b, _ in pairs:
    libc.memset(b, 1, 2 * MIB)
for b, _ in pairs:
    libc.free(b)
before = current_rss_bytes()
trim_heap_if_steady()
print(applied, (before - current_rss_bytes()) / MIB)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_heap_trim_before_an_evaluation_gives_holes_back_only_where_rss_meets_a_budget():
    """Freed heap blocks between live ones stay resident (free() only shrinks the heap from its top); the
    trim an evaluation starts with (moopt.memory.rss.trim_heap_if_steady) gives them back in a steady-heap
    process (a CPU trial or probe under a budget) and does nothing elsewhere."""
    def drop(mode):
        return heap_drop(TRIM_SCRIPT, mode)

    applied, freed = drop("steady")
    assert applied and freed > 60, freed  # most of the 40 x 2 MiB
    applied, freed = drop("default")
    assert not applied and freed < 5, freed


def test_steady_heap_reaches_the_cpu_trial_processes_whose_peak_is_measured(tmp_path, monkeypatch):
    """LocalExecutor(steady_heap=True) starts CPU workers with MOOPT_STEADY_HEAP=1 (and GPU workers
    without); a CPU probe always has it, as the trials it stands for."""
    import moopt.study.executor as executor
    import moopt.train.probe as probe
    from moopt.config import TrialConfig
    from moopt.records import TrialSpec
    from moopt.study.placement import Slot

    envs = []

    class FakePopen:
        def __init__(self, cmd, **kw):
            envs.append(kw["env"])

    monkeypatch.setattr(executor.subprocess, "Popen", FakePopen)
    spec = TrialSpec(number=0, config=TrialConfig(), base_model="m", train_file="t", validation_file="v",
                     output_dir=str(tmp_path))
    for steady in (True, False):
        ex = executor.LocalExecutor(steady_heap=steady)
        ex._start(spec, Slot("cpu", 1), key=())
        ex._start(spec, Slot("cuda:0", 1), key=())
    assert [e.get("MOOPT_STEADY_HEAP") for e in envs] == ["1", None, None, None]

    def fake_run(cmd, **kw):
        envs.append(kw["env"])
        raise subprocess.TimeoutExpired(cmd, 1)

    monkeypatch.setattr(probe.subprocess, "run", fake_run)
    probe.probe_peak("m", TrialConfig(), device="cpu")
    assert envs[-1].get("MOOPT_STEADY_HEAP") == "1"


def test_steady_heap_reaches_ray_trials_on_a_cpu(tmp_path, monkeypatch):
    """RayExecutor(steady_heap=True) asks its CPU tasks (not GPU ones) to fix the malloc thresholds, and
    the task does before it trains."""
    pytest.importorskip("ray")
    import types

    import moopt.study.ray_executor as rx
    import moopt.train.recipe as recipe
    from moopt.config import TrialConfig
    from moopt.memory import rss
    from moopt.records import TrialResult, TrialSpec, TrialState
    from moopt.study.placement import Slot

    sent = []

    class Task:
        def options(self, **kw):
            return self

        def remote(self, spec_json, channel, steady):
            sent.append(steady)

    ex = object.__new__(rx.RayExecutor)  # no Ray instance: submit's plumbing only
    rx.ExecutorBase.__init__(ex)
    ex._task, ex.channel, ex.gpus_held = Task(), None, {}
    monkeypatch.setattr(rx.threading, "Thread", lambda **kw: types.SimpleNamespace(start=lambda: None))
    spec = TrialSpec(number=0, config=TrialConfig(), base_model="m", train_file="t", validation_file="v",
                     output_dir=str(tmp_path))
    for steady in (True, False):
        ex.steady_heap = steady
        ex.submit(spec, Slot("cpu", 1))
        ex.submit(spec, Slot("cuda:0", 1))
    assert sent == [True, False, False, False]

    order = []
    monkeypatch.setattr(rss, "steady_heap", lambda: order.append("steady_heap") or True)
    monkeypatch.setattr(recipe, "run_trial", lambda s, rep: order.append("run_trial") or TrialResult(number=s.number, state=TrialState.COMPLETE))
    spec.device = "cpu"  # (submit set it to cuda for the GPU slot; a CPU task reports no GPUs to the channel)
    rx._run_trial_task(spec.to_json(), None, True)
    rx._run_trial_task(spec.to_json(), None, False)
    assert order == ["steady_heap", "run_trial", "run_trial"]


def test_an_unquantised_trial_does_not_import_bitsandbytes(tiny_model, tiny_data, tmp_path):
    """Importing bitsandbytes adds ~52 MiB to a trial's resident set; only a quantised trial uses it, and
    the probe (which never imports it for an unquantised configuration) must measure what the trial holds."""
    import subprocess
    import sys

    script = f"""
import sys
from moopt.config import TrialConfig
from moopt.records import TrialSpec, TrialState
from moopt.train.recipe import run_trial
cfg = TrialConfig.from_dict({{"training": {{"batch_size": 4, "num_train_epochs": 1}}, "data": {{"max_seq_length": 32}}}})
r = run_trial(TrialSpec(number=0, config=cfg, base_model={str(tiny_model)!r}, train_file={str(tiny_data["train"])!r},
                        validation_file={str(tiny_data["val"])!r}, output_dir={str(tmp_path / "t")!r}, seed=1,
                        kernels="torch", device="cpu", save_adapter=True))
assert r.state == TrialState.COMPLETE, r.error
print("bitsandbytes" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


KERNEL_CACHE_SCRIPT = """
import random, torch
torch.set_num_threads(1)
W = torch.randn(1536, 576).to(torch.bfloat16)  # SmolLM2's MLP weight, frozen as a LoRA base
def step(m):
    x = torch.randn(m, 576).to(torch.bfloat16).requires_grad_()
    torch.nn.functional.linear(x, W).float().sum().backward()
step(2048)
before = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])
hwm = []
for i, m in enumerate(random.Random(0).sample(range(8, 2048), 300)):  # 300 shapes, as a trial's varied lengths
    step(m)
    if i % 150 == 149:
        hwm.append(int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]))
print((hwm[0] - before) / 1024, (hwm[1] - hwm[0]) / 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status")
def test_a_bf16_trial_process_does_not_grow_with_each_new_batch_shape():
    """oneDNN and ideep keep kernels per shape of a bf16 matmul on a CPU; unbounded (1024 entries each),
    a process's peak grew by ~1.3 MiB for each new shape of this one linear (~15 MiB a shape for a whole
    SmolLM2 step). The environment of a trial's or probe's process (child_env) bounds both caches."""
    from moopt.config import cpu_has_native_bf16
    from moopt.memory.rss import KERNEL_CACHE_ENV, bound_kernel_caches
    from moopt.train.worker import child_env

    env = child_env(1)
    assert all(env[k] == "64" for k in KERNEL_CACHE_ENV)
    mine = {"LRU_CACHE_CAPACITY": "512"}
    bound_kernel_caches(mine)  # a value the user set is kept
    assert mine == {"LRU_CACHE_CAPACITY": "512", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}
    if not cpu_has_native_bf16():
        pytest.skip("bf16 matmuls run oneDNN's per-shape kernels only on CPUs with native bf16")

    def growth(env):
        out = subprocess.run([sys.executable, "-c", KERNEL_CACHE_SCRIPT], capture_output=True, text=True,
                             env=env, check=True)
        return [float(x) for x in out.stdout.split()[-2:]]  # MiB over the first 150 shapes, the next 150

    unbounded = growth({k: v for k, v in os.environ.items() if k not in KERNEL_CACHE_ENV})
    bounded = growth(env)
    # measured: unbounded 221 + 219 MiB, bounded 70 + 85 (what is left is the heap's, not the caches')
    assert sum(unbounded) > 2 * sum(bounded), (bounded, unbounded)


def test_gpus_a_cpu_build_of_torch_cannot_use_are_not_planned_for_and_are_said(monkeypatch):
    """NVML saw the GPUs, so the study planned CUDA trials (GPU placement, budgets, probes), but a CPU wheel of torch
    (the CPU set-up path's, on a GPU machine) trained every trial on the CPU."""
    from moopt.study import placement

    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(placement, "torch_has_cuda", lambda: False)
    assert placement._gpu_capacities() == [] and not placement.DevicePlacer(1).on_gpu
    assert "this machine has 1 NVIDIA GPU(s), but this torch (" in placement.idle_gpus_note()
    assert "was built without CUDA: trials run on the CPU" in placement.idle_gpus_note()
    assert [slot.device for slot in placement.plan_slots(2)] == ["cpu", "cpu"]  # the base model's slot too
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # names are not GPUs: the note counts what NVML sees
    assert "this machine has 1 NVIDIA GPU(s)" in placement.idle_gpus_note()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(placement, "torch_has_cuda", lambda: True)
    assert placement._gpu_capacities() == [("0", 140.0)] and placement.idle_gpus_note() is None
    assert placement.plan_slots(1)[0].device == "cuda:0"


def test_an_nvml_error_is_one_line_and_a_cpu_build_of_torch_never_asks_nvml(monkeypatch):
    from moopt.errors import ConfigError
    from moopt.study import placement

    class NVMLError_Unknown(Exception):
        pass

    def broken():
        raise NVMLError_Unknown("Unknown Error")

    monkeypatch.setattr(nvml, "gpu_inventory", broken)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(placement, "torch_has_cuda", lambda: True)
    with pytest.raises(ConfigError, match=r"NVML: querying the GPUs failed \(Unknown Error\); check the driver"):
        placement._gpu_capacities()
    monkeypatch.setattr(placement, "torch_has_cuda", lambda: False)
    assert placement._gpu_capacities() == [] and placement.idle_gpus_note() is None


def test_a_gpu_named_by_uuid_in_cuda_visible_devices_is_placed_and_measured(monkeypatch):
    """CUDA_VISIBLE_DEVICES may name GPUs by UUID (or a unique prefix of one), as job schedulers often do: placement
    matched NVML's indices only, found no GPU and sent every trial to the CPU without a word; the trial's NVML
    reading took GPU 0."""
    from moopt.study import placement
    from moopt.train.worker import child_env

    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    monkeypatch.setattr(placement, "torch_has_cuda", lambda: True)  # this machine's torch is a CPU build
    for visible in ("GPU-8f3c2a1e-0000-4000-8000-000000000000", "GPU-8f3c2a1e"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert placement._gpu_capacities() == [(visible, 140.0)]
        assert placement.DevicePlacer(1).on_gpu and nvml.nvml_index() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-ffff")  # names no GPU here: none, as CUDA would see none
    assert placement._gpu_capacities() == []
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    env = child_env(1, "GPU-8f3c2a1e")
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-8f3c2a1e" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
