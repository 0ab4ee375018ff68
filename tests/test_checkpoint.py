"""Checkpoints: round trips on every backend, cross-backend loads, exact resumption, corruption and failed saves."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import llm.checkpoint as ckpt_mod
import llm.checkpoint.writer as ckpt_writer  # where the files are written: patched to simulate a failing disk
from llm import GPT, GPTConfig
from llm.checkpoint import FORMAT_VERSION, load, load_checkpoint, restore_trainer, save_checkpoint
from llm.errors import CheckpointError
from llm.data.tokenizers import WordTokenizer
from llm.training.loop import build_step
from llm.training import Recipe, Trainer, TrainingInterrupted
from tests.conftest import require_backend

PRETRAIN = [
    "Water boils at one hundred degrees. </s>",
    "Ice floats on water. </s>",
    "The sun is a star. </s>",
    "Rain falls from clouds. </s>",
    "Plants need light to grow. </s>",
]
CHAT = [
    "User: What is the sun? Assistant: The sun is a star. </s>",
    "User: Does ice float? Assistant: Ice floats on water. </s>",
    "User: Where does rain come from? Assistant: Rain falls from clouds. </s>",
]
TOK = WordTokenizer.from_texts(PRETRAIN + CHAT)
CFG = GPTConfig(vocab_size=TOK.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=40)
# 5 pretrain examples -> 3 batches an epoch, 3 chat examples -> 2: stops can land mid-epoch in either phase.
RECIPE = Recipe(batch_size=2, pretrain_epochs=3, chat_epochs=3, warmup_steps=3)
TOKENS = np.array([[4, 9, 1, 12, 7, 3, 20, 5], [2, 11, 6, 6, 0, 15, 8, 13]])
RESUMABLE_FILES = ["config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors", "training.json"]
MODEL_FILES = ["config.json", "manifest.json", "model.safetensors", "tokenizer.json"]  # sorted


class _Stop(Exception):
    """Raised from a callback to stop a training run right after it saved a checkpoint."""


def _model(be, seed=1, cfg=CFG):
    return GPT(cfg, be, seed=seed)


def _logits(model, tokens=TOKENS):
    return model.backend.to_numpy(model.forward(tokens))


def _saved(tmp_path, name="ck", seed=1, trainer=False):
    """A checkpoint of a fresh numpy float64 model; returns (path, model)."""
    be = require_backend("numpy", "float64")
    model = _model(be, seed)
    tr = Trainer(model, TOK, PRETRAIN, CHAT, RECIPE, seed=0, progress=False) if trainer else None
    return save_checkpoint(tmp_path / name, model, TOK, tr), model


def _error(fn, *args) -> str:
    with pytest.raises(CheckpointError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# -- round trips ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_load_gives_identical_logits(backend_name, dtype, tmp_path):
    be = require_backend(backend_name, dtype)
    model = _model(be, seed=5)
    path = save_checkpoint(tmp_path / "ck", model, TOK)
    assert path == tmp_path / "ck"
    assert sorted(os.listdir(path)) == MODEL_FILES
    ck = load_checkpoint(path, be)
    assert ck.model.config == model.config and ck.tokenizer == TOK and ck.path == path
    assert ck.recipe is ck.seed is ck.train_state is ck.optimizer_state is None
    for name, p in model.params.items():
        np.testing.assert_array_equal(be.to_numpy(ck.model.params[name]), be.to_numpy(p), err_msg=name)
    np.testing.assert_array_equal(_logits(ck.model), _logits(model))
    config = json.loads((path / "config.json").read_text())
    assert config == {"format_version": FORMAT_VERSION, "dtype": dtype, "model": model.config.to_dict()}
    stored = safetensors.numpy.load_file(str(path / "model.safetensors"))
    assert set(stored) == set(model.params) and all(a.dtype == np.dtype(dtype) for a in stored.values())


@pytest.mark.parametrize("variant", [{"tie_weights": True}, {"norm": "post", "activation": "gelu"}])
def test_round_trip_of_model_variants(variant, tmp_path):
    be = require_backend("numpy", "float64")
    model = _model(be, seed=2, cfg=GPTConfig(**{**CFG.to_dict(), **variant}))
    model2, tok2 = load(save_checkpoint(tmp_path / "ck", model, TOK), be)
    assert model2.config == model.config and tok2 == TOK
    np.testing.assert_array_equal(_logits(model2), _logits(model))


def test_cross_backend_load_float64_to_float32(other_backend_name, tmp_path):
    be64 = require_backend("numpy", "float64")
    model = _model(be64, seed=7)
    path = save_checkpoint(tmp_path / "ck", model, TOK)
    be32 = require_backend(other_backend_name, "float32")
    loaded, _ = load(path, be32)
    assert loaded.backend is be32
    assert all(be32.to_numpy(p).dtype == np.float32 for p in loaded.params.values())
    expected = _logits(model)
    np.testing.assert_allclose(_logits(loaded), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_backend_given_by_name_uses_the_saved_dtype(tmp_path):
    path, model = _saved(tmp_path)
    loaded, _ = load(path, "strict")
    assert loaded.backend.name == "strict" and loaded.backend.dtype_name == "float64"
    np.testing.assert_allclose(_logits(loaded), _logits(model), rtol=1e-12, atol=1e-12)


def test_saving_again_replaces_the_checkpoint(tmp_path):
    path, _ = _saved(tmp_path, seed=1, trainer=True)
    assert sorted(os.listdir(path)) == sorted(RESUMABLE_FILES + ["manifest.json"])
    be = require_backend("numpy", "float64")
    other = _model(be, seed=2)
    save_checkpoint(path, other, TOK)  # model only: the old training files must not linger
    assert sorted(os.listdir(path)) == MODEL_FILES
    assert os.listdir(tmp_path) == ["ck"]
    np.testing.assert_array_equal(_logits(load(path, be)[0]), _logits(other))


def test_save_creates_missing_parent_directories(tmp_path):
    be = require_backend("numpy", "float32")
    path = save_checkpoint(str(tmp_path / "runs" / "deep" / "ck"), _model(be), TOK)
    assert isinstance(path, Path) and load_checkpoint(path, be).model.config == CFG


# -- resuming ---------------------------------------------------------------------------------------------------------

def _history(trainer):
    return [(h["phase"], h["epoch"], h["loss"]) for h in trainer.state.history]


def _full_run(be, recipe=RECIPE, workers="auto"):
    model = _model(be, seed=11)
    trainer = Trainer(model, TOK, PRETRAIN, CHAT, recipe, seed=4, progress=False,
                      step=build_step(model, recipe.adam(model), workers=workers))
    trainer.train()
    return trainer


def _assert_same_run(resumed, full, be, tol):
    assert resumed.finished and resumed.state.step == full.state.step
    assert resumed.optimizer.t == full.optimizer.t
    if tol == 0:
        assert _history(resumed) == _history(full)
    else:
        assert [h[:2] for h in _history(resumed)] == [h[:2] for h in _history(full)]
        np.testing.assert_allclose([h[2] for h in _history(resumed)], [h[2] for h in _history(full)], rtol=tol)
    for name, p in full.model.params.items():
        got, want = be.to_numpy(resumed.model.params[name]), be.to_numpy(p)
        if tol == 0:
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=name)


RUNS = [("numpy", "float64", 0.0), ("numpy", "float32", 1e-6)]
STOPS = [(0, 1), (0, 3), (1, 2)]  # (phase, epochs completed in it); (0, 3) is the end of pretraining


@pytest.mark.parametrize("backend,dtype,tol,stop_phase,stop_epoch",
                         [(*run, *stop) for run in RUNS for stop in STOPS] + [("torch", "float32", 1e-6, 1, 2)])
def test_resume_after_an_epoch_matches_an_uninterrupted_run(backend, dtype, tol, stop_phase, stop_epoch, tmp_path):
    be = require_backend(backend, dtype)
    full = _full_run(be)

    def save_and_stop(trainer):
        if (trainer.state.phase, trainer.state.epoch) == (stop_phase, stop_epoch):
            save_checkpoint(tmp_path / "ck", trainer.model, trainer.tokenizer, trainer)
            raise _Stop

    if stop_epoch == 3:  # the last pretrain epoch: the checkpoint is written by on_phase_end instead
        def on_phase_end(trainer, summary):
            if summary.phase == "pretrain":
                save_checkpoint(tmp_path / "ck", trainer.model, trainer.tokenizer, trainer)
                raise _Stop
        kwargs = {"on_phase_end": on_phase_end}
    else:
        kwargs = {"on_epoch": save_and_stop}
    stopped = Trainer(_model(be, seed=11), TOK, PRETRAIN, CHAT, RECIPE, seed=4, progress=False, **kwargs)
    with pytest.raises(_Stop):
        stopped.train()
    ck = load_checkpoint(tmp_path / "ck", be)
    assert ck.recipe == RECIPE and ck.seed == 4 and ck.optimizer_state["t"] == stopped.optimizer.t
    resumed = restore_trainer(ck, PRETRAIN, CHAT, progress=False)
    assert resumed.model is ck.model and resumed.state.step == stopped.state.step
    resumed.train()
    _assert_same_run(resumed, full, be, tol)


# stop_after batches: 4 = pretrain epoch 2 batch 1; 11 = chat epoch 1 batch 0; 12 = chat epoch 1 batch 1
@pytest.mark.parametrize("backend,dtype,tol,stop_after,reset_optimizer",
                         [(*run, n, reset) for run in RUNS for n in (4, 11, 12) for reset in (False, True)]
                         + [("torch", "float32", 1e-6, 4, False)])
def test_resume_mid_epoch_matches_an_uninterrupted_run(backend, dtype, tol, stop_after, reset_optimizer, tmp_path):
    be = require_backend(backend, dtype)
    recipe = Recipe(**{**RECIPE.to_dict(), "reset_optimizer": reset_optimizer})
    full = _full_run(be, recipe, workers=1)
    model = _model(be, seed=11)
    # one thread per step: the spy below counts one model call per step (with workers, each shard makes one)
    stopped = Trainer(model, TOK, PRETRAIN, CHAT, recipe, seed=4, progress=False,
                      step=build_step(model, recipe.adam(model), workers=1))
    calls = []
    real_step = model.loss_and_grads_device

    def counting_step(*args, **kwargs):  # asks for a stop (as Ctrl-C would) after `stop_after` batches
        calls.append(1)
        if len(calls) == stop_after:
            stopped.stop.request()
        return real_step(*args, **kwargs)

    model.loss_and_grads_device = counting_step
    with pytest.raises(TrainingInterrupted):
        stopped.train()
    assert stopped.state.step == stop_after
    save_checkpoint(tmp_path / "ck", model, TOK, stopped)
    saved = json.loads((tmp_path / "ck" / "training.json").read_text())
    assert saved["state"]["step"] == stop_after and saved["optimizer_t"] == stopped.optimizer.t
    if stop_after != 11:
        assert saved["state"]["batch"] > 0  # really mid-epoch
    ck = load_checkpoint(tmp_path / "ck", be)
    resumed = restore_trainer(ck, PRETRAIN, CHAT, progress=False, step=build_step(ck.model, ck.recipe.adam(ck.model), workers=1))
    resumed.train()
    _assert_same_run(resumed, full, be, tol)


def test_restore_needs_training_state(tmp_path):
    path, _ = _saved(tmp_path, trainer=False)
    ck = load_checkpoint(path, require_backend("numpy", "float64"))
    msg = _error(restore_trainer, ck, PRETRAIN, CHAT)
    assert "saved without training state" in msg and "not resumed" in msg


def test_restore_with_another_corpus_is_refused(tmp_path):
    be = require_backend("numpy", "float64")
    model = _model(be)
    trainer = Trainer(model, TOK, PRETRAIN, CHAT, RECIPE, seed=0, progress=False)
    trainer.state.batch = 2  # as if stopped two batches into the first pretrain epoch
    save_checkpoint(tmp_path / "ck", model, TOK, trainer)
    msg = _error(restore_trainer, load_checkpoint(tmp_path / "ck", be), PRETRAIN[:2], CHAT)
    assert "corpora the run was started with" in msg


# -- corrupt or incomplete checkpoints --------------------------------------------------------------------------------

def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _load64(path):
    return load_checkpoint(path, require_backend("numpy", "float64"))


def test_missing_or_non_directory_checkpoint(tmp_path):
    msg = _error(_load64, tmp_path / "nowhere")
    assert "nowhere" in msg and "does not exist" in msg
    (tmp_path / "file").write_text("x")
    msg = _error(_load64, tmp_path / "file")
    assert "file" in msg and "not a directory" in msg


@pytest.mark.parametrize("name", RESUMABLE_FILES)
def test_each_missing_file_is_named(name, tmp_path):
    path, _ = _saved(tmp_path, trainer=True)
    (path / name).unlink()
    msg = _error(_load64, path)
    assert name in msg and "missing" in msg


def test_truncated_weights(tmp_path):
    path, _ = _saved(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    msg = _error(_load64, path)
    assert "model.safetensors" in msg and "truncated or corrupt" in msg


@pytest.mark.parametrize("cut", [0, 5, 9])
def test_weights_shorter_than_a_header(cut, tmp_path):
    path, _ = _saved(tmp_path)
    (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:cut])
    assert "model.safetensors" in _error(_load64, path)


@pytest.mark.parametrize("where", ["length", "json"])
def test_flipped_header_bytes(where, tmp_path):
    path, _ = _saved(tmp_path)
    data = bytearray((path / "model.safetensors").read_bytes())
    span = range(3, 7) if where == "length" else range(10, 18)  # the 8-byte header length, then the JSON header
    for i in span:
        data[i] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    msg = _error(_load64, path)
    assert "model.safetensors" in msg and "corrupt" in msg


def test_missing_and_unexpected_tensors(tmp_path):
    path, model = _saved(tmp_path)
    tensors = {k: np.asarray(v) for k, v in model.params.items()}
    safetensors.numpy.save_file({k: v for k, v in tensors.items() if k != "ln_f.gamma"},
                                str(path / "model.safetensors"))
    msg = _error(_load64, path)
    assert "model.safetensors" in msg and "ln_f.gamma" in msg
    safetensors.numpy.save_file({**tensors, "extra.weight": np.zeros(3)}, str(path / "model.safetensors"))
    msg = _error(_load64, path)
    assert "unexpected" in msg and "extra.weight" in msg


def test_non_finite_or_integer_weights_are_rejected(tmp_path):
    path, model = _saved(tmp_path)
    tensors = {k: np.array(v) for k, v in model.params.items()}
    tensors["head.bias"][0] = np.nan
    safetensors.numpy.save_file(tensors, str(path / "model.safetensors"))
    assert "head.bias" in _error(_load64, path)
    tensors["head.bias"] = np.zeros(tensors["head.bias"].shape, dtype=np.int64)
    safetensors.numpy.save_file(tensors, str(path / "model.safetensors"))
    assert "dtype" in _error(_load64, path)


def test_weights_of_another_model_size(tmp_path):
    path, _ = _saved(tmp_path)
    _edit_json(path / "config.json", lambda c: c["model"].update(d_model=32))
    msg = _error(_load64, path)
    assert "model.safetensors" in msg and "shape" in msg and "different model size" in msg


@pytest.mark.parametrize("edit,expected", [
    (lambda c: c["model"].update(d_model=15), "not divisible"),  # GPTConfig rejects it
    (lambda c: c["model"].update(n_layers=0), "n_layers"),
    (lambda c: c["model"].update(colour="blue"), "unknown config keys"),
    (lambda c: c["model"].pop("vocab_size"), "vocab_size"),
    (lambda c: c.update(format_version=99), "unsupported format_version 99"),
    (lambda c: c.pop("format_version"), "unsupported format_version None"),
    (lambda c: c.update(dtype="float16"), "dtype"),
    (lambda c: c.update(model=[1, 2]), "model"),
])
def test_bad_config(edit, expected, tmp_path):
    path, _ = _saved(tmp_path)
    _edit_json(path / "config.json", edit)
    msg = _error(_load64, path)
    assert "config.json" in msg and expected in msg


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "training.json"])
def test_invalid_json(name, tmp_path):
    path, _ = _saved(tmp_path, trainer=True)
    (path / name).write_text('{"format_version": 1, ')
    msg = _error(_load64, path)
    assert name in msg and "not valid JSON" in msg


def test_tokenizer_that_lost_a_word(tmp_path):
    path, _ = _saved(tmp_path)
    _edit_json(path / "tokenizer.json", lambda t: t["vocab"].remove("star"))
    msg = _error(_load64, path)
    assert "tokenizer.json" in msg and f"{TOK.vocab_size - 1} tokens" in msg and str(TOK.vocab_size) in msg


def test_malformed_tokenizer(tmp_path):
    path, _ = _saved(tmp_path)
    _edit_json(path / "tokenizer.json", lambda t: t.update(type="bytes"))
    assert "tokenizer.json" in _error(_load64, path)


def test_config_and_tokenizer_agreeing_with_each_other_but_not_the_weights(tmp_path):
    path, _ = _saved(tmp_path)
    _edit_json(path / "tokenizer.json", lambda t: t["vocab"].remove("star"))
    _edit_json(path / "config.json", lambda c: c["model"].update(vocab_size=TOK.vocab_size - 1))
    msg = _error(_load64, path)
    assert "embed.token" in msg and "shape" in msg


def test_optimizer_tensors_that_do_not_match_the_params(tmp_path):
    path, model = _saved(tmp_path, trainer=True)
    opt = safetensors.numpy.load_file(str(path / "optimizer.safetensors"))
    bad = dict(opt)
    bad["m.head.bias"] = np.zeros(3)
    safetensors.numpy.save_file(bad, str(path / "optimizer.safetensors"))
    msg = _error(_load64, path)
    assert "optimizer.safetensors" in msg and "m.head.bias" in msg and "shape" in msg
    bad = {k: v for k, v in opt.items() if k != "v.ln_f.beta"}
    safetensors.numpy.save_file(bad, str(path / "optimizer.safetensors"))
    assert "v.ln_f.beta" in _error(_load64, path)


@pytest.mark.parametrize("edit,expected", [
    (lambda t: t.update(optimizer_t=-1), "optimizer_t"),
    (lambda t: t.pop("state"), "state"),
    (lambda t: t["recipe"].update(batch_size=0), "recipe"),
    (lambda t: t["state"].update(rng_state={"bit_generator": "nonsense"}), "training state"),
    (lambda t: t["state"].update(surprise=1), "training state"),
    (lambda t: t.update(seed="zero"), "seed"),
])
def test_bad_training_json(edit, expected, tmp_path):
    path, _ = _saved(tmp_path, trainer=True)
    _edit_json(path / "training.json", edit)
    msg = _error(_load64, path)
    assert "training.json" in msg and expected in msg


# -- saving safely ----------------------------------------------------------------------------------------------------

def _assert_intact(tmp_path, path, model):
    """The previous checkpoint is still the only thing there, and loads to the same logits."""
    assert sorted(os.listdir(tmp_path)) == [path.name], os.listdir(tmp_path)
    be = model.backend
    np.testing.assert_array_equal(_logits(load(path, be)[0]), _logits(model))


def _fail_on_call(n, exc, real):
    calls = []

    def fake(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            raise exc
        return real(*args, **kwargs)

    return fake


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_out_of_space_while_writing_keeps_the_previous_checkpoint(n, tmp_path, monkeypatch):
    path, old = _saved(tmp_path, seed=1, trainer=True)
    new = _model(old.backend, seed=2)
    trainer = Trainer(new, TOK, PRETRAIN, CHAT, RECIPE, progress=False)
    monkeypatch.setattr(ckpt_writer, "_write_file", _fail_on_call(n, ENOSPC, ckpt_writer._write_file))
    msg = _error(save_checkpoint, path, new, TOK, trainer)
    assert str(path) in msg and "No space left on device" in msg and "free some space" in msg
    _assert_intact(tmp_path, path, old)


@pytest.mark.parametrize("n", [1, 2])  # 1: moving the old checkpoint aside, 2: moving the new one in
@pytest.mark.parametrize("exc", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()])
def test_failure_while_swapping_keeps_the_previous_checkpoint(n, exc, tmp_path, monkeypatch):
    path, old = _saved(tmp_path, seed=1)
    new = _model(old.backend, seed=2)
    monkeypatch.setattr(os, "replace", _fail_on_call(n, exc, os.replace))
    if isinstance(exc, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(path, new, TOK)
    else:
        assert "Input/output error" in _error(save_checkpoint, path, new, TOK)
    monkeypatch.undo()
    _assert_intact(tmp_path, path, old)


def test_interrupt_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path, old = _saved(tmp_path, seed=1)
    new = _model(old.backend, seed=2)
    monkeypatch.setattr(ckpt_writer, "_write_file", _fail_on_call(2, KeyboardInterrupt(), ckpt_writer._write_file))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, new, TOK)
    _assert_intact(tmp_path, path, old)


def test_failed_first_save_leaves_nothing_behind(tmp_path, monkeypatch):
    be = require_backend("numpy", "float32")
    monkeypatch.setattr(ckpt_writer, "_write_file", _fail_on_call(3, ENOSPC, ckpt_writer._write_file))
    _error(save_checkpoint, tmp_path / "ck", _model(be), TOK)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_parameters_are_not_saved(bad, tmp_path):
    path, old = _saved(tmp_path, seed=1)
    new = _model(old.backend, seed=2)
    new.params["blocks.0.ff.fc1.weight"][3, 4] = bad
    msg = _error(save_checkpoint, path, new, TOK)
    assert msg.startswith("refusing to save: parameter blocks.0.ff.fc1.weight has NaN/inf values")
    assert "last good checkpoint is kept" in msg
    _assert_intact(tmp_path, path, old)


def test_permission_denied_names_the_directory(tmp_path, monkeypatch):
    be = require_backend("numpy", "float32")
    out = tmp_path / "locked"
    out.mkdir()

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    msg = _error(save_checkpoint, out / "ck", _model(be), TOK)
    assert "permission denied" in msg and str(out) in msg
    assert os.listdir(out) == []


def test_refuses_to_replace_something_that_is_not_a_checkpoint(tmp_path):
    be = require_backend("numpy", "float32")
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    msg = _error(save_checkpoint, precious, _model(be), TOK)
    assert "not a checkpoint" in msg and (precious / "thesis.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("keep me too")
    assert "not a directory" in _error(save_checkpoint, tmp_path / "file", _model(be), TOK)
    empty = tmp_path / "empty"
    empty.mkdir()
    save_checkpoint(empty, _model(be), TOK)  # an empty directory is fine
    assert load_checkpoint(empty, be).model.config == CFG


def test_tokenizer_of_another_size_is_not_saved(tmp_path):
    be = require_backend("numpy", "float32")
    small = WordTokenizer.from_texts(["Ice floats. </s>"])
    assert "tokenizer" in _error(save_checkpoint, tmp_path / "ck", _model(be), small)
    assert os.listdir(tmp_path) == []


# -- a checkpoint is what its manifest says: nothing else is replaced or deleted (issue 11, items 1, 4, 9, 10, 14) --

def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_manifest_lists_every_file_with_its_sha256(tmp_path):
    import hashlib

    path, _ = _saved(tmp_path, trainer=True)
    manifest = _manifest(path)
    assert manifest["format"] == "arraygpt-checkpoint" and manifest["format_version"] == FORMAT_VERSION
    assert sorted(manifest["files"]) == sorted(RESUMABLE_FILES)
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name


def test_a_project_folder_with_a_config_json_is_not_replaced(tmp_path):
    be = require_backend("numpy", "float32")
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text('{"name": "my thesis"}')
    (project / "model.safetensors").write_bytes(b"not ours")
    (project / "thesis.tex").write_text("keep me")
    (project / "src" / "main.py").write_text("print(1)")
    before = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    msg = _error(save_checkpoint, project, _model(be), TOK)
    assert "not a checkpoint" in msg and "manifest.json" in msg and str(project) in msg
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == before
    assert (project / "thesis.tex").read_text() == "keep me"
    assert "manifest.json" in _error(ckpt_mod.check_destination, project)


@pytest.mark.parametrize("trainer", [False, True])
def test_files_a_user_added_to_a_checkpoint_survive_a_save(trainer, tmp_path):
    path, model = _saved(tmp_path, seed=1, trainer=True)
    (path / "NOTES.md").write_text("lr 5e-3 looked best")
    (path / "plots").mkdir()
    (path / "plots" / "loss.png").write_bytes(b"\x89PNG...")
    new = _model(model.backend, seed=2)
    tr = Trainer(new, TOK, PRETRAIN, CHAT, RECIPE, seed=0, progress=False) if trainer else None
    save_checkpoint(path, new, TOK, tr)
    assert (path / "NOTES.md").read_text() == "lr 5e-3 looked best"
    assert (path / "plots" / "loss.png").read_bytes() == b"\x89PNG..."
    expected = (RESUMABLE_FILES if trainer else MODEL_FILES) + ["manifest.json", "NOTES.md", "plots"]
    assert sorted(os.listdir(path)) == sorted(set(expected))
    assert os.listdir(tmp_path) == ["ck"]  # no hidden directory left behind
    np.testing.assert_array_equal(_logits(load(path, new.backend)[0]), _logits(new))


_KILLED_SAVE = """
import os, sys
sys.path.insert(0, {root!r})
import backends
from llm import GPT, GPTConfig
from llm.checkpoint import save_checkpoint
from llm.data.tokenizers import WordTokenizer
tok = WordTokenizer.from_texts(["Ice floats on water. </s>"])
cfg = GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=16)
be = backends.get_backend("cpu", "float64")
out = {out!r}
save_checkpoint(out, GPT(cfg, be, seed=1), tok)
open(os.path.join(out, "NOTES.md"), "w").write("mine")
real, calls = os.replace, []
def replace(*args):
    calls.append(args)
    if len(calls) == 2:  # the new checkpoint is complete, the old one is aside: killed between the two renames
        os._exit(9)
    return real(*args)
os.replace = replace
save_checkpoint(out, GPT(cfg, be, seed=2), tok)
"""


def test_a_save_killed_between_its_renames_is_recovered(tmp_path):
    import subprocess
    import sys
    import warnings

    out = tmp_path / "ck"
    root = str(Path(__file__).resolve().parent.parent)
    r = subprocess.run([sys.executable, "-c", _KILLED_SAVE.format(root=root, out=str(out))], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    assert not out.exists()
    hidden = sorted(os.listdir(tmp_path))
    assert len(hidden) == 2 and hidden[0].startswith(".ck.old-") and hidden[1].startswith(".ck.tmp-"), hidden
    be = require_backend("numpy", "float64")
    found = ckpt_mod.find_checkpoint(out)
    assert found is not None and found.recovered and found.path.name.startswith(".ck.tmp-")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ck = load_checkpoint(out, be)
    assert any("interrupted" in str(w.message) and str(out) in str(w.message) for w in caught)
    tokens = np.array([[1, 2, 3, 4]])  # this checkpoint's vocabulary is small
    np.testing.assert_array_equal(_logits(ck.model, tokens),
                                  _logits(_model(be, seed=2, cfg=ck.model.config), tokens))  # the newer one
    # The next save puts a checkpoint back in place, moves the user's file into it and removes the hidden ones.
    save_checkpoint(out, ck.model, ck.tokenizer)
    assert os.listdir(tmp_path) == ["ck"]
    assert (out / "NOTES.md").read_text() == "mine"
    np.testing.assert_array_equal(_logits(load(out, be)[0], tokens), _logits(ck.model, tokens))


def test_an_incomplete_hidden_copy_is_not_loaded(tmp_path):
    """Killed before the new copy was complete: the previous checkpoint, moved aside, is the newest complete one."""
    path, old = _saved(tmp_path, seed=1)
    newer, _ = _saved(tmp_path, name="newer", seed=2)
    os.replace(path, tmp_path / ".ck.old-0000aaaa")
    (newer / "model.safetensors").write_bytes((newer / "model.safetensors").read_bytes()[:100])
    os.replace(newer, tmp_path / ".ck.tmp-0000bbbb")
    be = old.backend
    with pytest.warns(UserWarning, match="interrupted"):
        np.testing.assert_array_equal(_logits(load(path, be)[0]), _logits(old))


def test_a_save_removes_what_a_killed_save_left(tmp_path):
    path, model = _saved(tmp_path, seed=1)
    stale = tmp_path / ".ck.tmp-deadbeef"  # killed while writing: no manifest yet
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    (stale / "model.safetensors").write_bytes(b"partial")
    save_checkpoint(path, model, TOK)
    assert os.listdir(tmp_path) == ["ck"]


def test_a_stale_directory_with_a_file_that_is_not_ours_is_not_deleted(tmp_path):
    path, model = _saved(tmp_path, seed=1)
    odd = tmp_path / ".ck.tmp-cafef00d"
    odd.mkdir()
    (odd / "model.safetensors").write_bytes(b"partial")
    (odd / "diary.txt").write_text("not a checkpoint file")
    save_checkpoint(path, model, TOK)
    assert os.listdir(odd) == ["diary.txt"]


def _flip(path: Path, offset_from_end: int = 64, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) - offset_from_end, len(data) - offset_from_end + count):
        data[i] ^= 0x01  # small changes: finite weights, a well-formed file
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name,tamper", [
    ("model.safetensors", lambda p: _flip(p / "model.safetensors")),
    ("optimizer.safetensors", lambda p: _flip(p / "optimizer.safetensors")),
    ("tokenizer.json", lambda p: _edit_json(p / "tokenizer.json", lambda t: t["vocab"].__setitem__(
        slice(5, 7), t["vocab"][6:4:-1]))),
    ("config.json", lambda p: _edit_json(p / "config.json", lambda c: c["model"].update(n_heads=1))),
    ("config.json", lambda p: _edit_json(p / "config.json", lambda c: c["model"].update(activation="gelu"))),
    ("config.json", lambda p: _edit_json(p / "config.json", lambda c: c["model"].update(ln_eps=1e-3))),
    ("training.json", lambda p: _edit_json(p / "training.json", lambda t: t.update(seed=123))),
])
def test_a_changed_file_fails_its_checksum(name, tamper, tmp_path):
    path, _ = _saved(tmp_path, trainer=True)
    tamper(path)
    msg = _error(_load64, path)
    assert str(path / name) in msg and "SHA-256" in msg and "manifest.json" in msg


def test_a_broken_manifest_is_named(tmp_path):
    path, _ = _saved(tmp_path)
    _edit_json(path / "manifest.json", lambda m: m["files"]["model.safetensors"].update(sha256="x"))
    assert "manifest.json" in _error(_load64, path)
    (path / "manifest.json").write_text("{")
    msg = _error(_load64, path)
    assert "manifest.json" in msg and "not valid JSON" in msg


def test_a_training_file_the_manifest_does_not_list_is_refused(tmp_path):
    with_state, _ = _saved(tmp_path, name="a", trainer=True)
    path, _ = _saved(tmp_path, name="b", trainer=False)
    for name in ("training.json", "optimizer.safetensors"):
        (path / name).write_bytes((with_state / name).read_bytes())
    msg = _error(_load64, path)
    assert "not listed in manifest.json" in msg


def test_a_checkpoint_without_a_manifest_still_loads(tmp_path):
    """Checkpoints saved before manifests existed load as before (without the checksums)."""
    path, model = _saved(tmp_path, trainer=True)
    (path / "manifest.json").unlink()
    ck = _load64(path)
    assert ck.resumable and ck.run_id is None
    np.testing.assert_array_equal(_logits(ck.model), _logits(model))


def test_run_id_is_recorded(tmp_path):
    be = require_backend("numpy", "float64")
    path = save_checkpoint(tmp_path / "ck", _model(be), TOK, run_id="abc123")
    assert _manifest(path)["run_id"] == "abc123" and _load64(path).run_id == "abc123"
    assert ckpt_mod.find_checkpoint(path).run_id == "abc123"
    assert ckpt_mod.find_checkpoint(tmp_path / "nothing") is None


@pytest.mark.parametrize("edit,field", [
    (lambda t: t["state"].update(epoch=RECIPE.pretrain_epochs + 1), "epoch"),
    (lambda t: t["recipe"].update(reset_optimizer="no"), "reset_optimizer"),
    (lambda t: t["recipe"].update(lr_chat=True), "lr_chat"),
])
def test_training_json_out_of_the_recipe_is_refused(edit, field, tmp_path):
    path, _ = _saved(tmp_path, trainer=True)
    _edit_json(path / "training.json", edit)
    (path / "manifest.json").unlink()  # as a hand-made (or pre-manifest) checkpoint: the values themselves are wrong
    msg = _error(_load64, path)
    assert "training.json" in msg and field in msg


def test_empty_paths_are_refused(tmp_path, monkeypatch):
    be = require_backend("numpy", "float32")
    monkeypatch.chdir(tmp_path)
    assert "empty" in _error(save_checkpoint, "", _model(be), TOK)
    assert "empty" in _error(load_checkpoint, "", be)
    assert "empty" in _error(ckpt_mod.check_destination, "")
    assert os.listdir(tmp_path) == []


def test_checkpoint_directories_follow_the_umask(tmp_path):
    be = require_backend("numpy", "float32")
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "ck", _model(be), TOK)
        save_checkpoint(path, _model(be), TOK)
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o755
    assert all((p.stat().st_mode & 0o777) == 0o644 for p in path.iterdir())


def test_a_symlinked_destination_stays_a_link(tmp_path):
    path, model = _saved(tmp_path, seed=1)
    link = tmp_path / "latest"
    link.symlink_to(path)
    new = _model(model.backend, seed=2)
    assert save_checkpoint(link, new, TOK) == path
    assert link.is_symlink() and os.readlink(link) == str(path)
    np.testing.assert_array_equal(_logits(load(link, new.backend)[0]), _logits(new))


def test_the_destination_lock_is_exclusive(tmp_path):
    out = tmp_path / "runs" / "ck"
    with ckpt_mod.lock_destination(out) as lock:
        assert lock.path == tmp_path / "runs" / ".ck.lock" and lock.path.exists()
        msg = _error(ckpt_mod.lock_destination, tmp_path / "runs" / "." / "ck")
        assert "another run" in msg and str(os.getpid()) in msg and str(out) in msg
    assert not lock.path.exists()
    ckpt_mod.lock_destination(out).release()  # free again


# -- resuming on other corpora (issue 11 item 7) -----------------------------------------------------------------------

def test_resume_with_other_corpora_is_refused(tmp_path):
    """A fingerprint of each corpus is saved; restore_trainer refuses corpora that differ, naming which one."""
    path, _ = _saved(tmp_path, trainer=True)
    saved = json.loads((path / "training.json").read_text())["corpora"]
    assert set(saved) == {"pretrain", "chat"} and all(len(c["sha256"]) == 64 for c in saved.values())
    other_facts = PRETRAIN[:4] + ["Snow is cold water. </s>"]
    msg = _error(restore_trainer, _load64(path), other_facts, CHAT)
    assert "pretrain corpus" in msg and "chat" not in msg.split("pretrain corpus")[0] and "allow_other_corpus" in msg
    msg = _error(restore_trainer, _load64(path), PRETRAIN, CHAT[::-1])  # the same dialogues in another order
    assert "chat corpus" in msg and "`chat_texts`" in msg  # the library names its parameter; the CLI says --chat-data
    assert "pretrain corpus" in _error(restore_trainer, _load64(path), [], CHAT)  # a corpus left out
    resumed = restore_trainer(_load64(path), other_facts, CHAT, allow_other_corpus=True, progress=False)
    resumed.train()
    assert resumed.finished
    restore_trainer(_load64(path), PRETRAIN, CHAT, progress=False).train()  # the same corpora: fine


def test_a_checkpoint_without_corpus_fingerprints_still_resumes(tmp_path):
    """Checkpoints saved before fingerprints existed resume on any corpora, unchecked (as before)."""
    path, _ = _saved(tmp_path, trainer=True)
    (path / "manifest.json").unlink()
    _edit_json(path / "training.json", lambda t: t.pop("corpora"))
    restore_trainer(_load64(path), PRETRAIN[:4], CHAT, progress=False).train()


@pytest.mark.parametrize("corpora,expected", [
    ("yes", "corpora"),
    ({"pretrain": {"sha256": "0" * 64}}, "chat"),
    ({"pretrain": {"sha256": "xyz", "examples": 5}, "chat": {"sha256": "0" * 64, "examples": 3}}, "sha256"),
    ({"pretrain": {"sha256": "0" * 64, "examples": -1}, "chat": {"sha256": "0" * 64, "examples": 3}}, "examples"),
])
def test_bad_corpus_fingerprints_are_refused(corpora, expected, tmp_path):
    path, _ = _saved(tmp_path, trainer=True)
    (path / "manifest.json").unlink()
    _edit_json(path / "training.json", lambda t: t.update(corpora=corpora))
    msg = _error(_load64, path)
    assert "training.json" in msg and expected in msg
