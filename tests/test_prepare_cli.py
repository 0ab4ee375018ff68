"""`arraygpt prepare` and `arraygpt text --data / --tokenizer / --tokenizer-from` end to end, with tiny settings:
a dataset trained on through memory maps, bits per byte reported, resume refused on another dataset or source,
checkpoints that keep their tokenizer (char and BPE) for sampling and chat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm.cli import cmd_prepare, cmd_text
from llm.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--max-seq-len", "16", "--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--d-ff", "32",
        "--batch-size", "4", "--steps", "6", "--eval-every", "3", "--eval-batches", "2", "--sample-chars", "20",
        "--workers", "1"]
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n" * 30


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("book") / "book.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _prepare(capsys, *args) -> tuple[int, str, str]:
    code = cmd_prepare.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _text(capsys, *args) -> tuple[int, str, str]:
    code = cmd_text.main([*TINY, *[str(a) for a in args]])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prepare_through_the_arraygpt_command(text_file, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8")
    proc = subprocess.run([sys.executable, "-m", "llm", "prepare", "--text", str(text_file), "--out",
                           str(tmp_path / "ds")], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "uint16" in proc.stdout and "CharTokenizer" in proc.stdout
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["source"]["name"] == "book.txt" and meta["source"]["bytes"] == len(TEXT.encode())
    assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == len(TEXT.encode())


def test_prepare_then_train_on_the_dataset_and_resume_only_on_it(text_file, tmp_path, capsys):
    assert _prepare(capsys, "--text", text_file, "--out", tmp_path / "ds")[0] == 0
    code, out, err = _text(capsys, "--data", tmp_path / "ds", "--out", tmp_path / "run")
    assert code == 0, err
    assert "memory-mapped" in out and "bits per byte" in out, out
    record = json.loads((tmp_path / "run" / "training.json").read_text())
    meta_sha = __import__("hashlib").sha256((tmp_path / "ds" / "meta.json").read_bytes()).hexdigest()
    assert record["text"] == {"dataset": meta_sha, "name": "book.txt", "tokens": len(TEXT)}
    code, out, err = _text(capsys, "--data", tmp_path / "ds", "--resume", tmp_path / "run", "--steps", "9")
    assert code == 0 and "resumed at step 6" in out, err
    # another dataset with the same tokenizer: its fingerprint differs
    (tmp_path / "other.txt").write_text(TEXT.replace("speak", "paeks"), encoding="utf-8")
    assert _prepare(capsys, "--text", tmp_path / "other.txt", "--tokenizer-from", tmp_path / "ds",
                    "--out", tmp_path / "ds2")[0] == 0
    code, out, err = _text(capsys, "--data", tmp_path / "ds2", "--resume", tmp_path / "run", "--steps", "12")
    assert code == 2 and "not the dataset" in err and "Traceback" not in err and err.count("\n") == 1, err
    code, out, err = _text(capsys, "--text", text_file, "--resume", tmp_path / "run", "--steps", "12")
    assert code == 2 and "was trained on the dataset" in err, err
    # a dataset with another tokenizer
    assert _prepare(capsys, "--text", text_file, "--tokenizer", "bpe", "--vocab-size", "270",
                    "--out", tmp_path / "bpe")[0] == 0
    code, out, err = _text(capsys, "--data", tmp_path / "bpe", "--resume", tmp_path / "run", "--steps", "12")
    assert code == 2 and "another tokenizer" in err, err


def test_a_text_run_refuses_a_dataset_on_resume(text_file, tmp_path, capsys):
    assert _text(capsys, "--text", text_file, "--out", tmp_path / "run")[0] == 0
    assert _prepare(capsys, "--text", text_file, "--out", tmp_path / "ds")[0] == 0
    code, out, err = _text(capsys, "--data", tmp_path / "ds", "--resume", tmp_path / "run", "--steps", "9")
    assert code == 2 and "trained on a text file" in err, err


def test_bpe_checkpoints_keep_their_tokenizer_for_sampling_and_chat(text_file, tmp_path, capsys):
    code, out, err = _text(capsys, "--text", text_file, "--tokenizer", "bpe", "--vocab-size", "300",
                           "--out", tmp_path / "run")
    assert code == 0, err
    assert "BPETokenizer, 300 symbols" in out and "bits per byte" in out
    ckpt = load_checkpoint(tmp_path / "run", "cpu")
    assert type(ckpt.tokenizer).__name__ == "BPETokenizer" and ckpt.tokenizer.vocab_size == 300
    code, out, err = _text(capsys, "--text", text_file, "--resume", tmp_path / "run", "--steps", "8")
    assert code == 0 and "resumed at step 6" in out, err
    from llm.cli import cmd_chat

    assert cmd_chat.main(["--checkpoint", str(tmp_path / "run"), "--prompt", "First", "--max-new-tokens", "5"]) == 0
    capsys.readouterr()


def test_char_checkpoints_keep_their_tokenizer_and_tokenizer_from_reuses_one(text_file, tmp_path, capsys):
    assert _text(capsys, "--text", text_file, "--out", tmp_path / "char")[0] == 0
    char_tok = load_checkpoint(tmp_path / "char", "cpu").tokenizer
    assert type(char_tok).__name__ == "CharTokenizer" and char_tok.vocab == \
        ["<pad>", "<unk>", "</s>", *sorted(set(TEXT))]
    code, out, err = _text(capsys, "--text", text_file, "--tokenizer-from", tmp_path / "char", "--out",
                           tmp_path / "again")
    assert code == 0, err
    assert load_checkpoint(tmp_path / "again", "cpu").tokenizer == char_tok


@pytest.mark.parametrize("flags, words", [
    ([], ["one of --text", "--data"]),
    (["--text", "X", "--data", "Y"], ["one of --text"]),
    (["--text", "X", "--tokenizer", "bpe"], ["--vocab-size"]),
    (["--text", "X", "--vocab-size", "300"], ["--vocab-size"]),
    (["--text", "X", "--tokenizer", "char", "--tokenizer-from", "D"], ["not both"]),
    (["--data", "D", "--tokenizer", "char"], ["--tokenizer", "dataset has its tokenizer"]),
    (["--data", "D", "--val-fraction", "0.2"], ["--val-fraction", "prepare"]),
    (["--data", "D", "--max-chars", "20"], ["--max-chars"]),
    (["--text", "X", "--resume", "R", "--tokenizer-from", "D"], ["--tokenizer-from", "keeps its checkpoint's"]),
    (["--data", ""], ["--data is empty"]),
])
def test_source_flags_are_one_line_errors(capsys, flags, words):
    code, out, err = _text(capsys, *flags)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err


def test_bad_dataset_directories_are_one_line(text_file, tmp_path, capsys):
    code, out, err = _text(capsys, "--data", tmp_path / "nothing")
    assert code == 2 and "--data" not in out and "does not exist" in err and err.count("\n") == 1, err
    assert _prepare(capsys, "--text", text_file, "--out", tmp_path / "ds")[0] == 0
    (tmp_path / "ds" / "val.bin").write_bytes(b"\0\0\0")
    code, out, err = _text(capsys, "--data", tmp_path / "ds")
    assert code == 2 and "val.bin has 3 bytes" in err and err.count("\n") == 1, err


def test_prepare_flags_and_destinations(text_file, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    code, out, err = _prepare(capsys, "--text", text_file, "--out", tmp_path / "notes")
    assert code == 2 and "--overwrite" in err and "--out" in err and err.count("\n") == 1, err
    assert _prepare(capsys, "--text", text_file, "--out", tmp_path / "notes", "--overwrite")[0] == 0
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    code, out, err = _prepare(capsys, "--text", tmp_path / "none.txt", "--out", tmp_path / "o")
    assert code == 2 and "--text" in err and "not a file" in err, err
    code, out, err = _prepare(capsys, "--text", text_file, "--out", tmp_path / "o", "--tokenizer", "bpe")
    assert code == 2 and "--vocab-size" in err, err
    code, out, err = _prepare(capsys, "--text", text_file, "--out", tmp_path / "o", "--tokenizer-from",
                              tmp_path / "notes" / "keep.txt")
    assert code == 2 and "--tokenizer-from" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
