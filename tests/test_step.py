"""The flat-buffer training step: views into the buffers, explicit caches, TrainStep without device -> host reads,
Adam's device-side non-finite guard, the Trainer's lazy reads, CUDA graph replay, host-side batch checks, padding."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator

import numpy as np
import pytest

import llm
from backends import Backend
from backends.ops import flat_views
from llm import GPT, Adam, GPTConfig, TrainStep, cross_entropy
from llm.nn.batch_checks import DeviceBatch, prepare_batch
from llm.training.batch import prepare_padded_batch
from llm.training.optim import AdamCoefficients, AdamState
from llm.errors import BackendUnavailableError, ConfigError, TrainingDivergedError
from llm.infer.generation import generate_ids
from llm.data.tokenizers import WordTokenizer
from llm.training import Recipe, Trainer
from tests.conftest import require_backend
from tests.test_training import CHATS, FACTS  # the same tiny corpus

SMALL = dict(vocab_size=13, d_model=8, n_heads=2, n_layers=2, d_ff=16, max_seq_len=7)
TINY = dict(d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=16)


def host(be: Backend, a: Any) -> np.ndarray:
    """A host copy that later writes to `a` cannot change (NumPy's to_numpy shares memory)."""
    return np.array(be.to_numpy(a), copy=True)


def offsets(flat: Any) -> dict[str, tuple[int, int]]:
    out, off = {}, 0
    for name, shape in zip(flat.names, flat.shapes):
        out[name] = (off, off + math.prod(shape))
        off += math.prod(shape)
    return out


def batch(rng: np.random.Generator, B: int, T: int, V: int, ragged: bool = True):
    tokens, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    mask = np.ones((B, T), dtype=bool)
    if ragged:
        mask[0, T // 2:] = False  # a padded tail
        mask[-1, :2] = False  # an unscored prompt
    return tokens, targets, mask


# -- 1. views into the flat buffers ------------------------------------------------------------------------------------
def test_flat_views_write_through_both_ways(backend_name):
    be = require_backend(backend_name, "float64")
    xp = be.xp
    shapes = [(2, 3), (4,), (1, 2, 2), ()]
    buf = xp.zeros((17,), dtype=be.dtype, device=be.device)  # two spare values at the end
    views = flat_views(buf, shapes)
    assert [tuple(v.shape) for v in views] == shapes
    views[0] += 1
    views[1][...] = be.asarray(np.arange(4.0) + 10)
    views[2][...] = be.asarray(np.full((1, 2, 2), 7.0))
    views[3][...] = be.asarray(-5.0)
    expect = np.concatenate([np.ones(6), np.arange(4.0) + 10, np.full(4, 7.0), [-5.0], [0.0, 0.0]])
    np.testing.assert_array_equal(host(be, buf), expect)
    buf[...] = be.asarray(np.arange(17.0) * 2)  # buffer writes are seen through the views
    got = [host(be, v) for v in views]
    np.testing.assert_array_equal(got[0], (np.arange(6.0) * 2).reshape(2, 3))
    np.testing.assert_array_equal(got[1], np.arange(6.0, 10.0) * 2)
    np.testing.assert_array_equal(got[2], (np.arange(10.0, 14.0) * 2).reshape(1, 2, 2))
    np.testing.assert_array_equal(got[3], 28.0)
    with pytest.raises(ValueError, match="too small"):
        flat_views(xp.zeros((5,), dtype=be.dtype, device=be.device), [(2, 2), (3,)])


@pytest.mark.parametrize("tied", [False, True])
def test_model_params_and_grads_are_views_of_the_flat_buffers(backend_name, tied):
    be = require_backend(backend_name, "float64")
    model = GPT(GPTConfig(**SMALL, tie_weights=tied), be, seed=0)
    flat = model.flat
    assert ("head.weight" in model.params) is not tied
    assert sorted(flat.names) == sorted(model.params) == sorted(model.grads)
    span = offsets(flat)
    assert max(e for _, e in span.values()) == flat.size
    # matrices first: [:n_decay] holds exactly the ndim >= 2 tensors
    assert flat.n_decay == sum(math.prod(p.shape) for p in model.params.values() if p.ndim >= 2)
    for name, p in model.params.items():
        assert (span[name][1] <= flat.n_decay) == (p.ndim >= 2), name
    for views, buffer in ((model.params, flat.param_buffer), (model.grads, flat.grad_buffer)):
        pattern = np.arange(flat.size, dtype=np.float64) + 0.5
        buffer[...] = be.asarray(pattern)  # buffer -> views
        for name, v in views.items():
            s, e = span[name]
            np.testing.assert_array_equal(host(be, v), pattern[s:e].reshape(tuple(v.shape)), err_msg=name)
        for k, (name, v) in enumerate(views.items()):  # views -> buffer; disjoint and covering
            v[...] = be.asarray(np.full(tuple(v.shape), -(k + 1.0)))
        expect = np.empty(flat.size)
        for k, name in enumerate(views):
            s, e = span[name]
            expect[s:e] = -(k + 1.0)
        np.testing.assert_array_equal(host(be, buffer), expect)
    # the layers' own dicts hold the same views: a write through a layer reaches the buffer
    for name, layer, key in model.named_slots():
        assert layer.params[key] is model.params[name] and layer.grads[key] is model.grads[name], name
        layer.grads[key][...] = 0.0
        layer.grads[key] += 3.0
        s, e = span[name]
        np.testing.assert_array_equal(host(be, flat.grad_buffer)[s:e], 3.0, err_msg=name)


def test_tied_weights_read_and_accumulate_through_the_buffer():
    be = require_backend("numpy", "float64")
    cfg = dict(SMALL, init_std=0.3)
    tied = GPT(GPTConfig(**cfg, tie_weights=True), be, seed=0)
    untied = GPT(GPTConfig(**cfg), be, seed=1)
    rng = np.random.default_rng(0)
    tied.flat.param_buffer[...] = be.asarray(rng.standard_normal(tied.flat.size) * 0.3)  # written via the buffer
    for name, p in untied.params.items():
        p[...] = tied.params["embed.token" if name == "head.weight" else name]
    tokens, targets, mask = batch(rng, 3, 6, SMALL["vocab_size"])
    np.testing.assert_allclose(host(be, tied.predict(tokens)), host(be, untied.predict(tokens)), rtol=1e-12)
    lt, lu = tied.loss_and_grads(tokens, targets, mask), untied.loss_and_grads(tokens, targets, mask)
    assert float(lt) == pytest.approx(float(lu), rel=1e-12)
    g = host(be, tied.flat.grad_buffer)
    s, e = offsets(tied.flat)["embed.token"]
    both = host(be, untied.grads["embed.token"]) + host(be, untied.grads["head.weight"])
    np.testing.assert_allclose(g[s:e].reshape(both.shape), both, rtol=1e-10, atol=1e-14)


# -- 2. explicit caches: inference between forward and backward, several batches in flight ----------------------------
def _grads_of(model, be, tokens, targets, mask) -> np.ndarray:
    model.zero_grads()
    logits = model.forward(tokens)
    _, dlogits = cross_entropy(logits, be.asarray(targets), be.asarray(mask))
    model.backward(dlogits)
    return host(be, model.flat.grad_buffer)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_between_forward_and_backward_changes_nothing(backend_name, use_cache):
    be = require_backend(backend_name, "float64")
    model = GPT(GPTConfig(**SMALL, init_std=0.3), be, seed=0)
    rng = np.random.default_rng(1)
    tokens, targets, mask = batch(rng, 3, 6, SMALL["vocab_size"])
    ref = _grads_of(model, be, tokens, targets, mask)
    assert np.abs(ref).max() > 0
    model.zero_grads()
    logits = model.forward(tokens)
    new = generate_ids(model, [1, 2, 3], max_new_tokens=3, use_cache=use_cache)
    assert len(new) == 3
    _, dlogits = cross_entropy(logits, be.asarray(targets), be.asarray(mask))
    model.backward(dlogits)
    np.testing.assert_allclose(host(be, model.flat.grad_buffer), ref, rtol=1e-12, atol=0)
    with pytest.raises(ConfigError, match="forward"):  # the cache was consumed
        model.backward(dlogits)


def test_backward_without_forward_raises(backend_name):
    be = require_backend(backend_name, "float64")
    model = GPT(GPTConfig(**SMALL), be, seed=0)
    d = be.asarray(np.zeros((1, 3, SMALL["vocab_size"])))
    with pytest.raises(ConfigError, match="forward"):
        model.backward(d)
    model.forward(np.zeros((1, 3), dtype=np.int64), return_cache=True)  # keeps nothing for a plain backward
    with pytest.raises(ConfigError, match="forward"):
        model.backward(d)


def test_two_caches_in_flight(backend_name):
    be = require_backend(backend_name, "float64")
    model = GPT(GPTConfig(**SMALL, init_std=0.3), be, seed=0)
    rng = np.random.default_rng(2)
    b1, b2 = batch(rng, 2, 6, SMALL["vocab_size"]), batch(rng, 3, 5, SMALL["vocab_size"])
    ref1, ref2 = _grads_of(model, be, *b1), _grads_of(model, be, *b2)
    logits1, c1 = model.forward(b1[0], return_cache=True)
    logits2, c2 = model.forward(b2[0], return_cache=True)
    d1 = cross_entropy(logits1, be.asarray(b1[1]), be.asarray(b1[2]))[1]
    d2 = cross_entropy(logits2, be.asarray(b2[1]), be.asarray(b2[2]))[1]
    model.zero_grads()
    model.backward(d1, c1)
    np.testing.assert_allclose(host(be, model.flat.grad_buffer), ref1, rtol=1e-12, atol=0)
    model.backward(d2, c2)  # accumulates
    np.testing.assert_allclose(host(be, model.flat.grad_buffer), ref1 + ref2, rtol=1e-10, atol=1e-15)


# -- 3. no device -> host transfer inside a step ------------------------------------------------------------------------
_STRICT_READS = ("__float__", "__bool__", "__int__", "__index__", "__complex__", "__array__", "__buffer__",
                 "__dlpack__")
_TORCH_READS = ("__float__", "__bool__", "__int__", "__index__", "__complex__", "__array__", "__dlpack__", "item",
                "tolist", "numpy")


@contextlib.contextmanager
def count_host_reads(be: Backend) -> Iterator[list[str]]:
    """Record every device -> host read while active: Backend.to_numpy, and the array's conversions where
    they can be patched (array-api-strict's Array, torch.Tensor)."""
    reads: list[str] = []
    depth = [0]
    patched: list[tuple[type, str, Any, bool]] = []  # (class, name, original, was in the class's own dict)

    def wrap(cls: type, name: str, label: str) -> None:
        own = name in cls.__dict__
        orig = cls.__dict__[name] if own else getattr(cls, name, None)
        if orig is None:
            return
        func = orig.__func__ if isinstance(orig, (classmethod, staticmethod)) else orig

        def counted(*a: Any, **k: Any) -> Any:
            if not depth[0]:
                reads.append(label)
            depth[0] += 1
            try:
                return func(*a, **k)
            finally:
                depth[0] -= 1

        patched.append((cls, name, orig, own))
        setattr(cls, name, counted)

    wrap(Backend, "to_numpy", "Backend.to_numpy")
    if be.name == "strict":
        from array_api_strict._array_object import Array

        for n in _STRICT_READS:
            if n in Array.__dict__:
                wrap(Array, n, f"Array.{n}")
    if be.name.startswith("torch"):
        import torch

        for n in _TORCH_READS:
            wrap(torch.Tensor, n, f"Tensor.{n}")
    try:
        yield reads
    finally:
        for cls, name, orig, own in reversed(patched):
            if own:
                setattr(cls, name, orig)
            else:
                delattr(cls, name)


def test_the_reader_counts_reads(backend_name):
    # The patching itself works: a deliberate read is seen (otherwise the zero below would prove nothing).
    be = require_backend(backend_name, "float64")
    x = be.xp.ones((3,), dtype=be.dtype, device=be.device)
    with count_host_reads(be) as reads:
        be.to_numpy(x)
    assert reads == ["Backend.to_numpy"]
    if be.name in ("strict", "torch"):
        with count_host_reads(be) as reads:
            float(be.xp.sum(x))
        assert len(reads) == 1


@pytest.mark.parametrize("masking", ["none", "all-true", "ragged", "nothing-counts"])
def test_train_step_reads_nothing_back(backend_name, masking):
    be = require_backend(backend_name, "float64")
    V = SMALL["vocab_size"]
    model = GPT(GPTConfig(**SMALL), be, seed=0)
    opt = Adam(model, lr=1e-3, weight_decay=0.01)
    step = TrainStep(model, opt, cuda_graphs="off" if be.name != "torch:cuda" else "auto")
    rng = np.random.default_rng(3)
    tokens, targets, mask = batch(rng, 3, 6, V)
    mask = {"none": None, "all-true": np.ones_like(mask), "ragged": mask,
            "nothing-counts": np.zeros_like(mask)}[masking]
    step(tokens, targets, mask, lr=1e-3)  # warm-up: first-call caches
    before = host(be, model.flat.param_buffer)
    with count_host_reads(be) as reads:
        loss = step(tokens, targets, mask, lr=2e-3)
        opt.step(lr=1e-3)  # the optimizer alone, too
    assert reads == [], f"{backend_name} {masking}: host reads {reads}"
    assert math.isfinite(float(loss))
    assert opt.t == 3
    assert not np.array_equal(host(be, model.flat.param_buffer), before)


# -- 4. Adam's device-side finite guard ---------------------------------------------------------------------------------
def _opt_state(be, model, opt) -> dict[str, np.ndarray]:
    return {"params": host(be, model.flat.param_buffer), "m": host(be, opt.m_buffer), "v": host(be, opt.v_buffer),
            "t": host(be, opt._t)}


def test_a_non_finite_gradient_changes_nothing(backend_name):
    be = require_backend(backend_name, "float64")
    model = GPT(GPTConfig(**SMALL), be, seed=0)
    opt = Adam(model, lr=1e-2, weight_decay=0.1)
    rng = np.random.default_rng(4)
    tokens, targets, mask = batch(rng, 2, 5, SMALL["vocab_size"])
    model.loss_and_grads(tokens, targets, mask)
    opt.step()  # call 1: a real step, so the moments are non-zero
    assert opt.t == 1 and float(opt.skipped) == 0 and float(opt.first_skipped) == -1
    before = _opt_state(be, model, opt)
    for k, bad in enumerate((float("nan"), float("inf")), start=2):  # calls 2 and 3 are skipped
        model.loss_and_grads(tokens, targets, mask)
        model.flat.grad_buffer[k] = be.asarray(bad)
        opt.step()
        after = _opt_state(be, model, opt)
        for key in before:
            np.testing.assert_array_equal(after[key], before[key], err_msg=f"{key} changed by a skipped step")
        assert opt.t == 1
        assert float(opt.skipped) == k - 1
        assert float(opt.first_skipped) == 2
        assert not math.isfinite(float(opt.last_grad_norm))
    model.loss_and_grads(tokens, targets, mask)  # call 4: finite again, a normal step
    opt.step()
    after = _opt_state(be, model, opt)
    assert opt.t == 2 and float(opt.skipped) == 2 and float(opt.first_skipped) == 2
    assert math.isfinite(float(opt.last_grad_norm))
    for key in ("params", "m", "v"):
        assert np.isfinite(after[key]).all() and not np.array_equal(after[key], before[key]), key
    # ... and the same as a run that never saw the bad steps
    ref_model = GPT(GPTConfig(**SMALL), be, seed=0)
    ref_opt = Adam(ref_model, lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        ref_model.loss_and_grads(tokens, targets, mask)
        ref_opt.step()
    np.testing.assert_allclose(after["params"], host(be, ref_model.flat.param_buffer), rtol=1e-13, atol=1e-15)


# -- 5. the Trainer reads lazily, and raises before anything is saved ---------------------------------------------------
@pytest.mark.parametrize("bad_call, epochs_before", [(3, 0), (7, 1)])
def test_trainer_raises_at_the_bad_step_before_saving(bad_call, epochs_before):
    be = require_backend("numpy", "float64")
    tok = WordTokenizer.from_texts(FACTS + CHATS)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY), be, seed=0)
    real = model.loss_and_grads_device
    calls = [0]

    def poisoned(*a: Any, **k: Any) -> Any:
        loss = real(*a, **k)
        calls[0] += 1
        if calls[0] == bad_call:
            model.flat.grad_buffer[0] = be.asarray(float("nan"))
        return loss

    model.loss_and_grads_device = poisoned
    saved: list[tuple] = []
    tr = Trainer(model, tok, FACTS, CHATS, Recipe(batch_size=1, pretrain_epochs=3, chat_epochs=1, warmup_steps=0),
                 progress=False, log_every=100,
                 on_epoch=lambda t: saved.append(("epoch", t.state.step)),
                 on_phase_end=lambda t, s: saved.append(("phase", t.state.step)))
    with pytest.raises(TrainingDivergedError) as info:
        tr.train()
    msg = str(info.value)
    assert f"step {bad_call} " in msg and "lr_pretrain" in msg and "not finite" in msg, msg
    assert saved == [("epoch", 5 * k) for k in range(1, epochs_before + 1)]  # 5 facts, batch 1: 5 steps an epoch
    assert float(tr.optimizer.skipped) >= 1


# -- 6. CUDA graph replay --------------------------------------------------------------------------------------------
def test_graph_modes_are_checked():
    be = require_backend("numpy", "float64")
    model = GPT(GPTConfig(**SMALL), be, seed=0)
    opt = Adam(model)
    with pytest.raises(BackendUnavailableError, match="torch:cuda"):
        TrainStep(model, opt, cuda_graphs="on")
    with pytest.raises(ConfigError, match="bogus"):
        TrainStep(model, opt, cuda_graphs="bogus")
    assert TrainStep(model, opt, cuda_graphs="auto").graphed is False
    with pytest.raises(ConfigError, match="another model"):
        TrainStep(GPT(GPTConfig(**SMALL), be, seed=0), opt)


def test_graph_replay_equals_the_eager_step():
    be = require_backend("torch:cuda", "float64")
    cfg = GPTConfig(vocab_size=29, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_seq_len=16)
    models = [GPT(cfg, be, seed=0) for _ in range(2)]
    steps = [TrainStep(m, Adam(m, lr=3e-3, weight_decay=0.01), cuda_graphs=mode, pad_multiple=8)
             for m, mode in zip(models, ("on", "off"))]
    assert steps[0].graphed and not steps[1].graphed
    rng = np.random.default_rng(5)
    batches = [batch(rng, 3, 7, 29), batch(rng, 2, 13, 29)]
    for i in range(5):
        tokens, targets, mask = batches[i % 2]
        losses = [float(s(tokens, targets, mask, lr=3e-3)) for s in steps]
        assert losses[0] == pytest.approx(losses[1], rel=1e-10, abs=1e-12), f"step {i + 1}"
    assert len(steps[0]._graphs.graphs) == 2  # one capture per padded shape
    p0, p1 = (host(be, m.flat.param_buffer) for m in models)
    np.testing.assert_allclose(p0, p1, rtol=1e-10, atol=1e-12)
    assert steps[0].optimizer.t == steps[1].optimizer.t == 5


# -- 7. host-side checks of the ids ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "strict"])
@pytest.mark.parametrize("via", ["loss_and_grads", "TrainStep"])
def test_bad_batches_are_refused_on_the_host(backend, via):
    be = require_backend(backend, "float64")
    V = SMALL["vocab_size"]
    model = GPT(GPTConfig(**SMALL), be, seed=0)
    opt = Adam(model)
    run = model.loss_and_grads if via == "loss_and_grads" else TrainStep(model, opt, cuda_graphs="off")
    rng = np.random.default_rng(6)
    tokens, targets, mask = batch(rng, 2, 5, V)
    cases = {
        "negative token": (np.where(np.arange(5) == 2, -1, tokens), targets, mask, r"tokens holds id -1"),
        "token == vocab": (np.where(np.arange(5) == 4, V, tokens), targets, mask, rf"tokens holds id {V}\b"),
        "float ids": (tokens.astype(np.float64), targets, mask, r"tokens must be integer"),
        "(0, 5) batch": (np.zeros((0, 5), np.int64), np.zeros((0, 5), np.int64), None, r"empty"),
        "(2, 0) batch": (np.zeros((2, 0), np.int64), np.zeros((2, 0), np.int64), None, r"empty"),
        "mask shape": (tokens, targets, mask[:, :4], r"mask has shape"),
        "mask dtype": (tokens, targets, mask.astype(np.int64), r"mask must be boolean"),
        "counted negative target": (tokens, np.where(mask, -3, targets), mask, r"targets holds id -3"),
        "counted target == vocab": (tokens, np.where(mask, V, targets), None, rf"targets holds id {V}\b"),
        "targets shape": (tokens, targets[:, :3], mask, r"targets has shape"),
    }
    params = host(be, model.flat.param_buffer)
    for what, (t, y, m, pattern) in cases.items():
        with pytest.raises(ConfigError, match=pattern):
            run(t, y, m)
        assert not np.isnan(params).any()
    np.testing.assert_array_equal(host(be, model.flat.param_buffer), params)  # nothing was stepped
    # targets that do not count may hold anything (padding)
    y = np.where(mask, targets, -7)
    y[0, -1] = V + 5
    assert not mask[0, -1]
    loss = run(tokens, y, mask)
    ref = GPT(GPTConfig(**SMALL), be, seed=0).loss_and_grads(tokens, np.where(mask, targets, 0), mask)
    assert float(loss) == pytest.approx(float(ref), rel=1e-12)


# -- 8. padding to a fixed shape changes nothing ----------------------------------------------------------------------
@pytest.mark.parametrize("masked", [True, False])
def test_padded_batch_equals_unpadded(masked):
    be = require_backend("numpy", "float64")
    cfg = GPTConfig(vocab_size=31, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_seq_len=12, init_std=0.3)
    model = GPT(cfg, be, seed=0)
    rng = np.random.default_rng(7)
    tokens, targets, mask = batch(rng, 3, 7, cfg.vocab_size)
    if not masked:
        mask = None
    else:
        targets = np.where(mask, targets, -1)  # padding targets: never read
    ref_loss = float(model.loss_and_grads(tokens, targets, mask))
    ref = {k: host(be, g) for k, g in model.grads.items()}
    padded = prepare_padded_batch(be, cfg, tokens, targets, mask, (4, 12))
    assert tuple(padded.tokens.shape) == (4, 12) and padded.rows is None
    loss = float(model.loss_and_grads_device(*padded))
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name, g in model.grads.items():
        got = host(be, g)
        scale = max(np.abs(ref[name]).max(), 1e-300)
        assert np.abs(got - ref[name]).max() <= 1e-12 * scale, name
    assert np.abs(ref["embed.position"]).max() > 0
    # the same through a TrainStep: a step on the padded layout equals the eager one
    m2 = GPT(cfg, be, seed=0)
    s2 = TrainStep(m2, Adam(m2, lr=1e-2), cuda_graphs="off")
    m3 = GPT(cfg, be, seed=0)
    o3 = Adam(m3, lr=1e-2)
    for _ in range(2):
        l2 = float(s2(tokens, targets, mask))
        l3 = float(m3.loss_and_grads_device(*prepare_padded_batch(be, cfg, tokens, targets, mask, (4, 12))))
        o3.step()
        assert l2 == pytest.approx(l3, rel=1e-12)
    np.testing.assert_allclose(host(be, m3.flat.param_buffer), host(be, m2.flat.param_buffer), rtol=1e-10,
                               atol=1e-13)


# -- 9. named records: a batch, Adam's coefficients, Adam's whole state -------------------------------------------------
def test_a_checked_batch_is_a_device_batch():
    be = require_backend("numpy", "float64")
    cfg = GPTConfig(**SMALL)
    tokens, targets, mask = batch(np.random.default_rng(8), 3, 6, cfg.vocab_size)
    whole = prepare_batch(be, cfg, tokens, targets)
    assert isinstance(whole, DeviceBatch) and whole.rows is None and whole.weights is None
    np.testing.assert_array_equal(be.to_numpy(whole.tokens), tokens)
    np.testing.assert_array_equal(be.to_numpy(whole.targets), targets.reshape(-1))
    counted = prepare_batch(be, cfg, tokens, targets, mask)
    rows = np.flatnonzero(mask)
    assert 0 < rows.size < mask.size
    np.testing.assert_array_equal(be.to_numpy(counted.rows), rows)
    np.testing.assert_array_equal(be.to_numpy(counted.targets), targets.reshape(-1)[rows])
    padded = prepare_padded_batch(be, cfg, tokens, targets, mask, (4, 7))
    assert isinstance(padded, DeviceBatch) and padded.rows is None
    assert tuple(padded.tokens.shape) == (4, 7) and tuple(padded.weights.shape) == (28,)
    assert float(np.sum(be.to_numpy(padded.weights))) == pytest.approx(1.0, rel=1e-15)


def test_begin_step_names_its_coefficients():
    be = require_backend("numpy", "float64")
    for decay in (0.0, 0.1):
        model = GPT(GPTConfig(**SMALL), be, seed=0)
        opt = Adam(model, lr=1e-2, weight_decay=decay, clip_norm=None)
        model.loss_and_grads(*batch(np.random.default_rng(9), 2, 5, SMALL["vocab_size"]))
        g = model.flat.grad_buffer
        c = opt.begin_step(be.xp.sqrt(g @ g))
        assert isinstance(c, AdamCoefficients)
        assert float(c.ok) == 1.0 and float(c.scale) == 1.0  # a finite norm, no clipping
        assert float(c.keep_m) == pytest.approx(0.9) and float(c.keep_v) == pytest.approx(0.999)
        assert float(c.step_size) == pytest.approx(1e-2 * math.sqrt(1 - 0.999) / (1 - 0.9), rel=1e-12)
        assert (c.keep_p is None) == (decay == 0.0)
        if decay:
            assert float(c.keep_p) == pytest.approx(1 - 1e-2 * decay, rel=1e-15)


_STATE_FIELDS = ("m", "v", "t", "calls", "lr", "skipped", "first_skipped", "last_grad_norm")


def test_adam_state_is_every_array_a_step_changes():
    be = require_backend("numpy", "float64")
    rng = np.random.default_rng(10)
    data = batch(rng, 2, 5, SMALL["vocab_size"])
    model = GPT(GPTConfig(**SMALL), be, seed=0)
    opt = Adam(model, lr=1e-2, weight_decay=0.1)
    state = opt.state
    assert isinstance(state, AdamState)
    arrays = state.arrays()
    assert len(arrays) == len(_STATE_FIELDS) and all(a is getattr(state, n) for a, n in zip(arrays, _STATE_FIELDS))
    # the names other code reads are the state's own arrays
    for old, new in (("m_buffer", "m"), ("v_buffer", "v"), ("_t", "t"), ("_calls", "calls"), ("_lr", "lr"),
                     ("skipped", "skipped"), ("first_skipped", "first_skipped"),
                     ("last_grad_norm", "last_grad_norm")):
        assert getattr(opt, old) is getattr(state, new), old
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.t = be.asarray(5.0)
    # A snapshot of the parameters and the state, restored after two steps, gives back exactly the run before
    # them (what a CUDA graph's warm-up relies on): nothing a step changes is missing from the state.
    saved = [host(be, a) for a in (model.flat.param_buffer, *arrays)]
    for lr in (3e-2, 5e-2):
        model.loss_and_grads(*data)
        opt.step(lr=lr)
    assert [id(a) for a in opt.state.arrays()] == [id(a) for a in arrays]  # updated in place, never rebound
    changed = [not np.array_equal(host(be, a), b) for a, b in zip((model.flat.param_buffer, *arrays), saved)]
    assert changed == [True] * 6 + [False, False, True]  # all but skipped and first_skipped (none was skipped)
    for a, b in zip((model.flat.param_buffer, *arrays), saved):
        a[...] = be.asarray(b)
    model.loss_and_grads(*data)
    opt.step()  # at the restored learning rate
    ref = GPT(GPTConfig(**SMALL), be, seed=0)
    ref_opt = Adam(ref, lr=1e-2, weight_decay=0.1)
    ref.loss_and_grads(*data)
    ref_opt.step()
    for a, b in zip((model.flat.param_buffer, *opt.state.arrays()), (ref.flat.param_buffer, *ref_opt.state.arrays())):
        np.testing.assert_array_equal(host(be, a), host(be, b))


def _skipping_run(be, data):
    # three calls: a step, a skipped step (a NaN gradient), a step -> t 2, calls 3, skipped 1
    model = GPT(GPTConfig(**SMALL), be, seed=0)
    opt = Adam(model, lr=1e-2, weight_decay=0.1)
    for call in range(3):
        model.loss_and_grads(*data)
        if call == 1:
            model.flat.grad_buffer[0] = be.asarray(float("nan"))
        opt.step()
    return model, opt


def test_adam_counters_are_read_in_one_transfer(backend_name):
    be = require_backend(backend_name, "float64")
    _, opt = _skipping_run(be, batch(np.random.default_rng(11), 2, 5, SMALL["vocab_size"]))
    with count_host_reads(be) as reads:
        counters = opt.counters()
    assert reads == ["Backend.to_numpy"]
    assert counters == {"t": 2, "calls": 3, "skipped": 1}
    assert all(type(v) is int for v in counters.values())


def test_adam_load_counters_writes_in_place_and_resumes_exactly(backend_name):
    be = require_backend(backend_name, "float64")
    data = batch(np.random.default_rng(12), 2, 5, SMALL["vocab_size"])
    model, opt = _skipping_run(be, data)
    assert float(opt.first_skipped) == 2
    # a fresh optimizer given the moments and the counters continues the run exactly
    twin = GPT(GPTConfig(**SMALL), be, seed=0)
    twin.flat.param_buffer[...] = be.asarray(host(be, model.flat.param_buffer))
    twin_opt = Adam(twin, lr=1e-2, weight_decay=0.1)
    before = [id(a) for a in twin_opt.state.arrays()]
    twin_opt.load_state_dict(opt.state_dict())
    twin_opt.load_counters(opt.counters())
    assert [id(a) for a in twin_opt.state.arrays()] == before  # written in place
    assert twin_opt.counters() == {"t": 2, "calls": 3, "skipped": 1} and twin_opt.t == 2
    assert float(twin_opt.first_skipped) == -1 and float(twin_opt.last_grad_norm) == 0
    for m, o in ((model, opt), (twin, twin_opt)):
        m.loss_and_grads(*data)
        o.step()
    np.testing.assert_array_equal(host(be, twin.flat.param_buffer), host(be, model.flat.param_buffer))
    assert twin_opt.counters() == opt.counters() == {"t": 3, "calls": 4, "skipped": 1}
    # loaded over a run with a record: the record of the last step starts afresh
    opt.load_counters({"t": 7, "calls": 9, "skipped": 2})
    assert opt.counters() == {"t": 7, "calls": 9, "skipped": 2}
    assert float(opt.first_skipped) == -1 and float(opt.last_grad_norm) == 0
    for bad, pattern in (({"t": 1, "calls": 1}, "skipped"), ({"t": -1, "calls": 0, "skipped": 0}, "t must"),
                         ({"t": 1.5, "calls": 2, "skipped": 0}, "t must"),
                         ({"t": 1, "calls": True, "skipped": 0}, "calls must")):
        with pytest.raises(ConfigError, match=pattern):
            opt.load_counters(bad)
    assert opt.counters() == {"t": 7, "calls": 9, "skipped": 2}  # a refused load writes nothing
