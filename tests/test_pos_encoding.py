"""Positional encodings (issue 10 item 4): learned, sinusoidal and rotary, through config, checkpoints, resume and the
CLIs. Gradient checks, parity and the KV cache are in test_layers / test_model / test_parity / test_generation."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from llm import GPT, GPTConfig
from llm.checkpoint import load, load_checkpoint, restore_trainer, save_checkpoint
from llm.errors import ConfigError
from llm.training import Trainer
from tests.conftest import require_backend
from tests.test_checkpoint import CFG, CHAT, PRETRAIN, RECIPE, TOK, TOKENS, _assert_same_run, _Stop
from tests.test_cli_train import FAST, assert_error, assert_ok, corpora, train  # noqa: F401 (corpora: a fixture)

ENCODINGS = ["learned", "sinusoidal", "rope"]


def _cfg(pos_encoding, **kw):
    return GPTConfig(**{**CFG.to_dict(), "pos_encoding": pos_encoding, **kw})


def test_config_default_validation_and_parameters():
    assert GPTConfig(vocab_size=10).pos_encoding == "learned"
    with pytest.raises(ConfigError, match="pos_encoding must be one of learned, sinusoidal, rope"):
        GPTConfig(vocab_size=10, pos_encoding="alibi")
    with pytest.raises(ConfigError, match="even"):  # head size 3: rope rotates pairs of channels
        GPTConfig(vocab_size=10, d_model=6, n_heads=2, pos_encoding="rope")
    GPTConfig(vocab_size=10, d_model=6, n_heads=2, pos_encoding="sinusoidal")  # an odd head size is fine there
    be = require_backend("numpy")
    for enc in ENCODINGS:
        model = GPT(_cfg(enc), be)
        assert ("embed.position" in model.params) == (enc == "learned")
        assert model.config.num_parameters() == model.num_parameters()
        assert f"{enc} positions" in repr(model)
    assert GPT(_cfg("learned"), be).num_parameters() - GPT(_cfg("rope"), be).num_parameters() == 40 * 16


def test_every_encoding_sees_the_order_of_the_tokens(backend_name):
    # Without positions, the last position attends to a set: [a, b, c, d] and [b, a, c, d] would give it the same
    # logits. Every encoding must tell them apart (and the encodings are different models).
    be = require_backend(backend_name, "float64")
    tokens = np.array([[4, 9, 1, 12], [9, 4, 1, 12]])
    last = {}
    for enc in ENCODINGS:
        logits = be.to_numpy(GPT(_cfg(enc, init_std=0.5), be, seed=2).forward(tokens))[:, -1]
        assert not np.allclose(logits[0], logits[1]), enc
        last[enc] = logits
    assert not np.allclose(last["sinusoidal"], last["rope"])


@pytest.mark.parametrize("enc", ENCODINGS)
def test_checkpoint_records_the_encoding_and_loads_it(backend_name, enc, tmp_path):
    be = require_backend(backend_name, "float64")
    model = GPT(_cfg(enc), be, seed=5)
    path = save_checkpoint(tmp_path / "ck", model, TOK)
    assert json.loads((path / "config.json").read_text())["model"]["pos_encoding"] == enc
    loaded, _ = load(path, be)
    assert loaded.config.pos_encoding == enc and loaded.config == model.config
    np.testing.assert_array_equal(be.to_numpy(loaded.forward(TOKENS)), be.to_numpy(model.forward(TOKENS)))


def test_a_checkpoint_from_before_pos_encoding_loads_as_learned(tmp_path):
    be = require_backend("numpy", "float64")
    model = GPT(CFG, be, seed=6)
    path = save_checkpoint(tmp_path / "ck", model, TOK)
    config = json.loads((path / "config.json").read_text())
    del config["model"]["pos_encoding"]  # as an earlier version wrote it, with a manifest that agrees
    data = json.dumps(config).encode()
    (path / "config.json").write_bytes(data)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["config.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(manifest))
    loaded, _ = load(path, be)
    assert loaded.config.pos_encoding == "learned" and loaded.config == model.config
    np.testing.assert_array_equal(loaded.forward(TOKENS), model.forward(TOKENS))


@pytest.mark.parametrize("enc", ["sinusoidal", "rope"])
def test_resume_mid_run_matches_an_uninterrupted_run(enc, tmp_path):
    be = require_backend("numpy", "float64")
    full = Trainer(GPT(_cfg(enc), be, seed=11), TOK, PRETRAIN, CHAT, RECIPE, seed=4, progress=False)
    full.train()

    def save_and_stop(trainer):
        if (trainer.state.phase, trainer.state.epoch) == (1, 2):
            save_checkpoint(tmp_path / "ck", trainer.model, trainer.tokenizer, trainer)
            raise _Stop

    stopped = Trainer(GPT(_cfg(enc), be, seed=11), TOK, PRETRAIN, CHAT, RECIPE, seed=4, progress=False,
                      on_epoch=save_and_stop)
    with pytest.raises(_Stop):
        stopped.train()
    ck = load_checkpoint(tmp_path / "ck", be)
    assert ck.model.config.pos_encoding == enc
    resumed = restore_trainer(ck, PRETRAIN, CHAT, progress=False)
    resumed.train()
    _assert_same_run(resumed, full, be, 0.0)


# -- the CLIs ---------------------------------------------------------------------------------------------------------

def test_train_cli_pos_encoding_is_saved_and_a_different_one_refused_on_resume(corpora, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    assert_ok(train(*corpora, *FAST, "--pos-encoding", "rope", "--out", str(out)))
    assert json.loads((out / "config.json").read_text())["model"]["pos_encoding"] == "rope"
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    r = train(*corpora, "--resume", str(copy), "--pos-encoding", "learned")
    assert_error(r, 2, "--pos-encoding learned", "pos_encoding rope", "leave the flag out")
    r = train(*corpora, "--resume", str(copy), "--pos-encoding", "rope")  # the checkpoint's own: fine
    assert_ok(r)
    assert "rope positions" in r.stdout


def test_train_cli_rejects_an_unknown_encoding(corpora):  # noqa: F811
    r = train(*corpora, *FAST, "--pos-encoding", "alibi")
    assert r.returncode == 2 and "invalid choice" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_text_cli_pos_encoding_is_saved_and_a_different_one_refused_on_resume(tmp_path):
    from tests.test_train_text_cli import CLI, TINY, _env

    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")

    def run(*args):
        return subprocess.run([*CLI, "--text", str(text), *args], capture_output=True,
                              text=True, timeout=120, env=_env(), encoding="utf-8")

    out = tmp_path / "run"
    first = run(*TINY, "--steps", "4", "--pos-encoding", "sinusoidal", "--out", str(out), "--sample-chars", "8")
    assert first.returncode == 0, first.stderr
    assert json.loads((out / "config.json").read_text())["model"]["pos_encoding"] == "sinusoidal"
    other = run("--resume", str(out), "--pos-encoding", "rope", "--sample-chars", "0")
    assert other.returncode == 2 and "--pos-encoding rope differs" in other.stderr, other.stderr
    assert "Traceback" not in other.stderr
