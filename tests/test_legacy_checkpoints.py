"""Checkpoints written before the one training engine (tests/data/legacy, by the code of commit 97b7c0c) still load
and resume to the same numbers as the uninterrupted runs of that code; their next save is the current format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from llm.checkpoint import load_checkpoint, restore_trainer
from llm.training.loop import build_step
from llm.training.text_run import TextRun, split_ids
from tests.conftest import require_backend

LEGACY = Path(__file__).parent / "data" / "legacy"
CORPORA = json.loads((LEGACY / "corpora.json").read_text(encoding="utf-8"))


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(LEGACY / name, tmp_path / name))


def test_an_old_book_trainer_checkpoint_resumes_bit_for_bit(tmp_path):
    path = _copy("text_run_v1", tmp_path)
    be = require_backend("numpy", "float64")
    run = TextRun.load(path, be)
    tok = run.tokenizer
    train, val = split_ids(np.asarray(tok.encode(CORPORA["text"]), np.int64), 0.1, run.model.config.max_seq_len)
    run.train_ids = train
    run.set_val(val)
    assert run.step == 3 and run.opt.t == 3 and run.settings.steps == 6
    for _ in range(3):
        run.train_step()
    run.read()
    np.testing.assert_array_equal(be.to_numpy(run.model.flat.param_buffer), np.load(LEGACY / "text_run_v1.after6.npy"))
    assert [r["step"] for r in run.steps] == list(range(1, 7))
    # saved again: the current format (training.json in the manifest), the old state file not carried over
    run.save(path)
    names = set(json.loads((path / "manifest.json").read_text())["files"])
    assert {"training.json", "optimizer.safetensors"} <= names and not (path / "text_run.safetensors").exists()
    again = TextRun.load(path, be, train, val)
    assert again.step == 6 and again.opt.t == 6 and again.text_info == run.text_info


def test_an_old_trainer_checkpoint_resumes_bit_for_bit(tmp_path):
    path = _copy("trainer_v1", tmp_path)
    be = require_backend("numpy", "float64")
    ck = load_checkpoint(path, be)
    assert ck.training.trainer == "recipe" and ck.training.counters == {"t": 3, "calls": 3, "skipped": 0}
    tr = restore_trainer(ck, CORPORA["facts"], CORPORA["chats"], progress=False,
                         step=build_step(ck.model, ck.recipe.adam(ck.model), workers=1))
    tr.train()
    assert tr.state.step == 10
    np.testing.assert_array_equal(be.to_numpy(tr.model.flat.param_buffer), np.load(LEGACY / "trainer_v1.after.npy"))
