"""Blocked attention (issue 18): finite-difference gradients, parity with the explicit path on every backend
(forward and every gradient, key masks, RoPE, ragged and tiny lengths, the KV cache), and no (B, H, T, T) array."""

import tracemalloc

import numpy as np
import pytest

from llm import GPTConfig
from llm.errors import ConfigError
from llm.nn.layers import CausalSelfAttention
from llm.nn.layers.attention import KVCache, configure_attention
from llm.nn.layers.blocked_attention import blocked_backward, blocked_forward
from tests.conftest import require_backend
from tests.gradcheck import check_array

C, H = 8, 2


def _layer(be, mode, rope=False, block_q=4, block_k=4, seed=0):
    layer = CausalSelfAttention(be, np.random.default_rng(seed), C, H, out_std=0.5, rope=rope, max_seq_len=40)
    configure_attention(layer, mode, block_q=block_q, block_k=block_k)
    return layer


def _mask(B, T, rng, blind=True):
    # holes in every sequence; with `blind`, left padding longer than a block in sequence 0 (rows that see only
    # padding, whose scores s + MASK_VALUE are rounded to ~1e-7 in float64: a step function finite differences
    # cannot check, so the gradient check leaves them out and the parity tests cover them)
    mask = rng.random((B, T)) > 0.3
    mask[:, 0] = True
    if blind:
        mask[0, :min(T - 1, 6)] = False
        mask[0, -1] = True
    return mask


def _run(be, layer, x, T, mask, R):
    # -> output, dx and every parameter gradient, on the host
    for _, _, g in layer.named_arrays():
        g[...] = 0
    y, cache = layer.forward(x, T, None if mask is None else be.asarray(mask))
    dx = layer.backward(R, cache)
    return [be.to_numpy(y), be.to_numpy(dx)] + [be.to_numpy(g) for _, _, g in layer.named_arrays()], cache


CASES = {  # name -> (T, block_q, block_k, rope, masked)
    "ragged": (11, 4, 4, False, False),
    "ragged-masked": (11, 4, 4, False, True),
    "rope-masked": (13, 4, 8, True, True),
    "rope": (9, 8, 4, True, False),
    "shorter-than-a-block": (3, 4, 4, False, True),
    "one-block": (8, 8, 8, False, True),
    "many-blocks": (32, 8, 8, True, False),
}


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
@pytest.mark.parametrize("case", list(CASES))
def test_blocked_matches_explicit(backend_name, dtype, tol, case):
    T, bq, bk, rope, masked = CASES[case]
    be = require_backend(backend_name, dtype)
    rng = np.random.default_rng(1)
    B = 2
    x = be.asarray(rng.standard_normal((B * T, C)))
    R = be.asarray(rng.standard_normal((B * T, C)))
    mask = _mask(B, T, rng) if masked else None
    ref, ref_cache = _run(be, _layer(be, "explicit", rope), x, T, mask, R)
    got, cache = _run(be, _layer(be, "blocked", rope, bq, bk), x, T, mask, R)
    assert ref_cache.probs is not None and cache.probs is None and tuple(cache.lse.shape) == (B, H, T)
    names = ["output", "dx"] + [n for n, _, _ in _layer(be, "explicit").named_arrays()]
    for name, a, b in zip(names, ref, got):
        scale = max(1.0, float(np.abs(a).max()))
        assert np.abs(a - b).max() <= tol * scale, f"{case} {name} on {backend_name}/{dtype}"
    assert all(np.all(np.isfinite(a)) for a in got)


@pytest.mark.parametrize("rope,masked", [(False, False), (False, True), (True, True)])
def test_blocked_gradients_match_finite_differences(backend_name, rope, masked):
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(2)
    T, B = 10, 2
    layer = _layer(be, "blocked", rope, block_q=4, block_k=3)
    x = be.asarray(rng.standard_normal((B * T, C)))
    mask = be.asarray(_mask(B, T, rng, blind=False)) if masked else None
    R = be.asarray(rng.standard_normal((B * T, C)))

    def loss() -> float:
        return float(be.xp.sum(layer.forward(x, T, mask)[0] * R))

    y, cache = layer.forward(x, T, mask)
    assert cache.probs is None
    dx = layer.backward(R, cache)
    errors = {"input": check_array(be, loss, x, dx, rng, n=20)}
    for name, p, g in layer.named_arrays():
        errors[name] = check_array(be, loss, p, g, rng, n=20)
    assert max(errors.values()) <= 1e-6, errors


@pytest.mark.parametrize("rope", [False, True])
def test_kv_cache_decoding_matches_explicit(backend_name, rope):
    # a 9-token prompt, a 3-token chunk (T_q < T_k: the causal diagonal is offset), then one token at a time
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(3)
    chunks = [9, 3, 1, 1, 1]
    xs = [be.asarray(rng.standard_normal((2 * n, C))) for n in chunks]
    outs = {}
    for mode in ("explicit", "blocked"):
        layer, kv = _layer(be, mode, rope), KVCache()
        outs[mode] = [be.to_numpy(layer.forward_cached(x, n, kv)) for x, n in zip(xs, chunks)]
        assert kv.length == sum(chunks)
    for a, b in zip(outs["explicit"], outs["blocked"]):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)


def test_kv_cache_equals_the_full_forward_on_the_blocked_path():
    be = require_backend("numpy", "float64")
    rng = np.random.default_rng(4)
    T, B = 14, 2
    x = rng.standard_normal((B, T, C))
    layer = _layer(be, "blocked", rope=True)
    full = be.to_numpy(layer.forward(be.asarray(x.reshape(B * T, C)), T)[0]).reshape(B, T, C)
    kv = KVCache()
    first = be.to_numpy(layer.forward_cached(be.asarray(x[:, :10].reshape(-1, C)), 10, kv)).reshape(B, 10, C)
    rest = [be.to_numpy(layer.forward_cached(be.asarray(x[:, t:t + 1].reshape(-1, C)), 1, kv)) for t in range(10, T)]
    np.testing.assert_allclose(np.concatenate([first] + [r.reshape(B, 1, C) for r in rest], axis=1), full,
                               rtol=1e-10, atol=1e-10)


def test_auto_picks_the_path_by_length():
    be = require_backend("numpy", "float64")
    rng = np.random.default_rng(5)
    layer = _layer(be, "auto")
    configure_attention(layer, "auto", blocked_from=6)
    short = layer.forward(be.asarray(rng.standard_normal((5, C))), 5)[1]
    long = layer.forward(be.asarray(rng.standard_normal((6, C))), 6)[1]
    assert short.probs is not None and short.lse is None
    assert long.probs is None and long.lse is not None


def test_configure_attention_checks_its_settings():
    be = require_backend("numpy")
    layer = _layer(be, "explicit")
    with pytest.raises(ConfigError) as err:
        configure_attention(layer, "flash")
    assert err.value.param == "attention"
    with pytest.raises(ConfigError) as err:
        configure_attention(layer, "blocked", block_q=0)
    assert err.value.param == "block_q"
    assert layer.attention == "explicit"  # a refused setting changes nothing


def test_no_array_of_the_scores_size_is_allocated():
    # NumPy reports its allocations to tracemalloc: the blocked forward + backward at T = 1024 peaks far under one
    # (B, H, T, T) array, which the explicit path needs several of
    be = require_backend("numpy", "float32")
    rng = np.random.default_rng(6)
    B, Hh, T, D = 1, 2, 1024, 16
    q, k, v, dout = (rng.standard_normal((B, Hh, T, D)).astype(np.float32) for _ in range(4))
    scores_bytes = B * Hh * T * T * 4
    tracemalloc.start()
    try:
        out, lse = blocked_forward(q, k, v, block_q=128, block_k=128)
        grads = blocked_backward(dout, q, k, v, out, lse, block_q=128, block_k=128)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        layer = _layer(be, "explicit")
        x = be.asarray(rng.standard_normal((T, C)))
        layer.backward(x, layer.forward(x, T)[1])  # the explicit path, for contrast (H = 2, B = 1)
        _, explicit_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * scores_bytes, (peak, scores_bytes)
    assert explicit_peak > scores_bytes  # the measurement sees a (B, H, T, T) array where there is one
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_attention_maps_are_the_probabilities_whatever_the_setting():
    from llm.nn.config import GPTConfig
    from llm.nn.model import GPT

    be = require_backend("numpy", "float64")
    model = GPT(GPTConfig(vocab_size=11, d_model=8, n_heads=2, n_layers=2, d_ff=16, max_seq_len=20), be)
    tokens = np.arange(13) % 11
    reference = model.attention_maps(tokens)
    assert configure_attention(model, "blocked", block_q=4, block_k=4) == 2
    maps = model.attention_maps(tokens)
    for a, b in zip(reference, maps):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(b.sum(axis=-1), 1.0, rtol=1e-12)
    assert all(block.attn.attention == "blocked" for block in model.blocks)  # the setting is restored
    logits_blocked = be.to_numpy(model.predict(tokens[None, :]))
    configure_attention(model, "explicit")
    np.testing.assert_allclose(logits_blocked, be.to_numpy(model.predict(tokens[None, :])), rtol=1e-10, atol=1e-12)


def test_the_memory_estimate_counts_no_score_matrix_where_blocked_attention_serves():
    # The command lines refuse a run whose estimate exceeds the machine's memory: at T >= BLOCKED_FROM it must not
    # count (T, T) probabilities per head and layer, which the blocked path never keeps.
    from llm.nn.footprint import training_memory
    from llm.nn.layers.blocked_attention import BLOCKED_FROM

    cfg = GPTConfig(vocab_size=65, d_model=128, n_heads=4, n_layers=2, d_ff=512, max_seq_len=4096)
    B, T = 4, 4096
    scores = B * cfg.n_heads * T * T * 4 * cfg.n_layers  # float32 probabilities of every layer
    assert T >= BLOCKED_FROM and training_memory(cfg, B, T, 4) < scores / 4
    short = BLOCKED_FROM // 2  # below the threshold the explicit path's probabilities are counted
    assert training_memory(cfg, B, short, 4) > B * cfg.n_heads * short * short * 4 * cfg.n_layers
    # --attention explicit keeps them at any length, --attention blocked at none
    assert training_memory(cfg, B, T, 4, "explicit") > scores
    assert training_memory(cfg, B, short, 4, "blocked") < training_memory(cfg, B, short, 4)


def test_the_attention_flag_sets_every_layer_and_changes_no_result(tmp_path):
    import argparse
    import subprocess
    import sys
    from pathlib import Path

    from llm import GPT, Adam
    from llm.cli import flags

    p = argparse.ArgumentParser()
    flags.add_speed(p, "text")
    be = require_backend("numpy", "float64")
    for mode in ("explicit", "blocked", "auto"):
        model = GPT(GPTConfig(vocab_size=12, d_model=8, n_heads=2, n_layers=2, d_ff=16, max_seq_len=16), be, seed=0)
        flags.build_cli_step(p.parse_args(["--attention", mode]), model, Adam(model))
        assert [b.attn.attention for b in model.blocks] == [mode, mode]
    assert p.parse_args([]).attention == "auto"
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    outs = []
    for mode in ("explicit", "blocked"):
        cmd = [sys.executable, "-m", "llm", "text", "--text", str(text), "--max-seq-len", "16", "--d-model", "16",
               "--n-heads", "2", "--n-layers", "1", "--d-ff", "32", "--batch-size", "4", "--steps", "4",
               "--log-every", "2", "--sample-chars", "20", "--dtype", "float64", "--attention", mode]
        run = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                             timeout=120, encoding="utf-8")
        assert run.returncode == 0, run.stderr
        outs.append([ln for ln in run.stdout.splitlines() if "tokens/s" not in ln])
    assert outs[0] == outs[1] and any("loss" in ln for ln in outs[0])
