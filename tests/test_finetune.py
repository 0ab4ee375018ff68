"""`arraygpt text --init-from DIR`: a new run that starts from a pretrained model's weights and tokenizer. Its
result equals the library's TextRun started from the same loaded model (float64), it continues with --resume, and
shape conflicts, characters the tokenizer lacks and --resume together with it are one line each."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm.checkpoint import load
from llm.training.text_run import TextRun, TextSettings, split_ids
from tests.evalkit import DEVICE_OF, TEXT, char_checkpoint, one_error_line, run

STEPS = ["--steps", "6", "--batch-size", "3", "--eval-every", "3", "--eval-batches", "2", "--sample-chars", "0",
         "--workers", "1"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return char_checkpoint(tmp_path_factory.mktemp("ft") / "pre", TEXT)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ft") / "book.txt"
    path.write_text(TEXT[::-1], encoding="utf-8")  # the same characters, another text
    return path


def _assert_trained_as_the_library(model, tok, text, got):
    # the same six steps as the command's (STEPS), run by TextRun on `model`: the weights must equal `got`'s
    ids = np.asarray(tok.encode(text), np.int64)
    train, val = split_ids(ids, 0.1, model.config.max_seq_len)
    settings = TextSettings(steps=6, batch_size=3, eval_batches=2)
    settings.min_lr, settings.warmup_steps = settings.final_lr, settings.warmup
    TextRun(model, tok, train, val, settings).run()
    for name, p in model.params.items():
        np.testing.assert_allclose(got.backend.to_numpy(got.params[name]), p, rtol=1e-10, atol=1e-12, err_msg=name)


def test_init_from_trains_the_pretrained_weights_as_the_library_does(pretrained, text_file, tmp_path):
    out = tmp_path / "ft"
    proc = run("text", "--text", str(text_file), "--init-from", str(pretrained), "--out", str(out), *STEPS)
    assert proc.returncode == 0, proc.stderr
    got, got_tok = load(out, "cpu")

    model, tok = load(pretrained, "cpu")  # float64, as saved
    assert got_tok == tok
    _assert_trained_as_the_library(model, tok, text_file.read_text(encoding="utf-8"), got)
    before, _ = load(pretrained, "cpu")
    assert not np.allclose(before.params["head.weight"], model.params["head.weight"])  # it did train

    more = run("text", "--text", str(text_file), "--resume", str(out), "--steps", "8", "--sample-chars", "0")
    assert more.returncode == 0, more.stderr  # an ordinary book-trainer checkpoint
    assert json.loads((out / "training.json").read_text())["state"]["step"] == 8


def test_every_backend_fine_tunes_as_numpy(backend_name, pretrained, text_file, tmp_path):
    runs = []
    for i, device in enumerate(("cpu", DEVICE_OF[backend_name])):
        out = tmp_path / f"run{i}"
        proc = run("text", "--text", str(text_file), "--init-from", str(pretrained), "--out", str(out), *STEPS,
                   "--device", device)
        assert proc.returncode == 0, proc.stderr
        runs.append(load(out, "cpu")[0])
    base, other = runs
    for name, p in base.params.items():  # float64, as the pretrained checkpoint
        np.testing.assert_allclose(other.params[name], p, rtol=1e-9, atol=1e-12, err_msg=name)


def test_the_loss_falls_from_the_pretrained_models(pretrained, text_file, tmp_path):
    out = tmp_path / "ft"
    before = json.loads(run("eval", "--model", str(pretrained), "--text", str(text_file), "--json").stdout)["loss"]
    proc = run("text", "--text", str(text_file), "--init-from", str(pretrained), "--out", str(out), "--steps", "40",
               "--batch-size", "8", "--lr", "3e-3", "--sample-chars", "0", "--eval-every", "40")
    assert proc.returncode == 0, proc.stderr
    after = json.loads(run("eval", "--model", str(out), "--text", str(text_file), "--json").stdout)["loss"]
    assert after < before - 0.1, (before, after)


@pytest.mark.parametrize("flags, words", [
    (["--d-model", "32"], "--d-model 32 conflicts with the model in"),
    (["--max-seq-len", "8"], "--max-seq-len 8 conflicts"),
    (["--pos-encoding", "rope"], "--pos-encoding rope conflicts"),
])
def test_a_shape_that_conflicts_with_the_model_is_refused(pretrained, text_file, flags, words):
    proc = run("text", "--text", str(text_file), "--init-from", str(pretrained), *flags, *STEPS)
    assert words in one_error_line(proc, 2)
    assert "step" not in proc.stdout


def test_the_same_shape_given_explicitly_is_fine(pretrained, text_file):
    proc = run("text", "--text", str(text_file), "--init-from", str(pretrained), "--d-model", "16",
               "--max-seq-len", "16", *STEPS)
    assert proc.returncode == 0, proc.stderr


def test_characters_the_tokenizer_lacks_are_named(pretrained, tmp_path):
    path = tmp_path / "other.txt"
    path.write_text(TEXT + "Zoë\n", encoding="utf-8")
    line = one_error_line(run("text", "--text", str(path), "--init-from", str(pretrained), *STEPS), 2)
    assert "'Z', 'ë'" in line and f"the first at character {len(TEXT):,}" in line, line


def test_other_bad_input_is_one_line(pretrained, text_file, tmp_path):
    cases = [(["--resume", str(pretrained)], 2, "--init-from starts a new run"),
             (["--init-from", ""], 2, "--init-from is empty"),
             (["--init-from", str(tmp_path / "nope")], 1, "does not exist")]
    for args, code, words in cases:
        if args[0] == "--resume":
            args = ["--init-from", str(pretrained), *args]
        line = one_error_line(run("text", "--text", str(text_file), *args, *STEPS), code)
        assert words in line, line


def test_init_from_a_hugging_face_directory(tmp_path, text_file):
    from llm import load_hf
    from tests.evalkit import hf_gpt2_dir

    path, _, _ = hf_gpt2_dir(tmp_path / "gpt2")
    book = tmp_path / "book.txt"
    book.write_text(text_file.read_text(encoding="utf-8") + "Zoë\n", encoding="utf-8")  # byte-level: any text
    out = tmp_path / "ft"
    proc = run("text", "--text", str(book), "--init-from", str(path), "--out", str(out), *STEPS)
    assert proc.returncode == 0, proc.stderr
    got, got_tok = load(out, "cpu")

    model, tok = load_hf(path, "cpu")
    assert got_tok == tok
    _assert_trained_as_the_library(model, tok, book.read_text(encoding="utf-8"), got)
    assert run("eval", "--model", str(out), "--text", str(book)).returncode == 0


def test_init_from_on_a_dataset_of_the_models_tokenizer(pretrained, text_file, tmp_path):
    book = tmp_path / "book.txt"
    book.write_text(text_file.read_text(encoding="utf-8") * 4, encoding="utf-8")
    data = tmp_path / "data"
    proc = run("prepare", "--text", str(book), "--out", str(data), "--tokenizer-from", str(pretrained))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "ft"
    proc = run("text", "--data", str(data), "--init-from", str(pretrained), "--out", str(out), *STEPS)
    assert proc.returncode == 0, proc.stderr
    assert "starting from the model in" in proc.stdout and "dataset" in proc.stdout
    (tmp_path / "x.txt").write_text(book.read_text(encoding="utf-8") + "#", encoding="utf-8")
    assert run("prepare", "--text", str(tmp_path / "x.txt"), "--out", str(tmp_path / "d2")).returncode == 0
    line = one_error_line(run("text", "--data", str(tmp_path / "d2"), "--init-from", str(pretrained), *STEPS), 2)
    assert "another tokenizer" in line, line
    line = one_error_line(run("text", "--text", str(text_file), "--init-from", str(pretrained), "--tokenizer", "char",
                              *STEPS), 2)
    assert "--init-from brings its model's tokenizer" in line, line


def test_the_memory_check_counts_one_micro_batch(pretrained, text_file, tmp_path, monkeypatch, capsys):
    # with --micro-batch M one forward pass holds M sequences: the check before fine-tuning counts M, as a new run's
    from llm.cli import cmd_text, text_init

    seen = []
    monkeypatch.setattr(text_init, "check_memory", lambda config, batch, *a, **k: seen.append(batch))
    code = cmd_text.main(["--text", str(text_file), "--init-from", str(pretrained), *STEPS, "--micro-batch", "2",
                          "--out", str(tmp_path / "ft")])
    capsys.readouterr()
    assert code == 0 and seen == [2]
