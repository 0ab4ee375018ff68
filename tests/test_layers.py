"""Per-layer tests: shapes, causality, explicit caches, and finite-difference gradient checks in float64 on every
backend. Layers take the residual stream as (B*T, C) rows; attention and blocks are told T."""

import numpy as np
import pytest

from llm.layers import (CausalSelfAttention, Embedding, FeedForward, LayerNorm, Linear, OutputProjection,
                        TransformerBlock)
from tests.conftest import require_backend
from tests.gradcheck import check_array

TOL = 1e-6
B, T, C, H, F, V = 2, 5, 8, 2, 16, 11


def _layer_cases(be, rng):
    # name -> (layer, input builder, forward(x)); every layer gets a float input except the embedding
    x = be.asarray(rng.standard_normal((B * T, C)))
    yield "linear", Linear(be, rng, C, 6, std=0.5), x
    yield "layernorm", LayerNorm(be, C), x
    yield "attention", CausalSelfAttention(be, rng, C, H, out_std=0.5), x
    yield "feedforward-relu", FeedForward(be, rng, C, F, "relu", out_std=0.5), x
    yield "feedforward-gelu", FeedForward(be, rng, C, F, "gelu", out_std=0.5), x
    yield "block-pre", TransformerBlock(be, rng, C, H, F, norm="pre", out_std=0.5), x
    yield "block-post", TransformerBlock(be, rng, C, H, F, "gelu", norm="post", out_std=0.5), x
    yield "head", OutputProjection(be, rng, C, V, std=0.5), x


def _randomize_norms(layer, be, rng):
    # gamma = 1, beta = 0 at init would hide errors in their gradients: draw them at random
    for name, p, _ in layer.named_arrays():
        if name.endswith("gamma") or name.endswith("beta") or name.endswith("bias"):
            p[...] = be.asarray(rng.standard_normal(tuple(p.shape)) * 0.5 + (1.0 if name.endswith("gamma") else 0))


def _forward(layer, x, key_mask=None):
    # -> (y, cache); attention and blocks need the sequence length to find the sequences among the rows
    if isinstance(layer, (CausalSelfAttention, TransformerBlock)):
        return layer.forward(x, T, key_mask)
    return layer.forward(x)


@pytest.mark.parametrize("case", ["linear", "layernorm", "attention", "feedforward-relu", "feedforward-gelu",
                                  "block-pre", "block-post", "head"])
def test_layer_gradients_match_finite_differences(backend_name, case):
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(0)
    layer, x = next((l, x) for name, l, x in _layer_cases(be, rng) if name == case)
    _randomize_norms(layer, be, rng)
    out, cache = _forward(layer, x)
    R = be.asarray(rng.standard_normal(tuple(out.shape)))  # loss = sum(out * R), so dL/dout = R

    def loss() -> float:
        return float(be.xp.sum(_forward(layer, x)[0] * R))

    for _, _, g in layer.named_arrays():
        g[...] = 0
    dx = layer.backward(R, cache)
    assert tuple(dx.shape) == tuple(x.shape)
    errors = {"input": check_array(be, loss, x, dx, rng)}
    for name, p, g in layer.named_arrays():
        errors[name] = check_array(be, loss, p, g, rng)
    worst = max(errors.values())
    assert worst <= TOL, f"{case} on {backend_name}: relative errors {errors}"


def test_embedding_gradients_with_repeated_ids(backend_name):
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(1)
    emb = Embedding(be, rng, V, 7, C, std=0.5)
    tokens = be.asarray(np.array([[1, 2, 1, 1, 4], [4, 4, 0, 1, 9]]))  # repeats within and across rows
    R = be.asarray(rng.standard_normal((B * T, C)))

    def loss() -> float:
        return float(be.xp.sum(emb.forward(tokens)[0] * R))

    out, cache = emb.forward(tokens)
    assert tuple(out.shape) == (B * T, C)
    emb.backward(R, cache)
    for name, p, g in emb.named_arrays():
        err = check_array(be, loss, p, g, rng, n=40)
        assert err <= TOL, f"embedding {name}: {err}"
    # rows of unused ids and unused positions get exactly zero
    g_tok = be.to_numpy(emb.grads["token"])
    assert np.all(g_tok[[3, 5, 6, 7, 8, 10]] == 0)
    assert np.all(be.to_numpy(emb.grads["position"])[T:] == 0)


def test_attention_is_causal(backend_name):
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(2)
    attn = CausalSelfAttention(be, rng, C, H, out_std=0.5)
    x = rng.standard_normal((B, T, C))
    run = lambda x: be.to_numpy(attn.forward(be.asarray(x.reshape(B * T, C)), T)[0]).reshape(B, T, C)  # noqa: E731
    y1 = run(x)
    x[:, 3:, :] += rng.standard_normal((B, T - 3, C))  # change the future only
    y2 = run(x)
    np.testing.assert_allclose(y1[:, :3], y2[:, :3], rtol=1e-12, atol=1e-12)
    assert not np.allclose(y1[:, 3:], y2[:, 3:])


def test_key_padding_mask_hides_padded_keys(backend_name):
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(3)
    attn = CausalSelfAttention(be, rng, C, H, out_std=0.5)
    x = rng.standard_normal((1, T, C))
    mask = np.array([[False, False, True, True, True]])  # left padding: the first two positions are padding
    run = lambda x: be.to_numpy(attn.forward(be.asarray(x.reshape(T, C)), T, be.asarray(mask))[0])  # noqa: E731
    y1 = run(x)
    x[:, :2, :] = rng.standard_normal((1, 2, C))
    y2 = run(x)
    np.testing.assert_allclose(y1[2:], y2[2:], rtol=1e-12, atol=1e-12)
    assert np.all(np.isfinite(y1))


def test_layer_output_shapes(backend_name):
    be = require_backend(backend_name)
    rng = np.random.default_rng(4)
    for name, layer, x in _layer_cases(be, rng):
        out, _ = _forward(layer, x)
        expected = (B * T, 6) if name == "linear" else (B * T, V) if name == "head" else (B * T, C)
        assert tuple(out.shape) == expected, name
        assert out.dtype == be.dtype


@pytest.mark.parametrize("case", ["linear", "layernorm", "attention", "feedforward-gelu", "block-pre", "block-post",
                                  "head"])
def test_forward_keeps_nothing_on_the_layer_and_batches_can_interleave(backend_name, case):
    # Two forwards in flight, their backwards in the other order: each backward uses only its own cache.
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(5)
    layer, x1 = next((l, x) for name, l, x in _layer_cases(be, rng) if name == case)
    x2 = be.asarray(rng.standard_normal(tuple(x1.shape)))
    before = {k: id(v) for k, v in vars(layer).items()}
    y1, c1 = _forward(layer, x1)
    assert {k: id(v) for k, v in vars(layer).items()} == before, "forward stored something on the layer"
    R1 = be.asarray(rng.standard_normal(tuple(y1.shape)))

    def grads_of(x, R):
        for _, _, g in layer.named_arrays():
            g[...] = 0
        y, c = _forward(layer, x)
        dx = layer.backward(R, c)
        return be.to_numpy(dx), {n: be.to_numpy(g) for n, _, g in layer.named_arrays()}

    dx_alone, g_alone = grads_of(x1, R1)
    for _, _, g in layer.named_arrays():
        g[...] = 0
    y1, c1 = _forward(layer, x1)
    y2, c2 = _forward(layer, x2)  # a second batch in flight
    dx1 = layer.backward(R1, c1)
    np.testing.assert_array_equal(be.to_numpy(dx1), dx_alone)
    for n, _, g in layer.named_arrays():
        np.testing.assert_array_equal(be.to_numpy(g), g_alone[n])
