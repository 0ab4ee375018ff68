"""Activation recomputation (``recompute=True``): every block but the last keeps only its input in the forward pass
and runs its forward again in the backward pass; the gradients are the normal path's, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from llm import GPT, Adam, GPTConfig, TrainStep
from llm.errors import ConfigError
from llm.nn.batch_checks import prepare_batch
from llm.training.loop import build_step
from tests.conftest import require_backend

CFG = dict(vocab_size=13, d_model=8, n_heads=2, n_layers=3, d_ff=16, max_seq_len=7)
HOST = ("numpy", "strict", "torch")  # the same operations on the same inputs: the same bits


def _check(be, name, a, b, what):
    a, b = be.to_numpy(a), be.to_numpy(b)
    if name in HOST:
        assert np.array_equal(a, b), f"{what}: not bit-identical (max difference {np.max(np.abs(a - b)):.3g})"
    else:
        assert float(np.max(np.abs(a - b))) <= 1e-12, what


def _batch(rng, B, T, masked):
    tok, tgt = rng.integers(0, CFG["vocab_size"], (B, T)), rng.integers(0, CFG["vocab_size"], (B, T))
    mask = None
    if masked:
        mask = rng.random((B, T)) < 0.5
        mask[0, 0] = True
    return tok, tgt, mask


@pytest.mark.parametrize("cfg", [{}, {"norm": "post"}, {"pos_encoding": "rope", "tie_weights": True},
                                 {"n_layers": 1}, {"activation": "gelu", "n_layers": 2}],
                         ids=["pre-LN", "post-LN", "rope-tied", "one-layer", "gelu"])
@pytest.mark.parametrize("masked", [False, True])
def test_recomputed_gradients_equal_the_normal_path(backend_name, cfg, masked):
    be = require_backend(backend_name, "float64")
    model = GPT(GPTConfig(**{**CFG, **cfg}), be, seed=2)
    tok, tgt, mask = _batch(np.random.default_rng(len(cfg) + masked), 3, 7, masked)
    batch = prepare_batch(be, model.config, tok, tgt, mask)
    l1 = model.loss_and_grads_device(*batch)
    g1 = be.xp.asarray(model.flat.grad_buffer, copy=True)
    l2 = model.loss_and_grads_device(*batch, recompute=True)
    _check(be, backend_name, l1, l2, "loss")
    _check(be, backend_name, g1, model.flat.grad_buffer, "gradients")


def test_the_forward_keeps_only_the_inputs_of_the_recomputed_blocks():
    be = require_backend("numpy", "float64")
    model = GPT(GPTConfig(**CFG), be, seed=0)
    tokens = be.asarray(np.zeros((2, 5), dtype=np.int64), dtype=be.xp.int64)
    x, trunk = model._trunk_forward(tokens, recompute=True)
    assert len(trunk.blocks) == 1 and len(trunk.inputs) == CFG["n_layers"] - 1 and trunk.T == 5
    assert all(i.shape == (10, CFG["d_model"]) for i in trunk.inputs)
    _, normal = model._trunk_forward(tokens)
    assert len(normal.blocks) == CFG["n_layers"] and not hasattr(normal, "inputs")


@pytest.mark.parametrize("workers, micro_batch", [(1, None), (2, None), (1, 2), (2, 1)])
def test_train_steps_with_recompute_equal_the_normal_steps(workers, micro_batch):
    be = require_backend("numpy", "float64")
    runs = []
    for recompute in (False, True):
        model = GPT(GPTConfig(**CFG), be, seed=4)
        opt = Adam(model, lr=1e-2)
        step = TrainStep(model, opt, workers=workers, micro_batch=micro_batch, recompute=recompute)
        rng = np.random.default_rng(9)
        losses = [float(step(*_batch(rng, 5, 7 - i % 2, masked=i % 2 == 1))) for i in range(4)]
        runs.append((losses, model.flat.param_buffer.copy(), opt.state.m.copy(), opt.state.v.copy()))
    (l1, p1, m1, v1), (l2, p2, m2, v2) = runs
    if workers == 1 and micro_batch is None:  # one pass, the same operations: the same bits
        assert l1 == l2 and np.array_equal(p1, p2) and np.array_equal(m1, m2) and np.array_equal(v1, v2)
    assert np.max(np.abs(np.array(l1) - np.array(l2))) <= 1e-12
    for a, b in ((p1, p2), (m1, m2), (v1, v2)):
        assert np.max(np.abs(a - b)) <= 1e-12


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_a_bad_recompute_is_a_config_error_naming_it(bad):
    be = require_backend("numpy", "float64")
    model = GPT(GPTConfig(**CFG), be, seed=0)
    for make in (lambda: TrainStep(model, Adam(model), recompute=bad),
                 lambda: build_step(model, Adam(model), recompute=bad)):
        with pytest.raises(ConfigError) as info:
            make()
        assert info.value.param == "recompute"
