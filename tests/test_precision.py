"""Mixed precision (issue 18, part 3): fp16 / bf16 against float32, fp16's dynamic loss scale, its checkpoint, the
errors for a precision a backend lacks, and the --precision flag.

Tolerances, measured (seeds 0-2, the model below, 5 Adam steps at lr 1e-3; see the README's "Mixed precision"):
fp16 loss within 8e-5 of float32 and parameter update within 3.6% (relative L2), bf16 within 4.5e-4 and 6.6%.
The tests allow about 5x that: fp16 5e-4 and 0.1, bf16 3e-3 and 0.25.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backends import get_backend, has_dtype, low_precision_dtype
from llm import GPT, Adam, GPTConfig, TrainStep
from llm.checkpoint import load_checkpoint, restore_trainer, save_checkpoint
from llm.errors import ConfigError
from llm.training import Trainer
from llm.training.loop import build_step
from llm.training.precision import GROWTH_INTERVAL, MixedPrecision
from tests.conftest import require_backend
from tests.test_checkpoint import CHAT, PRETRAIN, RECIPE, TOK

CFG = GPTConfig(vocab_size=40, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_seq_len=16)
TOL = {"fp16": (5e-4, 0.1), "bf16": (3e-3, 0.25)}  # (loss, relative parameter update)
ROOT = Path(__file__).resolve().parent.parent


def _batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    toks = np.random.default_rng(seed).integers(0, CFG.vocab_size, (4, 16))
    return toks, np.roll(toks, -1, axis=1)


def _run(be, precision, seed: int, steps: int = 5) -> tuple[np.ndarray, np.ndarray]:
    # -> the losses of `steps` steps and the parameters' total update
    model = GPT(CFG, be, seed=seed)
    start = be.to_numpy(model.flat.param_buffer).copy()
    step = TrainStep(model, Adam(model, lr=1e-3), precision=precision)
    toks, targets = _batch(seed)
    losses = np.array([float(step(toks, targets)) for _ in range(steps)])
    return losses, be.to_numpy(model.flat.param_buffer) - start


@pytest.mark.parametrize("backend,precision", [("numpy", "fp16"), ("torch", "fp16"), ("torch", "bf16")])
@pytest.mark.parametrize("seed", [0, 1])
def test_low_precision_trains_like_float32(backend, precision, seed):
    be = require_backend(backend)
    ref_loss, ref_update = _run(be, "fp32", seed)
    loss, update = _run(be, precision, seed)
    loss_tol, update_tol = TOL[precision]
    assert np.abs(loss - ref_loss).max() < loss_tol
    assert np.linalg.norm(update - ref_update) / np.linalg.norm(ref_update) < update_tol
    assert not np.array_equal(loss, ref_loss)  # it did compute in the low precision
    assert loss[-1] < loss[0]


def test_fp32_is_the_plain_step():
    be = require_backend("numpy")
    explicit = _run(be, "fp32", 0)
    model = GPT(CFG, be, seed=0)
    start = np.array(model.flat.param_buffer, copy=True)
    step = TrainStep(model, Adam(model, lr=1e-3))  # no precision given
    toks, targets = _batch(0)
    losses = np.array([float(step(toks, targets)) for _ in range(5)])
    assert step.precision == "fp32" and step.loss_scale is None
    assert np.array_equal(losses, explicit[0]) and np.array_equal(model.flat.param_buffer - start, explicit[1])


def _fp16_step(growth_interval: int = GROWTH_INTERVAL):
    be = require_backend("numpy")
    model = GPT(CFG, be, seed=0)
    opt = Adam(model, lr=1e-3)
    step = TrainStep(model, opt, precision=MixedPrecision(model, "fp16", growth_interval=growth_interval))
    return model, opt, step


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0 in the skipped Adam step
def test_an_overflow_skips_the_step_and_halves_the_scale():
    model, opt, step = _fp16_step()
    toks, targets = _batch(0)
    step(toks, targets)  # one clean step first: moments are non-zero
    before = [np.array(b, copy=True) for b in (model.flat.param_buffer, opt.state.m, opt.state.v)]
    real = model.loss_and_grads_device

    def poisoned(*args, **kwargs):  # an inf in the gradients, as an fp16 overflow leaves it
        loss = real(*args, **kwargs)
        model.flat.grad_buffer[3] = np.inf
        return loss
    model.loss_and_grads_device = poisoned
    loss = step(toks, targets)
    assert np.isfinite(float(loss))
    for saved, now in zip(before, (model.flat.param_buffer, opt.state.m, opt.state.v)):
        assert np.array_equal(saved, now)
    assert opt.counters() == {"t": 1, "calls": 2, "skipped": 1}  # Adam's t counts the steps taken
    assert float(opt.first_skipped) == -1.0  # an overflow is not the divergence the training loop reports
    assert step.loss_scale.state_dict() == {"scale": 2.0 ** 15, "good_steps": 0, "overflows": 1,
                                            "growth_interval": GROWTH_INTERVAL}
    model.loss_and_grads_device = real
    step(toks, targets)
    assert opt.counters()["t"] == 2 and step.loss_scale.state_dict()["good_steps"] == 1


def test_the_scale_doubles_after_n_clean_steps():
    model, opt, step = _fp16_step(growth_interval=3)
    toks, targets = _batch(1)
    scales = []
    for _ in range(7):
        step(toks, targets)
        scales.append(step.loss_scale.state_dict()["scale"])
    s = 2.0 ** 16
    assert scales == [s, s, 2 * s, 2 * s, 2 * s, 4 * s, 4 * s]
    assert opt.counters() == {"t": 7, "calls": 7, "skipped": 0}


def test_bf16_has_no_loss_scale():
    be = require_backend("torch")
    model = GPT(CFG, be, seed=0)
    step = TrainStep(model, Adam(model), precision="bf16")
    assert step.loss_scale is None and step.precision == "bf16"


def test_a_checkpoint_keeps_the_loss_scale(tmp_path):
    be = require_backend("numpy")
    model = GPT(GPTConfig(**{**vars(CFG), "vocab_size": TOK.vocab_size, "max_seq_len": 40}), be, seed=1)
    step = build_step(model, RECIPE.adam(model), workers=1, precision="fp16")
    trainer = Trainer(model, TOK, PRETRAIN, CHAT, RECIPE, seed=0, progress=False, step=step)
    trainer.train()
    step.loss_scale.load_state_dict({"scale": 1024.0, "good_steps": 17, "overflows": 3})
    save_checkpoint(tmp_path / "ck", model, TOK, trainer)
    saved = json.loads((tmp_path / "ck" / "training.json").read_text())["loss_scale"]
    assert saved == {"scale": 1024.0, "good_steps": 17, "overflows": 3, "growth_interval": GROWTH_INTERVAL}
    ck = load_checkpoint(tmp_path / "ck", be)
    resumed = restore_trainer(ck, PRETRAIN, CHAT, progress=False,
                              step=build_step(ck.model, RECIPE.adam(ck.model), workers=1, precision="fp16"))
    assert resumed.step_fn.loss_scale.state_dict()["scale"] == 1024.0
    assert resumed.step_fn.loss_scale.state_dict()["good_steps"] == 17
    plain = restore_trainer(load_checkpoint(tmp_path / "ck", be), PRETRAIN, CHAT, progress=False)  # fp32 resumes
    assert plain.step_fn.loss_scale is None


@pytest.mark.parametrize("backend,precision,names", [
    ("strict", "fp16", "numpy, cupy, torch, torch:cuda"),
    ("strict", "bf16", "torch, torch:cuda"),
    ("numpy", "bf16", "torch, torch:cuda"),
])
def test_a_backend_without_the_dtype_says_which_have_it(backend, precision, names):
    be = require_backend(backend)
    model = GPT(CFG, be, seed=0)
    with pytest.raises(ConfigError) as info:
        TrainStep(model, Adam(model), precision=precision)
    assert names in str(info.value) and "\n" not in str(info.value) and info.value.param == "precision"


def test_the_dtype_helpers():
    assert not has_dtype(require_backend("strict").xp, "float16")  # the standard has no float16
    assert has_dtype(get_backend("numpy").xp, "float16") and not has_dtype(get_backend("numpy").xp, "bfloat16")
    assert low_precision_dtype(get_backend("numpy"), "float16") == np.float16
    with pytest.raises(ConfigError, match="float16 or bfloat16"):
        low_precision_dtype(get_backend("numpy"), "float8")


@pytest.mark.parametrize("kwargs,words", [
    ({"precision": "half"}, "fp32, fp16, bf16"),
    ({"precision": "fp16", "workers": 2}, "one worker"),
])
def test_bad_settings_are_config_errors(kwargs, words):
    be = require_backend("numpy")
    model = GPT(CFG, be, seed=0)
    with pytest.raises(ConfigError, match=words):
        TrainStep(model, Adam(model), **kwargs)


def test_float64_masters_are_refused():
    be = require_backend("numpy", "float64")
    model = GPT(CFG, be, seed=0)
    with pytest.raises(ConfigError, match="float32"):
        TrainStep(model, Adam(model), precision="fp16")


def _text_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    cmd = [sys.executable, "-m", "llm", "text", "--text", str(text), "--max-seq-len", "16", "--d-model", "16",
           "--n-heads", "2", "--n-layers", "1", "--d-ff", "32", "--batch-size", "4", "--steps", "6",
           "--sample-chars", "0", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, encoding="utf-8")


def test_the_precision_flag(tmp_path):
    ok = _text_cli(tmp_path, "--precision", "fp16")
    assert ok.returncode == 0, ok.stderr
    bad = _text_cli(tmp_path, "--precision", "bf16")  # --device cpu: NumPy has no bfloat16
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "bfloat16" in bad.stderr and "torch" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["train", "text"])
def test_both_training_commands_have_the_flag(command):
    out = subprocess.run([sys.executable, "-m", "llm", command, "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, encoding="utf-8")
    assert out.returncode == 0 and "--precision {fp32,fp16,bf16}" in out.stdout


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_composes_with_micro_batches_and_recompute(precision):
    # Every slice runs on the low-precision weights and the loss scale moves once per step, not once per slice;
    # recomputation repeats the same low-precision operations, so it changes nothing at all.
    be = require_backend("torch")
    toks, targets = _batch(0)
    mask = np.ones(toks.shape, dtype=bool)
    mask[3, 5:] = False

    def run(**kw):
        model = GPT(CFG, be, seed=0)
        step = TrainStep(model, Adam(model, lr=1e-3), precision=precision, **kw)
        losses = [float(step(toks, targets, mask)) for _ in range(3)]
        scale = step.loss_scale
        return np.array(losses), be.to_numpy(model.flat.param_buffer), scale

    whole, p_whole, _ = run()
    micro, p_micro, scale = run(micro_batch=1)
    redo, p_redo, _ = run(recompute=True)
    ref, p_ref, _ = _run_params(be, toks, targets, mask)
    loss_tol, update_tol = TOL[precision]
    assert np.abs(micro - whole).max() < loss_tol and np.abs(micro - ref).max() < loss_tol
    assert np.linalg.norm(p_micro - p_ref) / np.linalg.norm(p_ref - _initial(be)) < update_tol
    np.testing.assert_array_equal(redo, whole)
    np.testing.assert_array_equal(p_redo, p_whole)
    if precision == "fp16":  # three clean steps of four slices each: the scale counted steps, not slices
        state = scale.state_dict()
        assert state["overflows"] == 0 and state["good_steps"] == 3


def _initial(be) -> np.ndarray:
    return be.to_numpy(GPT(CFG, be, seed=0).flat.param_buffer)


def _run_params(be, toks, targets, mask):
    model = GPT(CFG, be, seed=0)
    step = TrainStep(model, Adam(model, lr=1e-3))
    losses = [float(step(toks, targets, mask)) for _ in range(3)]
    return np.array(losses), be.to_numpy(model.flat.param_buffer), None


# -- on ranks and through the graphed micro-batch path --------------------------------------------------------------
def _on_two_ranks(be, precision, batches, poison=None):
    # two in-process ranks (tests.test_micro_batch.ThreadComm) -> per rank: (losses, model, step)
    from concurrent.futures import ThreadPoolExecutor
    import threading

    from llm.training.ranks import DistributedStep
    from tests.test_micro_batch import ThreadComm

    shared = {"size": 2, "slots": [None, None], "barrier": threading.Barrier(2, timeout=60)}

    def rank(r):
        model = GPT(CFG, be, seed=0)
        step = DistributedStep(model, Adam(model, lr=1e-3), ThreadComm(r, shared), micro_batch=1,
                               precision=precision)
        losses = []
        for i, (toks, targets) in enumerate(batches):
            if poison is not None and poison == (r, i):  # an fp16 overflow on this rank only, at this step
                real = model.loss_and_grads_device

                def overflowing(*args, **kwargs):
                    loss = real(*args, **kwargs)
                    model.flat.grad_buffer[5] = np.inf
                    return loss
                model.loss_and_grads_device = overflowing
                losses.append(float(step(toks, targets)))
                model.loss_and_grads_device = real
            else:
                losses.append(float(step(toks, targets)))
        return np.array(losses), model, step

    with ThreadPoolExecutor(2) as pool:
        return [f.result() for f in [pool.submit(rank, r) for r in range(2)]]


def test_two_ranks_in_fp16_train_like_one_process_and_agree_bit_for_bit():
    be = require_backend("numpy")
    batches = [_batch(s) for s in range(3)]
    model = GPT(CFG, be, seed=0)
    one = TrainStep(model, Adam(model, lr=1e-3), precision="fp16")
    expected = np.array([float(one(*b)) for b in batches])
    (l0, m0, s0), (l1, m1, s1) = _on_two_ranks(be, "fp16", batches)
    assert s0.precision == "fp16" and s0.mixed_precision is not None
    np.testing.assert_array_equal(l0, l1)  # the all-reduced loss
    assert np.array_equal(m0.flat.param_buffer, m1.flat.param_buffer)
    assert np.abs(l0 - expected).max() < TOL["fp16"][0]
    start = be.to_numpy(GPT(CFG, be, seed=0).flat.param_buffer)
    update = np.linalg.norm(m0.flat.param_buffer - model.flat.param_buffer) / np.linalg.norm(
        model.flat.param_buffer - start)
    assert update < TOL["fp16"][1]
    assert s0.loss_scale.state_dict() == s1.loss_scale.state_dict() == one.loss_scale.state_dict()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0 in the skipped Adam step
def test_an_overflow_on_one_rank_skips_the_step_on_every_rank():
    be = require_backend("numpy")
    batches = [_batch(s) for s in range(3)]
    (l0, m0, s0), (l1, m1, s1) = _on_two_ranks(be, "fp16", batches, poison=(1, 1))
    for step in (s0, s1):
        assert step.optimizer.counters() == {"t": 2, "calls": 3, "skipped": 1}
        assert step.loss_scale.state_dict() == {"scale": 2.0 ** 15, "good_steps": 1, "overflows": 1,
                                                "growth_interval": GROWTH_INTERVAL}
        assert float(step.optimizer.first_skipped) == -1.0  # not reported as a divergence
    assert np.array_equal(m0.flat.param_buffer, m1.flat.param_buffer)
    np.testing.assert_array_equal(l0, l1)


def test_build_step_gives_a_distributed_step_its_precision():
    from llm.training.ranks import DistributedStep

    be = require_backend("numpy")
    model = GPT(CFG, be, seed=0)
    step = build_step(model, Adam(model), comm=object(), precision="fp16")
    assert isinstance(step, DistributedStep) and step.loss_scale is not None
    with pytest.raises(ConfigError, match="fp32, fp16, bf16"):
        build_step(model, Adam(model), comm=object(), precision="half")
    model64 = GPT(CFG, require_backend("numpy", "float64"), seed=0)
    with pytest.raises(ConfigError, match="float32"):
        DistributedStep(model64, Adam(model64), object(), precision="bf16")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_the_graphed_micro_batch_path_in_low_precision_with_capture_replaced_by_a_call(monkeypatch, precision):
    # No GPU here: the captured path's layout (the shadow cast once, every slice recorded on the low-precision
    # weights with the loss scale, one update that unscales and moves the scale) with StepGraphs replaced by a
    # plain call of the function it would record, against the plain micro-batched step.
    import llm.training.accumulate as acc

    be = require_backend("torch")
    monkeypatch.setattr(acc, "StepGraphs", lambda fn, state: fn)
    toks, targets = _batch(3)
    mask = np.ones(toks.shape, dtype=bool)
    mask[2, 9:] = False
    plain_model, graphed_model = GPT(CFG, be, seed=0), GPT(CFG, be, seed=0)
    plain = TrainStep(plain_model, Adam(plain_model, lr=1e-3), precision=precision, micro_batch=2)
    graphed = TrainStep(graphed_model, Adam(graphed_model, lr=1e-3), precision=precision)
    graphed.graphed, graphed.micro_batch = True, 2
    graphed._micro = acc.MicroBatches(graphed, 2)
    a = np.array([float(plain(toks, targets, mask)) for _ in range(3)])
    seen, real = [], graphed_model.loss_and_grads_device
    _, layer, key = next(iter(graphed_model.named_slots()))

    def spy(*args, **kwargs):  # the dtype of the weights each slice's passes ran on
        seen.append(layer.params[key].dtype)
        return real(*args, **kwargs)
    graphed_model.loss_and_grads_device = spy
    b = np.array([float(graphed(toks, targets, mask)) for _ in range(3)])
    assert seen == [graphed.mixed_precision.dtype] * 6  # 3 steps of 2 slices, each on the low-precision weights
    assert np.abs(a - b).max() < TOL[precision][0]
    start = be.to_numpy(GPT(CFG, be, seed=0).flat.param_buffer)
    pa, pb = be.to_numpy(plain_model.flat.param_buffer), be.to_numpy(graphed_model.flat.param_buffer)
    assert np.linalg.norm(pa - pb) / np.linalg.norm(pa - start) < TOL[precision][1]
    for name, layer, key in graphed_model.named_slots():  # the float32 masters bound again after the step
        assert layer.params[key] is graphed_model.flat.params[name]
    if precision == "fp16":
        assert graphed.loss_scale.state_dict()["good_steps"] == 3  # one per step, not per slice


def test_the_growth_interval_flag(tmp_path):
    ok = _text_cli(tmp_path, "--precision", "fp16", "--growth-interval", "2", "--out", str(tmp_path / "run"))
    assert ok.returncode == 0, ok.stderr
    saved = json.loads((tmp_path / "run" / "training.json").read_text())["loss_scale"]
    # with the default interval (2000) six steps leave 2^16; every second clean step doubles it here (an overflow,
    # which this small model meets near 2^18, halves it and starts the count again)
    assert saved["growth_interval"] == 2 and saved["scale"] > 2.0 ** 16
    for flags in (["--growth-interval", "2"], ["--precision", "bf16", "--growth-interval", "2"]):
        bad = _text_cli(tmp_path, *flags)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert "--growth-interval sets fp16's loss scale" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    zero = _text_cli(tmp_path, "--precision", "fp16", "--growth-interval", "0")
    assert zero.returncode == 2 and "--growth-interval" in zero.stderr


def test_build_step_takes_a_growth_interval():
    be = require_backend("numpy")
    model = GPT(CFG, be, seed=0)
    step = build_step(model, Adam(model), workers=1, precision="fp16", growth_interval=7)
    assert step.loss_scale.growth_interval == 7
    with pytest.raises(ConfigError) as info:
        build_step(model, Adam(model), precision="bf16", growth_interval=7)
    assert info.value.param == "growth_interval"
