"""moopt.train.lora on a tiny random Llama: attach, shared-input groups, PEFT export, training vs PEFT."""

import copy
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import moopt_kernels
import pytest
import torch
import transformers
from moopt_kernels import linear_cross_entropy

from moopt.train.lora import LoRALinear, attach_lora, lora_parameters, save_peft_adapter

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
R, ALPHA = 8, 16


def tiny_llama(seed=0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )
    return transformers.LlamaForCausalLM(config).eval()


def randomize_b(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.lora_B.data = torch.randn(m.lora_B.shape, generator=gen) * 0.1


def tokens(seed=0, batch=2, length=16):
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def _hf_kernels_installed() -> bool:
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_importing_moopt_kernels_leaves_transformers_loading_intact(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path)
    assert moopt_kernels.HAS_TRITON in (True, False)
    # Without Hugging Face's `kernels` installed, whatever `import kernels` finds (tests/kernels/, a
    # namespace portion) must not pass for it: transformers detects it by distribution metadata.
    if importlib.util.find_spec("kernels") is not None and not _hf_kernels_installed():
        assert not transformers.utils.is_kernels_available()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = tokens()
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_attach_lora_freezes_base_and_starts_at_base_output():
    model = tiny_llama()
    ids = tokens()
    with torch.no_grad():
        before = model(ids).logits
    info = attach_lora(model, r=R, alpha=ALPHA, dropout=0.1, target_modules=ALL, backend="torch")
    assert info["backend"] == "torch" and len(info["modules"]) == 2 * 7
    # per layer: r·(K+N) for each projection; hidden 64, kv width 32, intermediate 128
    per_layer = R * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 128) + (128 + 64))
    assert info["n_trainable"] == 2 * per_layer
    assert [p for p in model.parameters() if p.requires_grad] == lora_parameters(model)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before)  # B = 0 at init


def test_attach_lora_rejects_unknown_targets():
    with pytest.raises(ValueError, match="target_modules must be a non-empty subset"):
        attach_lora(tiny_llama(), r=R, alpha=ALPHA, dropout=0.0, target_modules=("qkv",))


def test_shared_input_groups_equal_per_linear_and_release_their_cache():
    fused, single = tiny_llama(), tiny_llama()
    attach_lora(fused, R, ALPHA, 0.0, ALL, backend="torch")
    attach_lora(single, R, ALPHA, 0.0, ALL, backend="torch", fuse_shared_inputs=False)
    single.load_state_dict(fused.state_dict())
    randomize_b(fused)
    randomize_b(single)
    groups = {id(m.group): m.group for m in fused.modules() if isinstance(m, LoRALinear) and m.group}
    assert len(groups) == 4  # (q,k,v) and (gate,up) in each of 2 layers
    ids = tokens()
    for model in (fused, single):
        model.train()
        model(ids).logits.square().mean().backward()
    assert all(g._x is None and not g._outputs for g in groups.values())
    for a, b in zip(lora_parameters(fused), lora_parameters(single)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_group_member_called_with_another_tensor_recomputes():
    model = tiny_llama()
    attach_lora(model, R, ALPHA, 0.0, ("q_proj", "k_proj"), backend="torch")
    randomize_b(model)
    attn = model.model.layers[0].self_attn
    x, other = torch.randn(1, 3, 64), torch.randn(1, 3, 64)
    q = attn.q_proj(x)
    k_other = attn.k_proj(other)  # not the cached tensor: must be k_proj(other), not k_proj(x)
    attn.q_proj.group = attn.k_proj.group = None
    torch.testing.assert_close(q, attn.q_proj(x))
    torch.testing.assert_close(k_other, attn.k_proj(other))


def test_a_group_member_asking_twice_recomputes():
    """The contract's third case: q_proj called again with the same tensor (its sibling not served yet) gets a fresh
    output, not the group's cached one: here its lora_B changed in between, so the cached one would be stale."""
    model = tiny_llama()
    attach_lora(model, R, ALPHA, 0.0, ("q_proj", "k_proj"), backend="torch")
    randomize_b(model)
    q = model.model.layers[0].self_attn.q_proj
    x = torch.randn(1, 3, 64)
    first = q(x)
    with torch.no_grad():
        q.lora_B.add_(1.0)
    again = q(x)
    assert not torch.allclose(first, again)
    q.group = None
    torch.testing.assert_close(again, q(x))


def test_dropout_masks_differ_between_calls_and_repeat_under_a_seed():
    """A fresh seed per training forward (each step, each layer sees a new mask); torch.manual_seed repeats them, so
    a trial is reproducible. A constant seed (one mask for every step) passed every other test."""
    model = tiny_llama()
    attach_lora(model, R, ALPHA, 0.5, ALL, backend="torch")
    randomize_b(model)
    model.train()
    ids = tokens()
    torch.manual_seed(3)
    a, b = model(ids).logits, model(ids).logits
    assert not torch.allclose(a, b)
    torch.manual_seed(3)
    torch.testing.assert_close(model(ids).logits, a)
    model.eval()
    torch.testing.assert_close(model(ids).logits, model(ids).logits)


def test_saving_an_adapter_does_not_import_peft(tmp_path):
    """A trial writes its PEFT-format adapter without importing peft: the import (and the bitsandbytes it
    pulls in) added ~254 MiB to the trial process's RSS after training, the peak of small trials on a CPU."""
    code = (
        "import sys, transformers\n"
        "from moopt.train.lora import attach_lora, save_peft_adapter\n"
        "cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,"
        " num_attention_heads=4, num_key_value_heads=2)\n"
        "m = transformers.LlamaForCausalLM(cfg)\n"
        "attach_lora(m, 8, 16, 0.0, ('q_proj', 'v_proj'), backend='torch')\n"
        f"save_peft_adapter(m, {str(tmp_path)!r}, 'tiny', 8, 16, 0.0, ('q_proj', 'v_proj'))\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('peft', 'bitsandbytes')))\n"
    )
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"] == ["q_proj", "v_proj"]


def test_saving_an_adapter_writes_from_the_tensors_without_a_copy_in_memory(tmp_path):
    """An adapter of 32 MiB (r 512 on q,v of a 4096-wide layer) is written without raising the process's
    peak resident set by its size (safetensors' save() built the whole file as bytes first), and the file
    gets the folder's usual mode, not mkstemp's 0600."""
    code = (
        "import os, transformers\n"
        "from moopt.memory.rss import peak_rss_bytes\n"
        "from moopt.train.lora import attach_lora, save_peft_adapter\n"
        "cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=4096, intermediate_size=64, num_hidden_layers=1,"
        " num_attention_heads=32, num_key_value_heads=32)\n"
        "m = transformers.LlamaForCausalLM(cfg)\n"
        "attach_lora(m, 512, 512, 0.0, ('q_proj', 'v_proj'), backend='torch')\n"
        "before = peak_rss_bytes()\n"
        f"save_peft_adapter(m, {str(tmp_path)!r}, 'tiny', 512, 512, 0.0, ('q_proj', 'v_proj'))\n"
        "print(peak_rss_bytes() - before)\n"
    )
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True).stdout
    size = (tmp_path / "adapter_model.safetensors").stat().st_size
    assert size > 30 * 2**20
    assert int(out.strip().splitlines()[-1]) < 0.1 * size
    assert (tmp_path / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_saved_adapter_reloads_in_peft_with_the_same_logits(tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_llama()
    model = copy.deepcopy(base)
    targets = ("q_proj", "v_proj", "gate_proj", "down_proj")
    attach_lora(model, R, ALPHA, 0.05, targets, backend="torch")
    randomize_b(model)
    save_peft_adapter(model, tmp_path, "tiny-llama", R, ALPHA, 0.05, targets)
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    ids = tokens(3)
    with torch.no_grad():
        want = model.eval()(ids).logits
        got = reloaded(ids).logits
    assert not torch.allclose(want, tiny_llama()(ids).logits, atol=1e-3)  # the adapter does change the output
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def moopt_loss(model, ids):
    hidden = model.model(ids).last_hidden_state[:, :-1].reshape(-1, 64)
    labels = ids[:, 1:].reshape(-1)
    loss_sum, _ = linear_cross_entropy(hidden, model.lm_head.weight, labels, chunk_size=8)
    return loss_sum / labels.numel()


def test_training_matches_peft_lora_for_30_steps():
    peft = pytest.importorskip("peft")
    ours, theirs = tiny_llama(), tiny_llama()
    attach_lora(ours, R, ALPHA, 0.0, ALL, backend="torch")
    theirs = peft.get_peft_model(theirs, peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(ALL)))
    for name, module in ours.named_modules():
        if isinstance(module, LoRALinear):  # same init: copy A (B is zero in both)
            theirs.base_model.model.get_submodule(name).lora_A["default"].weight.data.copy_(module.lora_A)
    ids = tokens(5, batch=2, length=16)
    opt_ours = torch.optim.AdamW(lora_parameters(ours), lr=1e-2)
    opt_theirs = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)
    ours.train()
    theirs.train()
    curves = ([], [])
    for _ in range(30):
        for model, opt, curve, loss_fn in (
            (ours, opt_ours, curves[0], lambda: moopt_loss(ours, ids)),
            (theirs, opt_theirs, curves[1], lambda: theirs(input_ids=ids, labels=ids).loss),
        ):
            loss = loss_fn()
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve.append(loss.item())
    torch.testing.assert_close(torch.tensor(curves[0]), torch.tensor(curves[1]), rtol=5e-2, atol=0)
    assert curves[0][-1] < 0.8 * curves[0][0]  # it did learn: ln(128) = 4.85 at the start


def test_triton_backend_gives_the_torch_backend_gradients():
    if not moopt_kernels.HAS_TRITON:
        pytest.skip("triton is not installed")
    models = {b: tiny_llama() for b in ("torch", "triton")}
    for backend, model in models.items():
        attach_lora(model, R, ALPHA, 0.0, ALL, backend=backend)
        randomize_b(model)
    models["triton"].load_state_dict(models["torch"].state_dict())  # the same lora_A draws
    device = "cuda" if torch.cuda.is_available() else "cpu"  # compiled on a GPU, interpreted on the CPU
    for model in models.values():
        model.to(device).train()
        model(tokens(length=8).to(device)).logits.square().mean().backward()
    for a, b in zip(lora_parameters(models["triton"]), lora_parameters(models["torch"])):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_checkout_root_on_sys_path_does_not_shadow_hf_kernels():
    """`python -c` (and Ray workers, `python -m`) put the checkout's root first on sys.path. Its kernels/
    folder holds no __init__.py, so `import kernels` still finds Hugging Face's package when installed
    (transformers >= 5.25 requires it) and never moopt's code; moopt_kernels still imports."""
    root = Path(__file__).resolve().parents[2]
    probe = ("import importlib.util, json, kernels, moopt_kernels, transformers; "
             "print(json.dumps({'file': getattr(kernels, '__file__', None), "
             "'paths': [str(p) for p in getattr(kernels, '__path__', [])], "
             "'lora': moopt_kernels.lora_linear.__module__}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["lora"] == "moopt_kernels.lora_linear"
    if _hf_kernels_installed():
        assert found["file"] and not Path(found["file"]).resolve().is_relative_to(root / "kernels")
    else:  # only a namespace package of folders, none of them holding moopt's kernels
        assert found["file"] is None
        assert not any((Path(p) / "lora_linear.py").exists() for p in found["paths"])
