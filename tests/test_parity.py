"""Every backend computes the same numbers as NumPy: forward, every gradient, and 20 Adam steps.

Run the whole suite on a GPU machine with: ARRAYGPT_REQUIRE_BACKENDS=cupy python -m pytest tests/test_parity.py
"""

import numpy as np
import pytest

from llm import GPT, Adam, GPTConfig
from tests.conftest import require_backend

RTOL = {"float32": 1e-4, "float64": 1e-10}
CFG = dict(vocab_size=61, max_seq_len=16)  # reference width/depth (d128, h8, L3, ff256), a small vocabulary


def _data(seed=0, B=4, T=12):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 61, (B, T))
    targets = np.concatenate([tokens[:, 1:], rng.integers(0, 61, (B, 1))], axis=1)
    mask = np.ones((B, T), bool)
    mask[1, 9:] = False
    mask[3, 5:] = False
    return tokens, targets, mask


def assert_close(actual, expected, rtol, what):
    # rtol relative to each array's scale, so entries that cross zero are judged against the array's size
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", [{}, {"tie_weights": True, "activation": "gelu"}, {"pos_encoding": "sinusoidal"},
                                     {"pos_encoding": "rope"}])
def test_forward_and_gradients_match_numpy(other_backend_name, dtype, variant):
    ref_be, be = require_backend("numpy", dtype), require_backend(other_backend_name, dtype)
    cfg = GPTConfig(**CFG, **variant)
    ref, other = GPT(cfg, ref_be, seed=3), GPT(cfg, be, seed=3)
    for name in ref.params:
        np.testing.assert_array_equal(be.to_numpy(other.params[name]), ref.params[name], err_msg=name)
    tokens, targets, mask = _data()
    assert_close(be.to_numpy(other.forward(tokens)), ref.forward(tokens), RTOL[dtype], "logits")
    l_ref = float(ref.loss_and_grads(tokens, targets, mask))
    l_other = float(other.loss_and_grads(tokens, targets, mask))
    assert l_other == pytest.approx(l_ref, rel=RTOL[dtype])
    for name, g in ref.grads.items():
        assert_close(be.to_numpy(other.grads[name]), g, RTOL[dtype], f"grad {name}")


# float32: the seed's pre-training lr. Parameters are compared tensor by tensor in norm (||a - b|| / ||b||): Adam
# divides each entry's gradient by its own running RMS, so an entry whose gradient cancels down to float32 rounding
# noise (or whose ReLU flips between two BLAS summation orders) moves by ~lr in a direction set by that noise, on a
# handful of entries. float64 shows the math itself is identical: every entry within 1e-10 at a 6x higher lr.
@pytest.mark.parametrize("dtype,lr", [("float32", 5e-4), ("float64", 3e-3)])
def test_twenty_adam_steps_match_numpy(other_backend_name, dtype, lr):
    ref_be, be = require_backend("numpy", dtype), require_backend(other_backend_name, dtype)
    cfg = GPTConfig(**CFG)
    models = {"numpy": (ref_be, GPT(cfg, ref_be, seed=5)), "other": (be, GPT(cfg, be, seed=5))}
    losses = {k: [] for k in models}
    for key, (b, model) in models.items():
        opt = Adam(model, lr=lr, clip_norm=1.0, weight_decay=0.01)  # clip active: norms are > 1 here
        for step in range(20):
            tokens, targets, mask = _data(seed=step % 2)  # two batches, alternating: the loss must fall
            losses[key].append(float(model.loss_and_grads(tokens, targets, mask)))
            opt.step()
    np.testing.assert_allclose(losses["other"], losses["numpy"], rtol=RTOL[dtype])
    assert losses["numpy"][-2] < 0.9 * losses["numpy"][0]  # the steps did something
    ref_params = models["numpy"][1].params
    for name, p in models["other"][1].params.items():
        got, want = be.to_numpy(p), ref_params[name]
        if dtype == "float64":
            assert_close(got, want, RTOL[dtype], f"param {name} after 20 steps")
        else:
            err = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)
            assert err <= RTOL[dtype], f"param {name} after 20 steps: relative error {err:.2e}"


@pytest.mark.parametrize("dtype,lr", [("float32", 5e-4), ("float64", 3e-3)])  # as above, and for the same reason
def test_train_step_matches_numpy(other_backend_name, dtype, lr):
    # The whole step (captured as a CUDA graph where supported, with padded shapes) against NumPy's plain step.
    ref_be, be = require_backend("numpy", dtype), require_backend(other_backend_name, dtype)
    from llm import TrainStep

    cfg = GPTConfig(**CFG)
    runs = {}
    for key, b in (("numpy", ref_be), ("other", be)):
        model = GPT(cfg, b, seed=6)
        step = TrainStep(model, Adam(model, lr=lr, clip_norm=1.0))
        losses = [float(step(*_data(seed=i % 2, T=10 + i % 3))) for i in range(6)]  # three lengths
        runs[key] = (b, model, losses)
    np.testing.assert_allclose(runs["other"][2], runs["numpy"][2], rtol=RTOL[dtype])
    for name, p in runs["other"][1].params.items():
        want = runs["numpy"][1].params[name]
        err = np.linalg.norm(be.to_numpy(p) - want) / max(np.linalg.norm(want), 1e-30)
        assert err <= RTOL[dtype], f"param {name} after 6 steps: relative error {err:.2e}"
