"""Per-layer tests: shapes, causality, explicit caches, and finite-difference gradient checks in float64 on every
backend. Layers take the residual stream as (B*T, C) rows; attention and blocks are told T."""

import numpy as np
import pytest

from llm.nn.layers import (CausalSelfAttention, Embedding, FeedForward, LayerNorm, Linear, OutputProjection,
                        TransformerBlock)
from llm.nn.layers.attention import AttentionCache
from llm.nn.layers.block import BlockCache
from llm.nn.layers.embedding import EmbeddingCache
from llm.nn.layers.feedforward import FeedForwardCache
from llm.nn.layers.layernorm import LayerNormCache
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
    # Rotary position embeddings (issue 10 item 4); last, so the cases above draw the same weights as before
    yield "attention-rope", CausalSelfAttention(be, rng, C, H, out_std=0.5, rope=True, max_seq_len=7), x
    yield "block-pre-rope", TransformerBlock(be, rng, C, H, F, norm="pre", out_std=0.5, rope=True, max_seq_len=7), x


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
                                  "block-pre", "block-post", "head", "attention-rope", "block-pre-rope"])
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
                                  "head", "attention-rope"])
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


# -- positional encodings (issue 10 item 4) ---------------------------------------------------------------------------

def _rope_reference(x, start=0, base=10000.0):
    # x: (..., T, D) -> each pair (i, i + D/2) rotated by (start + t) * base**(-2i/D), as complex multiplication
    T, D = x.shape[-2:]
    half = D // 2
    angle = np.arange(start, start + T)[:, None] * base ** (-2.0 * np.arange(half) / D)[None, :]
    z = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * angle)
    return np.concatenate([z.real, z.imag], axis=-1)


def test_rope_rotation_matches_the_formula_and_is_inverted_by_its_backward(backend_name):
    from llm.nn.layers.attention import rope_rotate, rope_tables, rope_unrotate

    be = require_backend(backend_name, "float64")
    xp = be.xp
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 6, 8))
    cos, sin = rope_tables(xp, 10, 8, be.asarray(x))
    got = be.to_numpy(rope_rotate(xp, be.asarray(x), cos[4:10, :], sin[4:10, :]))
    np.testing.assert_allclose(got, _rope_reference(x, start=4), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-13)  # a rotation
    back = be.to_numpy(rope_unrotate(xp, be.asarray(got), cos[4:10, :], sin[4:10, :]))
    np.testing.assert_allclose(back, x, rtol=1e-13, atol=1e-13)


def test_rope_scores_depend_only_on_the_distance():
    # q at position m and k at position n: their rotated dot product is the same for every shift of both
    rng = np.random.default_rng(12)
    q, k = rng.standard_normal(16), rng.standard_normal(16)
    qs, ks = np.tile(q, (12, 1)), np.tile(k, (12, 1))
    rq, rk = _rope_reference(qs), _rope_reference(ks)
    scores = rq @ rk.T  # scores[m, n]: query at position m, key at position n
    for distance in (0, 1, 4, 7):
        along = np.diag(scores, k=-distance)  # every (m, m - distance)
        np.testing.assert_allclose(along, np.full(12 - distance, along[0]), rtol=1e-12)
    assert not np.isclose(scores[1, 0], scores[4, 0])  # but different distances give different scores


def test_rope_attention_gradients_every_entry(backend_name):
    # Every input and every QKV weight entry on NumPy, not a sample: the rotation touches each pair of channels
    # (the other backends check 40 of each here; their parity with NumPy is test_parity's)
    be = require_backend(backend_name, "float64")
    every = backend_name == "numpy"
    rng = np.random.default_rng(13)
    attn = CausalSelfAttention(be, rng, C, H, out_std=0.5, rope=True, max_seq_len=T)
    x = be.asarray(rng.standard_normal((B * T, C)))
    out, cache = attn.forward(x, T)
    R = be.asarray(rng.standard_normal(tuple(out.shape)))
    loss = lambda: float(be.xp.sum(attn.forward(x, T)[0] * R))  # noqa: E731
    dx = attn.backward(R, cache)
    errors = {"input": check_array(be, loss, x, dx, rng, n=B * T * C if every else 40),
              "qkv": check_array(be, loss, attn.qkv.params["weight"], attn.qkv.grads["weight"], rng,
                                 n=3 * C * C if every else 40)}
    assert max(errors.values()) <= TOL, errors


def test_rope_attention_differs_from_plain_and_is_causal(backend_name):
    be = require_backend(backend_name, "float64")
    plain = CausalSelfAttention(be, np.random.default_rng(14), C, H, out_std=0.5)
    rope = CausalSelfAttention(be, np.random.default_rng(14), C, H, out_std=0.5, rope=True, max_seq_len=T)
    x = np.random.default_rng(15).standard_normal((B, T, C))

    def run(layer, x):
        return be.to_numpy(layer.forward(be.asarray(x.reshape(B * T, C)), T)[0]).reshape(B, T, C)

    y_plain, y1 = run(plain, x), run(rope, x)
    np.testing.assert_allclose(y1[:, 0], y_plain[:, 0], rtol=1e-12, atol=1e-12)  # position 0: no rotation
    assert not np.allclose(y1[:, 1:], y_plain[:, 1:])
    x[:, 3:, :] += 1.0
    np.testing.assert_allclose(run(rope, x)[:, :3], y1[:, :3], rtol=1e-12, atol=1e-12)


def test_rope_needs_an_even_head_size():
    # GPTConfig holds the rule (the layers trust their config): head size 6 / 2 = 3 cannot be rotated in pairs
    from llm.errors import ConfigError
    from llm.nn.config import GPTConfig

    with pytest.raises(ConfigError, match="even"):
        GPTConfig(vocab_size=10, d_model=6, n_heads=2, pos_encoding="rope")


def test_sinusoidal_embedding_adds_the_fixed_table_and_learns_only_tokens(backend_name):
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(16)
    emb = Embedding(be, rng, V, 7, C, std=0.5, pos_encoding="sinusoidal")
    assert set(emb.params) == {"token"}
    tokens = np.array([[1, 2, 1, 1, 4], [4, 4, 0, 1, 9]])
    out, cache = emb.forward(be.asarray(tokens), start=2)
    t = np.arange(2, 2 + T)[:, None]
    w = 10000.0 ** (-np.arange(0, C, 2) / C)
    table = np.zeros((T, C))
    table[:, 0::2], table[:, 1::2] = np.sin(t * w), np.cos(t * w)
    table *= 0.5  # amplitude: the embedding's std, the scale a learned table starts at
    expected = be.to_numpy(emb.params["token"])[tokens] + table
    np.testing.assert_allclose(be.to_numpy(out), expected.reshape(B * T, C), rtol=1e-13, atol=1e-13)
    R = be.asarray(rng.standard_normal((B * T, C)))
    emb.backward(R, cache)
    loss = lambda: float(be.xp.sum(emb.forward(be.asarray(tokens))[0] * R))  # noqa: E731
    assert check_array(be, loss, emb.params["token"], emb.grads["token"], rng, n=40) <= TOL


def test_rope_embedding_adds_no_position():
    be = require_backend("numpy", "float64")
    emb = Embedding(be, np.random.default_rng(17), V, 7, C, pos_encoding="rope")
    assert set(emb.params) == {"token"}
    tokens = np.array([[3, 1, 4]])
    np.testing.assert_array_equal(emb.forward(tokens, start=3)[0], emb.params["token"][tokens[0]])


def test_caches_name_what_they_hold():
    be = require_backend("numpy", "float64")
    rng = np.random.default_rng(14)
    layers = {name: (layer, x) for name, layer, x in _layer_cases(be, rng)}
    attn, x = layers["attention"]
    _, c = _forward(attn, x)
    assert isinstance(c, AttentionCache) and c.x is x
    assert tuple(c.q.shape) == tuple(c.k.shape) == tuple(c.v.shape) == tuple(c.heads.shape) == (B, H, T, C // H)
    probs = be.to_numpy(c.probs)  # (B, H, T, T): causal rows that sum to 1
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-12)
    assert np.all(np.triu(probs, k=1) == 0)
    np.testing.assert_allclose(be.to_numpy(c.heads), probs @ be.to_numpy(c.v), rtol=1e-12)
    assert tuple(c.merged.shape) == (B * T, C)
    for name in ("block-pre", "block-post"):
        _, bc = _forward(*layers[name])
        assert isinstance(bc, BlockCache) and isinstance(bc.attn, AttentionCache)
        assert isinstance(bc.ln1, LayerNormCache) and isinstance(bc.ln2, LayerNormCache)
        assert isinstance(bc.ff, FeedForwardCache)
    ln, x = layers["layernorm"]
    _, lc = ln.forward(x)
    xhat = be.to_numpy(lc.xhat)
    np.testing.assert_allclose(xhat.mean(axis=-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(be.to_numpy(lc.rstd)[:, 0], 1 / np.sqrt(be.to_numpy(x).var(axis=-1) + ln.eps),
                               rtol=1e-12)
    relu, gelu = (_forward(*layers[f"feedforward-{a}"])[1] for a in ("relu", "gelu"))
    assert relu.gelu is None and np.all(be.to_numpy(relu.a) >= 0)
    h, t = gelu.gelu
    np.testing.assert_allclose(be.to_numpy(gelu.a), be.to_numpy(0.5 * h * (1.0 + t)), rtol=1e-15)
    emb = Embedding(be, rng, V, 7, C)
    tokens = rng.integers(0, V, (B, T))
    _, ec = emb.forward(be.asarray(tokens))
    assert isinstance(ec, EmbeddingCache) and ec.T == T
    np.testing.assert_array_equal(be.to_numpy(ec.flat_ids), tokens.reshape(-1))
