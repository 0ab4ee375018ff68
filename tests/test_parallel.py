"""Data parallelism inside the process (llm.parallel): workers=N equals workers=1 in float64, gradients included."""

from __future__ import annotations

import numpy as np
import pytest

from backends import get_backend
from llm import GPT, Adam, GPTConfig, TrainStep
from llm.nn.batch_checks import DeviceBatch
from llm.training.batch import HostShard, ShardedBatch, host_shards, prepare_shards, send_shard, shard_bounds
from llm.errors import ConfigError
from llm.training.threads import DataParallel, resolve_workers
from tests.conftest import require_backend
from tests.gradcheck import check_array

CFG = dict(vocab_size=11, d_model=8, n_heads=2, n_layers=2, d_ff=16, max_seq_len=6)
TOL = 1e-12


def _pair(workers: int, backend: str = "numpy", **cfg):
    be = require_backend(backend, "float64")
    out = []
    for w in (1, workers):
        model = GPT(GPTConfig(**{**CFG, **cfg}), be, seed=3)
        opt = Adam(model, lr=1e-2, weight_decay=0.01)
        out.append((model, opt, TrainStep(model, opt, workers=w)))
    return out


def _batch(rng, B, T, V, masked):
    tokens, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    mask = None
    if masked:
        mask = rng.random((B, T)) < 0.6
        mask[0, :] = True
        if B > 2:
            mask[1, :] = False  # a sequence with nothing counted: left out of the shards
    return tokens, targets, mask


def _close(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= TOL, f"{what}: max difference {err:.3g} > {TOL}"


@pytest.mark.parametrize("B,masked,workers", [(4, False, 2), (4, True, 2), (3, False, 2), (3, True, 2),
                                              (1, False, 2), (1, True, 2), (5, True, 3), (2, False, 4)])
def test_workers_equal_one_worker_in_float64(B, masked, workers):
    (m1, o1, s1), (m2, o2, s2) = _pair(workers, tie_weights=B == 5)
    assert s2.workers == workers
    rng = np.random.default_rng(B * 10 + masked)
    for step in range(4):
        tokens, targets, mask = _batch(rng, B, CFG["max_seq_len"] - (step % 2), CFG["vocab_size"], masked)
        l1, l2 = s1(tokens, targets, mask, lr=1e-2), s2(tokens, targets, mask, lr=1e-2)
        _close(float(l1), float(l2), f"loss at step {step}")
        for name in m1.grads:
            _close(m1.grads[name], m2.grads[name], f"grad {name} at step {step}")
        _close(o1.last_grad_norm, o2.last_grad_norm, "grad norm")
    for name in m1.params:
        _close(m1.params[name], m2.params[name], f"param {name} after 4 Adam steps")
    _close(o1.m_buffer, o2.m_buffer, "Adam m")
    _close(o1.v_buffer, o2.v_buffer, "Adam v")


@pytest.mark.parametrize("backend", ["strict", "torch"])
def test_workers_on_other_host_backends(backend):
    (m1, o1, s1), (m2, o2, s2) = _pair(2, backend)
    be = m1.backend
    rng = np.random.default_rng(5)
    for step in range(2):
        tokens, targets, mask = _batch(rng, 3, 5, CFG["vocab_size"], masked=step == 1)
        _close(float(s1(tokens, targets, mask)), float(s2(tokens, targets, mask)), "loss")
    _close(be.to_numpy(m1.flat.grad_buffer), be.to_numpy(m2.flat.grad_buffer), "grads")
    _close(be.to_numpy(m1.flat.param_buffer), be.to_numpy(m2.flat.param_buffer), "params")


def test_nothing_counted_takes_a_zero_step_like_one_worker():
    (m1, o1, s1), (m2, o2, s2) = _pair(2)
    rng = np.random.default_rng(0)
    tokens, targets, _ = _batch(rng, 3, 5, CFG["vocab_size"], False)
    mask = np.zeros((3, 5), dtype=bool)
    assert float(s1(tokens, targets, mask)) == float(s2(tokens, targets, mask)) == 0.0
    assert not np.any(m2.flat.grad_buffer)
    _close(m1.flat.param_buffer, m2.flat.param_buffer, "params")


def test_parallel_gradients_pass_finite_differences():
    be = get_backend("numpy", "float64")
    model = GPT(GPTConfig(**CFG), be, seed=1)
    dp = DataParallel(model, 2)
    rng = np.random.default_rng(7)
    tokens, targets, mask = _batch(rng, 3, 6, CFG["vocab_size"], True)

    def loss() -> float:
        shards, _ = prepare_shards(be, model.config, tokens, targets, mask, 2)
        with dp.limit_blas():
            return float(dp.loss_and_grads(shards))

    loss()
    grads = {name: np.array(g, copy=True) for name, g in model.grads.items()}
    worst = max(check_array(be, loss, model.params[name], grads[name], rng, n=6) for name in grads)
    assert worst < 1e-6, worst
    dp.close()


def test_twins_share_parameters_and_own_their_gradients():
    be = get_backend("numpy", "float64")
    model = GPT(GPTConfig(**CFG, tie_weights=True), be, seed=0)
    twin = DataParallel(model, 2).twins[0]
    assert twin.flat.param_buffer is model.flat.param_buffer
    assert twin.flat.grad_buffer is not model.flat.grad_buffer
    assert twin.blocks[0].attn.qkv is not model.blocks[0].attn.qkv
    assert twin.blocks[0].attn.qkv is twin.children["blocks.0"].children["attn"].children["qkv"]
    assert twin.head.tied_to is twin.embed  # a tied head stays tied, to the twin's embedding
    for (name, layer, key), (tname, tlayer, tkey) in zip(model.named_slots(), twin.named_slots()):
        if layer is model:
            continue
        assert name == tname and tlayer.params[key] is layer.params[key]
        assert np.shares_memory(tlayer.grads[key], twin.flat.grad_buffer)
        assert not np.shares_memory(tlayer.grads[key], model.flat.grad_buffer)


def test_shards_are_balanced_contiguous_and_weighted():
    assert [shard_bounds(3, i, 2) for i in range(2)] == [(0, 2), (2, 3)]
    assert [shard_bounds(1, i, 2) for i in range(2)] == [(0, 1), (1, 1)]
    be = get_backend("numpy", "float64")
    cfg = GPTConfig(**CFG)
    rng = np.random.default_rng(2)
    tokens, targets, mask = _batch(rng, 5, 6, CFG["vocab_size"], True)
    shards, count = prepare_shards(be, cfg, tokens, targets, mask, 2)
    assert count == int(mask.sum())
    assert [s.tokens.shape[0] for s in shards] == [2, 2]  # the empty sequence left out, 4 dealt 2 + 2
    assert sum(s.targets.shape[0] for s in shards) == count
    np.testing.assert_allclose(sum(float(np.sum(s.weights)) for s in shards), 1.0, rtol=0, atol=1e-15)
    with pytest.raises(ConfigError, match="outside"):
        prepare_shards(be, cfg, tokens, np.where(mask, 99, targets), mask, 2)


def test_workers_option_is_checked():
    be = get_backend("numpy", "float32")
    model = GPT(GPTConfig(**CFG), be, seed=0)
    opt = Adam(model)
    for bad in (0, -1, 1.5, True, "two"):
        with pytest.raises(ConfigError, match="workers"):
            TrainStep(model, opt, workers=bad)
    assert TrainStep(model, opt).workers == 1
    assert TrainStep(model, opt, workers="auto").workers >= 1
    strict = require_backend("strict", "float64")
    assert resolve_workers(strict, "auto") == 1


@pytest.mark.parametrize("name", ["cupy", "torch:cuda"])
def test_workers_on_a_gpu_backend(name):
    be = require_backend(name)
    assert resolve_workers(be, "auto") == 1
    with pytest.raises(ConfigError, match="GPU"):
        resolve_workers(be, 2)


def test_shards_are_named_records_on_the_host_and_on_the_device():
    be = get_backend("numpy", "float64")
    cfg = GPTConfig(**CFG)
    tokens, targets, mask = _batch(np.random.default_rng(3), 5, 6, CFG["vocab_size"], True)
    split = host_shards(be, cfg, tokens, targets, mask, 2)
    assert isinstance(split, ShardedBatch) and split.count == int(mask.sum())
    kept = np.flatnonzero(mask.any(axis=1))
    for shard, (lo, hi) in zip(split.shards, [shard_bounds(kept.size, i, 2) for i in range(2)]):
        assert isinstance(shard, HostShard)
        np.testing.assert_array_equal(shard.tokens, tokens[kept[lo:hi]])
        m = mask[kept[lo:hi]]
        rows = None if m.all() else np.flatnonzero(m)
        assert (shard.rows is None) == (rows is None)
        picked = targets[kept[lo:hi]].reshape(-1)
        np.testing.assert_array_equal(shard.targets, picked if rows is None else picked[rows])
        np.testing.assert_array_equal(shard.weights, np.full(shard.targets.shape[0], 1.0 / split.count))
    sent = prepare_shards(be, cfg, tokens, targets, mask, 2)
    assert isinstance(sent, ShardedBatch) and sent.count == split.count
    assert len(sent.shards) == len(split.shards) == 2
    for device, shard in zip(sent.shards, split.shards):
        for sent_one in (device, send_shard(be, shard)):
            assert isinstance(sent_one, DeviceBatch)
            for name in DeviceBatch._fields:  # the same fields, the same values
                got, want = getattr(sent_one, name), getattr(shard, name)
                assert (got is None) == (want is None), name
                if want is not None:
                    np.testing.assert_array_equal(be.to_numpy(got), want)
    nothing = host_shards(be, cfg, tokens, targets, np.zeros_like(mask), 2)
    assert nothing.shards == [] and nothing.count == 0
