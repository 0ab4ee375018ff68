"""The fused fast paths (backends.fused, CuPy only) against the array-API reference, on the same data.

Each kernel is compared with the reference code path it replaces (run with ``reference_only()``), in float64 to
rounding and in float32 to the parity suite's tolerance; then a whole training step. Skipped, with the reason,
where CuPy is not usable.
"""

import numpy as np
import pytest

from backends.fused import fast_path, fused_enabled, reference_only
from llm import GPT, Adam, GPTConfig, TrainStep
from llm.nn.layers import CausalSelfAttention, LayerNorm
from tests.conftest import require_backend

RTOL = {"float32": 2e-5, "float64": 1e-12}


def test_no_fast_path_off_cupy_or_when_turned_off(monkeypatch):
    be = require_backend("numpy")
    x = be.asarray(np.zeros((2, 3)))
    assert fast_path("softmax_rows", x) is None and fused_enabled()
    with reference_only():
        assert not fused_enabled()
    monkeypatch.setenv("ARRAYGPT_FUSED", "0")
    assert not fused_enabled()


def test_no_fast_path_on_rocm(monkeypatch):
    # The kernels reduce within 32-lane warps: on ROCm's 64-lane wavefronts the reference must run instead.
    import backends.fused as fused

    be = require_backend("cupy")
    x = be.asarray(np.zeros((2, 3)))
    assert fast_path("softmax_rows", x) is not None or fused._on_rocm()  # NVIDIA: the kernel is there
    monkeypatch.setattr(fused._on_rocm, "value", True, raising=False)
    assert fast_path("softmax_rows", x) is None


def _both(fn):
    # (fused result, reference result), both as host arrays
    fused = fn()
    with reference_only():
        ref = fn()
    return fused, ref


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layernorm_kernels_match_the_reference(dtype):
    be = require_backend("cupy", dtype)
    rng = np.random.default_rng(0)
    ln = LayerNorm(be, 48)
    ln.params["gamma"][...] = be.asarray(rng.standard_normal(48))
    ln.params["beta"][...] = be.asarray(rng.standard_normal(48))
    x = be.asarray(rng.standard_normal((37, 48)) * 3 + 1)
    dout = be.asarray(rng.standard_normal((37, 48)))
    assert fast_path("layernorm_forward", x) is not None

    def run():
        for g in ln.grads.values():
            g[...] = 0
        y, cache = ln.forward(x)
        dx = ln.backward(dout, cache)
        return [be.to_numpy(a) for a in (y, dx, ln.grads["gamma"], ln.grads["beta"])]

    fused, ref = _both(run)
    for name, a, b in zip(("y", "dx", "dgamma", "dbeta"), fused, ref):
        np.testing.assert_allclose(a, b, rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(b).max(), err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("T", [7, 80, 300])
def test_attention_softmax_kernels_match_the_reference(dtype, T):
    be = require_backend("cupy", dtype)
    rng = np.random.default_rng(1)
    attn = CausalSelfAttention(be, rng, 32, 4, out_std=0.5)
    x = be.asarray(rng.standard_normal((2 * T, 32)))
    dout = be.asarray(rng.standard_normal((2 * T, 32)))

    def run():
        for _, _, g in attn.named_arrays():
            g[...] = 0
        y, cache = attn.forward(x, T)
        dx = attn.backward(dout, cache)
        return [be.to_numpy(a) for a in (y, dx, attn.qkv.grads["weight"], cache.probs)]

    fused, ref = _both(run)
    for name, a, b in zip(("y", "dx", "dqkv", "p"), fused, ref):
        np.testing.assert_allclose(a, b, rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(b).max(), err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_training_step_with_every_kernel_matches_the_reference(dtype):
    be = require_backend("cupy", dtype)
    rng = np.random.default_rng(2)
    cfg = GPTConfig(vocab_size=61, max_seq_len=16)
    tokens, targets = rng.integers(0, 61, (4, 12)), rng.integers(0, 61, (4, 12))
    mask = np.ones((4, 12), bool)
    mask[1, 8:] = False

    def run():
        model = GPT(cfg, be, seed=3)
        step = TrainStep(model, Adam(model, lr=1e-3, clip_norm=1.0, weight_decay=0.01))
        losses = [float(step(tokens, targets, mask)) for _ in range(3)]
        return losses, be.to_numpy(model.flat.param_buffer)

    (l_fused, p_fused), (l_ref, p_ref) = _both(run)
    np.testing.assert_allclose(l_fused, l_ref, rtol=1e-4 if dtype == "float32" else 1e-10)
    err = np.linalg.norm(p_fused - p_ref) / np.linalg.norm(p_ref)
    assert err <= (1e-5 if dtype == "float32" else 1e-12), f"parameters differ by {err:.2e}"


def test_adam_kernel_keeps_the_finite_guard():
    be = require_backend("cupy", "float64")
    model = GPT(GPTConfig(vocab_size=13, d_model=8, n_heads=2, n_layers=1, d_ff=16, max_seq_len=7), be, seed=0)
    opt = Adam(model, lr=1e-2)
    model.flat.grad_buffer[...] = 1.0
    opt.step()
    before = be.to_numpy(model.flat.param_buffer), be.to_numpy(opt.m_buffer), be.to_numpy(opt.v_buffer)
    model.flat.grad_buffer[3] = float("nan")
    opt.step()
    after = be.to_numpy(model.flat.param_buffer), be.to_numpy(opt.m_buffer), be.to_numpy(opt.v_buffer)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert opt.t == 1 and float(opt.skipped) == 1 and float(opt.first_skipped) == 2
