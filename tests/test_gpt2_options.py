"""GPT-2's model options (issue 17 part 1): a QKV bias, an output head without bias, the named GPT-2 shapes.

Gradients against finite differences in float64 on every backend, every backend against NumPy, the KV cache with
the bias, parameter counts, and the defaults leaving earlier models and their config.json exactly as they were.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm import GPT, GPTConfig, cross_entropy
from llm.errors import ConfigError
from llm.nn.config import GPT2_PRESETS
from llm.nn.layers import CausalSelfAttention, OutputProjection, TransformerBlock
from tests.conftest import require_backend
from tests.gradcheck import H, check_array, rel_error
from tests.test_parity import RTOL, assert_close

TOL = 1e-6
B, T, C, NH, F, V = 2, 5, 8, 2, 16, 11
SMALL = dict(vocab_size=13, d_model=8, n_heads=2, n_layers=2, d_ff=16, max_seq_len=7)
GPT2_LIKE = dict(activation="gelu", tie_weights=True, qkv_bias=True, head_bias=False)


def _check_entries(be, f, arr, analytic, indices):
    """Central differences of `f` at the given entries of device array `arr` -> (numeric, analytic) host arrays."""
    host = be.to_numpy(arr).astype(np.float64)
    ana = be.to_numpy(analytic)
    num = []
    for idx in indices:
        orig = host[idx]
        values = []
        for value in (orig + H, orig - H):
            host[idx] = value
            arr[...] = be.asarray(host)
            values.append(f())
        host[idx] = orig
        arr[...] = be.asarray(host)
        num.append((values[0] - values[1]) / (2 * H))
    return np.array(num), np.array([ana[idx] for idx in indices])


def _check_qkv_bias(be, f, bias, grad, rng, d_model, rope=False, n=6):
    """The query and value parts of a QKV bias against finite differences; the key part's gradient is zero, except
    with rope (the rotation makes the key bias's share of a score depend on the key's position), where it is
    checked like the rest."""
    parts = (0, 1, 2) if rope else (0, 2)
    picked = [p * d_model + int(i) for p in parts for i in rng.choice(d_model, n // 2, replace=False)]
    num, ana = _check_entries(be, f, bias, grad, [(i,) for i in picked])
    if rope:
        assert np.max(np.abs(be.to_numpy(grad)[d_model:2 * d_model])) > 1e-6  # not zero: the test can tell
        return rel_error(num, ana)
    g = be.to_numpy(grad)
    keys = g[d_model:2 * d_model]
    assert np.max(np.abs(keys)) <= 1e-12 * max(np.max(np.abs(g)), 1e-30), f"key bias gradient {keys}"
    k_num, _ = _check_entries(be, f, bias, grad, [(int(d_model + i),) for i in rng.choice(d_model, 3, replace=False)])
    assert np.max(np.abs(k_num)) <= 1e-7, f"the loss moved with the key bias: {k_num}"  # mathematically zero
    return rel_error(num, ana)


def _randomize(layer, be, rng):
    for name, p, _ in layer.named_arrays():
        if name.endswith(("gamma", "beta", "bias")):
            p[...] = be.asarray(rng.standard_normal(tuple(p.shape)) * 0.5 + (1.0 if name.endswith("gamma") else 0))


def _layers(be, rng):
    yield "attention-qkv-bias", CausalSelfAttention(be, rng, C, NH, out_std=0.5, qkv_bias=True)
    yield "attention-qkv-bias-rope", CausalSelfAttention(be, rng, C, NH, out_std=0.5, rope=True, max_seq_len=7,
                                                         qkv_bias=True)
    yield "block-qkv-bias", TransformerBlock(be, rng, C, NH, F, "gelu", out_std=0.5, qkv_bias=True)
    yield "head-no-bias", OutputProjection(be, rng, C, V, std=0.5, bias=False)


@pytest.mark.parametrize("case", ["attention-qkv-bias", "attention-qkv-bias-rope", "block-qkv-bias",
                                  "head-no-bias"])
def test_layer_gradients_match_finite_differences(backend_name, case):
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(0)
    layer = next(layer for name, layer in _layers(be, rng) if name == case)
    _randomize(layer, be, rng)
    x = be.asarray(rng.standard_normal((B * T, C)))
    run = (lambda: layer.forward(x)) if case.startswith("head") else (lambda: layer.forward(x, T))
    out, cache = run()
    R = be.asarray(rng.standard_normal(tuple(out.shape)))

    def loss() -> float:
        return float(be.xp.sum(run()[0] * R))

    dx = layer.backward(R, cache)
    errors = {"input": check_array(be, loss, x, dx, rng)}
    for name, p, g in layer.named_arrays():
        errors[name] = (_check_qkv_bias(be, loss, p, g, rng, C, "rope" in case) if name.endswith("qkv.bias")
                        else check_array(be, loss, p, g, rng))
    assert max(errors.values()) <= TOL, f"{case} on {backend_name}: {errors}"
    names = {name for name, _, _ in layer.named_arrays()}
    assert names == {"weight"} if case.startswith("head") else any(n.endswith("qkv.bias") for n in names), names


@pytest.mark.parametrize("variant", [GPT2_LIKE, {"qkv_bias": True}, {"head_bias": False},
                                     {**GPT2_LIKE, "pos_encoding": "rope"}])
def test_model_gradients_match_finite_differences(backend_name, variant):
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(0)
    model = GPT(GPTConfig(**SMALL, init_std=0.3, **variant), be, seed=1)
    _randomize(model, be, rng)  # every bias and norm parameter away from its initial value
    tokens, targets = rng.integers(0, 13, (3, 6)), rng.integers(0, 13, (3, 6))
    mask = np.ones((3, 6), bool)
    mask[0, 4:] = False

    def loss() -> float:
        return float(cross_entropy(model.forward(tokens), be.asarray(targets), be.asarray(mask))[0])

    model.loss_and_grads(tokens, targets, mask)
    grads = {k: be.asarray(be.to_numpy(g)) for k, g in model.grads.items()}
    rope = variant.get("pos_encoding") == "rope"
    errors = {name: (_check_qkv_bias(be, loss, p, grads[name], rng, 8, rope) if name.endswith("qkv.bias")
                     else check_array(be, loss, p, grads[name], rng, n=8)) for name, p in model.params.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, f"{backend_name} {variant}: worst {worst} = {errors[worst]:.2e}"
    assert ("blocks.0.attn.qkv.bias" in model.params) is variant.get("qkv_bias", False)
    assert ("head.bias" in model.params) is variant.get("head_bias", True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_backend_matches_numpy(other_backend_name, dtype):
    ref_be, be = require_backend("numpy", dtype), require_backend(other_backend_name, dtype)
    cfg = GPTConfig(vocab_size=61, max_seq_len=16, **GPT2_LIKE)
    ref, other = GPT(cfg, ref_be, seed=3), GPT(cfg, be, seed=3)
    rng = np.random.default_rng(4)
    for name, p in ref.params.items():  # non-zero biases, drawn once, the same on both
        if name.endswith(("bias", "beta")):
            p[...] = rng.standard_normal(tuple(p.shape)) * 0.1
            other.params[name][...] = be.asarray(p)
    tokens = rng.integers(0, 61, (4, 12))
    targets = rng.integers(0, 61, (4, 12))
    assert_close(be.to_numpy(other.forward(tokens)), ref.forward(tokens), RTOL[dtype], "logits")
    l_ref, l_other = float(ref.loss_and_grads(tokens, targets)), float(other.loss_and_grads(tokens, targets))
    assert l_other == pytest.approx(l_ref, rel=RTOL[dtype])
    for name, g in ref.grads.items():
        assert_close(be.to_numpy(other.grads[name]), g, RTOL[dtype], f"grad {name}")


def test_the_kv_cache_adds_the_qkv_bias(backend_name):
    be = require_backend(backend_name, "float64")
    model = GPT(GPTConfig(**SMALL, init_std=0.5, **GPT2_LIKE), be, seed=2)
    rng = np.random.default_rng(3)
    for name, p in model.params.items():
        if name.endswith("qkv.bias"):
            p[...] = be.asarray(rng.standard_normal(tuple(p.shape)))
    seq = rng.integers(0, 13, (2, 7))
    cache = model.new_kv_cache()
    got = [be.to_numpy(model.forward_cached(seq[:, :3], cache))]
    got += [be.to_numpy(model.forward_cached(seq[:, t:t + 1], cache)) for t in range(3, 7)]
    np.testing.assert_allclose(np.concatenate(got, axis=1), be.to_numpy(model.forward(seq)), rtol=1e-10, atol=1e-10)
    # and the bias matters: the same model without it decodes something else
    for name, p in model.params.items():
        if name.endswith("qkv.bias"):
            p[...] = 0
    assert not np.allclose(be.to_numpy(model.forward(seq)), np.concatenate(got, axis=1))


def test_parameter_counts():
    be = require_backend("numpy")
    for variant in (GPT2_LIKE, {"qkv_bias": True}, {"head_bias": False}, {"head_bias": False, "tie_weights": True},
                    {"qkv_bias": True, "norm": "post", "pos_encoding": "rope"}):
        cfg = GPTConfig(**SMALL, **variant)
        assert cfg.num_parameters() == GPT(cfg, be).num_parameters(), variant
    C_, L = SMALL["d_model"], SMALL["n_layers"]
    base = GPTConfig(**SMALL).num_parameters()
    assert GPTConfig(**SMALL, qkv_bias=True).num_parameters() == base + L * 3 * C_
    assert GPTConfig(**SMALL, head_bias=False).num_parameters() == base - SMALL["vocab_size"]
    # the published sizes of OpenAI's four GPT-2 models
    published = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
                 "gpt2-xl": 1_557_611_200}
    assert {name: GPTConfig.preset(name).num_parameters() for name in GPT2_PRESETS} == published


def test_presets():
    cfg = GPTConfig.preset("gpt2")
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_ff) == (12, 12, 768, 3072)
    assert (cfg.vocab_size, cfg.max_seq_len, cfg.activation, cfg.norm, cfg.pos_encoding) == (
        50257, 1024, "gelu", "pre", "learned")
    assert cfg.tie_weights and cfg.qkv_bias and not cfg.head_bias and cfg.ln_eps == 1e-5
    assert {n: (c.n_layers, c.n_heads, c.d_model) for n in GPT2_PRESETS for c in [GPTConfig.preset(n)]} == {
        "gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}
    small = GPTConfig.preset("gpt2", n_layers=2, max_seq_len=64)
    assert (small.n_layers, small.max_seq_len, small.d_model, small.qkv_bias) == (2, 64, 768, True)
    with pytest.raises(ConfigError, match="preset must be one of gpt2, gpt2-medium") as info:
        GPTConfig.preset("gpt3")
    assert info.value.param == "preset"
    with pytest.raises(ConfigError, match="unknown config keys"):
        GPTConfig.preset("gpt2", n_layer=2)
    for name in ("qkv_bias", "head_bias"):
        with pytest.raises(ConfigError, match=f"{name} must be true or false") as info:
            GPTConfig(vocab_size=10, **{name: 1})
        assert info.value.param == name


def test_defaults_keep_earlier_models_and_configs_unchanged():
    cfg = GPTConfig(vocab_size=10)
    assert not cfg.qkv_bias and cfg.head_bias
    before = ["vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_seq_len", "activation", "norm",
              "tie_weights", "ln_eps", "init_std", "pos_encoding"]  # config.json's keys before these options
    assert list(cfg.to_dict()) == before
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    gpt2 = GPTConfig.preset("gpt2")
    assert gpt2.to_dict()["qkv_bias"] is True and gpt2.to_dict()["head_bias"] is False
    assert GPTConfig.from_dict(gpt2.to_dict()) == gpt2
    # the options draw nothing: shared parameters are the same with and without them, on the same seed
    be = require_backend("numpy", "float64")
    plain, biased = GPT(GPTConfig(**SMALL), be, seed=7), GPT(GPTConfig(**SMALL, qkv_bias=True, head_bias=False), be,
                                                             seed=7)
    assert set(biased.params) == (set(plain.params) - {"head.bias"}) | {f"blocks.{i}.attn.qkv.bias" for i in (0, 1)}
    for name, p in biased.params.items():
        if name in plain.params:
            np.testing.assert_array_equal(p, plain.params[name], err_msg=name)
    assert not np.any(biased.params["blocks.0.attn.qkv.bias"])


def test_our_gelu_is_gpt2s_tanh_gelu():
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle for GPT-2's gelu_new")
    from llm.nn.layers import FeedForward

    be = require_backend("numpy", "float64")
    ff = FeedForward(be, np.random.default_rng(0), 4, 4, "gelu")
    ff.fc1.params["weight"][...] = np.eye(4)
    ff.fc2.params["weight"][...] = np.eye(4)
    h = np.linspace(-6, 6, 400).reshape(100, 4)
    ours = ff.forward(h)[0]
    x = torch.tensor(h, dtype=torch.float64)
    new_gelu = 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    np.testing.assert_allclose(ours, torch.nn.functional.gelu(x, approximate="tanh").numpy(), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(ours, new_gelu.numpy(), rtol=1e-14, atol=1e-15)
    try:
        from transformers.activations import ACT2FN
    except ImportError:
        return
    for name in ("gelu_new", "gelu_pytorch_tanh"):
        np.testing.assert_allclose(ours, ACT2FN[name](x).numpy(), rtol=1e-14, atol=1e-15, err_msg=name)
