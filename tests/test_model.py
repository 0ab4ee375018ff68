"""The full model, the loss and the optimizer: gradient checks in float64, masking, causality, Adam."""

import math

import numpy as np
import pytest

import llm
from llm import GPT, Adam, GPTConfig, cross_entropy
from llm.errors import ConfigError
from llm.nn.layers.block import BlockCache
from llm.nn.layers.embedding import EmbeddingCache
from llm.nn.model import GPTCache, HeadCache, TrunkCache
from tests.conftest import require_backend
from tests.gradcheck import check_array

TOL = 1e-6
SMALL = dict(vocab_size=13, d_model=8, n_heads=2, n_layers=2, d_ff=16, max_seq_len=7)


def _batch(rng, B=3, T=6, V=13):
    tokens = rng.integers(0, V, (B, T))
    targets = rng.integers(0, V, (B, T))
    mask = np.ones((B, T), dtype=bool)
    mask[0, 4:] = False  # padded tails
    mask[2, 2:] = False
    return tokens, targets, mask


@pytest.mark.parametrize("variant", [{}, {"tie_weights": True}, {"norm": "post", "activation": "gelu"},
                                     {"pos_encoding": "sinusoidal"}, {"pos_encoding": "rope"},
                                     {"pos_encoding": "rope", "tie_weights": True, "activation": "gelu"}])
def test_model_loss_gradients_match_finite_differences(backend_name, variant):
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(0)
    model = GPT(GPTConfig(**SMALL, init_std=0.3, **variant), be, seed=1)
    for name, p in model.params.items():  # non-trivial norm parameters so their gradients are tested
        if "ln" in name:
            p[...] = be.asarray(rng.standard_normal(tuple(p.shape)) * 0.3 + (1.0 if name.endswith("gamma") else 0))
    tokens, targets, mask = _batch(rng)

    def loss() -> float:
        logits = model.forward(tokens)
        return float(cross_entropy(logits, be.asarray(targets), be.asarray(mask))[0])

    model.loss_and_grads(tokens, targets, mask)
    grads = {k: be.asarray(be.to_numpy(g)) for k, g in model.grads.items()}  # snapshot: loss() reruns forward
    errors = {name: check_array(be, loss, p, grads[name], rng, n=8) for name, p in model.params.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, f"{backend_name} {variant}: worst {worst} = {errors[worst]:.2e}"
    assert set(model.grads) == set(model.params)


def test_loss_gradient_wrt_logits(backend_name):
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(5)
    logits = be.asarray(rng.standard_normal((2, 4, 9)) * 3)
    targets, mask = be.asarray(rng.integers(0, 9, (2, 4))), be.asarray(rng.random((2, 4)) > 0.3)
    _, dlogits = cross_entropy(logits, targets, mask)
    err = check_array(be, lambda: float(cross_entropy(logits, targets, mask)[0]), logits, dlogits, rng, n=30)
    assert err <= TOL


def test_cross_entropy_matches_reference_and_is_stable(backend_name):
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 5)) * 2
    t = rng.integers(0, 5, (2, 3))
    m = np.array([[True, True, False], [True, False, False]])
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    ref = -np.take_along_axis(logp, t[..., None], -1)[..., 0][m].mean()
    loss, _ = cross_entropy(be.asarray(x), be.asarray(t), be.asarray(m))
    assert float(loss) == pytest.approx(ref, rel=1e-12)
    ref_all = -np.take_along_axis(logp, t[..., None], -1).mean()
    assert float(cross_entropy(be.asarray(x), be.asarray(t))[0]) == pytest.approx(ref_all, rel=1e-12)
    # a shift of 1e4 would overflow exp() without the max subtraction; the loss must not change
    shifted, _ = cross_entropy(be.asarray(x + 1e4), be.asarray(t), be.asarray(m))
    assert float(shifted) == pytest.approx(ref, rel=1e-9)
    # an all-False mask: nothing to learn from, loss and gradient are zero (not NaN)
    empty, d = cross_entropy(be.asarray(x), be.asarray(t), be.asarray(np.zeros((2, 3), bool)))
    assert float(empty) == 0.0 and np.all(be.to_numpy(d) == 0)


def test_future_tokens_never_change_earlier_logits(backend_name):
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(7)
    model = GPT(GPTConfig(**SMALL, init_std=0.3), be, seed=0)
    tokens = rng.integers(0, 13, (2, 7))
    a = be.to_numpy(model.forward(tokens))
    tokens[:, 4:] = rng.integers(0, 13, (2, 3))
    b = be.to_numpy(model.forward(tokens))
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-12, atol=1e-12)


def test_padding_never_changes_loss_or_gradients_of_real_tokens(backend_name):
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(8)
    model = GPT(GPTConfig(**SMALL, init_std=0.3), be, seed=0)
    tokens, targets, mask = _batch(rng)
    l1 = float(model.loss_and_grads(tokens, targets, mask))
    g1 = {k: be.to_numpy(g) for k, g in model.grads.items()}
    tokens[~mask] = rng.integers(0, 13, int((~mask).sum()))  # new padding tokens and targets
    targets[~mask] = rng.integers(0, 13, int((~mask).sum()))
    l2 = float(model.loss_and_grads(tokens, targets, mask))
    assert l1 == pytest.approx(l2, rel=1e-13)
    for k, g in model.grads.items():
        np.testing.assert_allclose(be.to_numpy(g), g1[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_loss_and_grads_zeroes_before_filling():
    be = require_backend("numpy", "float64")
    rng = np.random.default_rng(9)
    model = GPT(GPTConfig(**SMALL), be, seed=0)
    tokens, targets, mask = _batch(rng)
    model.loss_and_grads(tokens, targets, mask)
    first = {k: g.copy() for k, g in model.grads.items()}
    model.loss_and_grads(tokens, targets, mask)
    for k, g in model.grads.items():
        np.testing.assert_array_equal(g, first[k])


def test_public_api_shapes_and_parameter_count():
    be = require_backend("numpy")
    cfg = GPTConfig(vocab_size=50)
    model = GPT(cfg, be, seed=0)
    C, F, V, T, L = 128, 256, 50, 80, 3
    block = 2 * 2 * C + (C * 3 * C) + (C * C + C) + (C * F + F) + (F * C + C)
    expected = V * C + T * C + L * block + 2 * C + (V * C + V)
    assert model.num_parameters() == expected
    assert GPT(GPTConfig(vocab_size=50, tie_weights=True), be).num_parameters() == expected - V * C
    logits = model.forward(np.zeros((2, 10), dtype=np.int64))
    assert logits.shape == (2, 10, V)
    loss = model.loss_and_grads(np.zeros((2, 10), int), np.ones((2, 10), int))
    assert tuple(loss.shape) == () and float(loss) == pytest.approx(math.log(V), rel=0.05)  # a 0-d device array
    with pytest.raises(ConfigError, match="exceeds max_seq_len"):
        model.forward(np.zeros((1, 81), dtype=np.int64))


def test_config_validation():
    with pytest.raises(ConfigError, match="not divisible"):
        GPTConfig(vocab_size=10, d_model=10, n_heads=3)
    for bad in ({"d_model": 0}, {"max_seq_len": -1}, {"vocab_size": 0}, {"n_layers": 1.5}):
        with pytest.raises(ConfigError):
            GPTConfig(**{"vocab_size": 10, **bad})
    assert GPTConfig.from_dict(GPTConfig(vocab_size=10).to_dict()) == GPTConfig(vocab_size=10)


def _reference_adam(p, grads, steps, lr, clip, wd=0.0, b1=0.9, b2=0.999, eps=1e-8):
    p = {k: v.copy() for k, v in p.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t in range(1, steps + 1):
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
        scale = min(1.0, clip / (norm + 1e-6))
        for k in p:
            g = grads[k] * scale
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            if wd and p[k].ndim >= 2:
                p[k] = p[k] - lr * wd * p[k]
            p[k] = p[k] - lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
    return p


def _flat(be, host):
    from llm.nn.params import FlatParameters

    return FlatParameters(be, [(k, be.asarray(v.copy())) for k, v in host.items()])


@pytest.mark.parametrize("clip,wd", [(5.0, 0.0), (0.5, 0.0), (5.0, 0.1)])
def test_adam_matches_reference(backend_name, clip, wd):
    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(10)
    host = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3), "w2": rng.standard_normal((2, 5))}
    grads = {"w": rng.standard_normal((4, 3)) * 3, "b": rng.standard_normal(3), "w2": rng.standard_normal((2, 5))}
    flat = _flat(be, host)
    params = flat.params
    opt = Adam(flat, lr=0.01, clip_norm=clip, weight_decay=wd)
    for k, g in grads.items():
        flat.grads[k][...] = be.asarray(g)
    for _ in range(5):
        opt.step()
    ref = _reference_adam(host, grads, 5, 0.01, clip, wd)
    for k in host:
        np.testing.assert_allclose(be.to_numpy(params[k]), ref[k], rtol=1e-12, atol=1e-14)
    norm = math.sqrt(sum((g ** 2).sum() for g in grads.values()))
    assert float(opt.last_grad_norm) == pytest.approx(norm, rel=1e-12)


def test_adam_rejects_bad_settings():
    be = require_backend("numpy")
    p = _flat(be, {"w": np.zeros(3)})
    for kwargs in ({"lr": 0}, {"lr": -1e-3}, {"lr": float("nan")}, {"clip_norm": 0}, {"weight_decay": -1},
                   {"eps": -1}, {"eps": float("inf")}):
        with pytest.raises(ConfigError):
            Adam(p, **kwargs)
    opt = Adam(p)
    for lr in (float("nan"), -1.0, 0.0, float("inf"), "fast"):
        with pytest.raises(ConfigError):
            opt.step(lr=lr)
    with pytest.raises(ConfigError, match="flat buffer"):
        Adam({"w": be.asarray(np.zeros(3))})


def test_training_steps_reduce_the_loss():
    be = require_backend("numpy")
    rng = np.random.default_rng(11)
    model = GPT(GPTConfig(**SMALL), be, seed=0)
    opt = Adam(model, lr=1e-2)
    tokens, targets, mask = _batch(rng)
    first = float(model.loss_and_grads(tokens, targets, mask))
    for _ in range(60):
        loss = model.loss_and_grads(tokens, targets, mask)
        opt.step(model.grads)  # the model's own gradients are accepted (the flat buffer is what is used)
    assert float(loss) < 0.5 * first
    assert llm.GPT is GPT


@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_in_blocks_equals_one_block(backend_name, weighted, monkeypatch):
    # A large (N, V) loss runs block by block to keep its peak memory down; the result must not change.
    import llm.nn.loss as loss_module

    be = require_backend(backend_name, "float64")
    rng = np.random.default_rng(12)
    z = rng.standard_normal((23, 7)) * 3
    t = rng.integers(0, 7, 23)
    w = None
    if weighted:
        w = rng.random(23)
        w /= w.sum()
    whole = [be.to_numpy(a) for a in loss_module.softmax_cross_entropy(be.asarray(z.copy()), be.asarray(t),
                                                                       None if w is None else be.asarray(w))]
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 7 * 5)  # blocks of 5 rows, the last one of 3
    blocks = [be.to_numpy(a) for a in loss_module.softmax_cross_entropy(be.asarray(z.copy()), be.asarray(t),
                                                                        None if w is None else be.asarray(w))]
    assert float(blocks[0]) == pytest.approx(float(whole[0]), rel=1e-13)
    np.testing.assert_allclose(blocks[1], whole[1], rtol=1e-13, atol=1e-16)


def test_config_parameter_count_matches_the_model_and_absurd_sizes_are_out_of_memory():
    be = require_backend("numpy")
    for variant in ({}, {"tie_weights": True}, {"norm": "post"}, {"pos_encoding": "sinusoidal"},
                    {"pos_encoding": "rope", "tie_weights": True}):
        cfg = GPTConfig(**{**SMALL, **variant})
        assert cfg.num_parameters() == GPT(cfg, be).num_parameters(), variant
    # Issue 11 item 11: a config.json with d_model 10**20 gave a NumPy ValueError traceback while the weights were
    # drawn; it is out of memory like any other model too large to allocate (the CLIs say so in one line).
    with pytest.raises(MemoryError, match="cannot allocate"):
        GPT(GPTConfig(vocab_size=10, d_model=10**20, n_heads=1), be)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_the_model_cache_is_named_and_backward_takes_it(norm):
    be = require_backend("numpy", "float64")
    model = GPT(GPTConfig(**SMALL, norm=norm), be, seed=0)
    tokens = np.random.default_rng(15).integers(0, 13, (2, 5))
    logits, cache = model.forward(tokens, return_cache=True)
    assert isinstance(cache, GPTCache) and isinstance(cache.trunk, TrunkCache) and isinstance(cache.head, HeadCache)
    assert isinstance(cache.trunk.embed, EmbeddingCache)
    assert len(cache.trunk.blocks) == SMALL["n_layers"] and all(isinstance(b, BlockCache) for b in cache.trunk.blocks)
    assert (cache.head.ln_f is None) == (norm == "post")
    # attention_maps reads each block's probabilities from this same cache
    maps = model.attention_maps(tokens[:1])
    _, one = model.forward(tokens[:1], return_cache=True)
    for m, block in zip(maps, one.trunk.blocks):
        np.testing.assert_array_equal(m, be.to_numpy(block.attn.probs)[0])
    model.zero_grads()
    model.backward(np.ones(tuple(logits.shape)), cache)
    assert np.abs(be.to_numpy(model.flat.grad_buffer)).max() > 0
