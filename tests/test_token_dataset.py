"""Token datasets (llm/data/token_dataset.py, llm/data/prepare.py): the round trip through memory maps, the dtype,
streaming preparation equal to one-shot tokenization, every error path, and windows drawn from a memory map."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llm.data.prepare import first_safe_cut, iter_text, last_safe_cut, load_tokenizer, prepare
from llm.data.token_dataset import (META_FILE, bits_per_byte, check_destination, dtype_for, open_dataset,
                                    write_dataset)
from llm.data.tokenizers import CharTokenizer
from llm.errors import ConfigError, DataError
from llm.training.sources import TokenWindows, random_windows, windows_at

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n  indented line</s>\nAll:\nResolved. "
        "résolu — 東京 😀\n") * 40


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "book.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def test_round_trip_windows_equal_the_in_memory_ids(text_file, tmp_path):
    ds = prepare(text_file, tmp_path / "ds", val_fraction=0.1)
    assert isinstance(ds.train, np.memmap) and ds.train.dtype == np.dtype("<u2")
    tok = ds.tokenizer
    ids = np.asarray(tok.encode(TEXT), np.int64)
    assert np.array_equal(np.concatenate([ds.train, ds.val]), ids)
    n_train_bytes = ds.n_bytes("train")
    assert tok.encode(TEXT.encode()[:n_train_bytes].decode()) == list(ds.train)
    assert ds.n_bytes("train") + ds.n_bytes("val") == len(TEXT.encode())
    memory = TokenWindows(np.asarray(ds.train, np.int64), ds.val, 4, 16, 0, 8)
    mapped = TokenWindows(ds.train, ds.val, 4, 16, 0, 8)
    assert mapped.train_ids is ds.train  # not copied
    a = random_windows(memory.train_ids, 4, 16, np.random.default_rng(3))
    b = random_windows(mapped.train_ids, 4, 16, np.random.default_rng(3))
    assert all(np.array_equal(x, y) and y.dtype == np.int64 for x, y in zip(a, b))
    tokens, targets = windows_at(ds.train, np.array([0, 5]), 16)
    assert np.array_equal(tokens[1], ids[5:21]) and np.array_equal(targets[1], ids[6:22])
    reopened = open_dataset(tmp_path / "ds")
    assert reopened.fingerprint == ds.fingerprint and reopened.tokenizer == tok


def test_streaming_equals_one_shot_for_char_and_bpe(text_file, tmp_path):
    whole = prepare(text_file, tmp_path / "whole", chunk_bytes=1 << 20)
    small = prepare(text_file, tmp_path / "small", chunk_bytes=37)
    for split in ("train", "val"):
        assert np.array_equal(getattr(whole, split), getattr(small, split))
    assert whole.fingerprint == small.fingerprint
    bpe_whole = prepare(text_file, tmp_path / "bw", tokenizer="bpe", vocab_size=300)
    bpe_small = prepare(text_file, tmp_path / "bs", tokenizer=bpe_whole.tokenizer, chunk_bytes=53)
    ids = bpe_whole.tokenizer.encode(TEXT)
    assert list(np.concatenate([bpe_small.train, bpe_small.val])) == ids
    assert list(np.concatenate([bpe_whole.train, bpe_whole.val])) == ids


def test_safe_cuts_are_after_a_newline_between_printable_characters():
    buf = b"ab\n\ncd\n ef\ngh"
    assert last_safe_cut(buf) == 11 and buf[11:] == b"gh"
    assert last_safe_cut(b"no newline") == 0 and last_safe_cut(b"a\n\nb") == 0


def test_first_safe_cut_and_pieces(tmp_path):
    p = tmp_path / "t.txt"
    data = b"one\ntwo\n\nthree\nfour"
    p.write_bytes(data)
    assert first_safe_cut(p, 0, len(data)) == 4
    assert first_safe_cut(p, 5, len(data), chunk_bytes=2) == 15
    assert first_safe_cut(p, 16, len(data)) == len(data)
    assert "".join(iter_text(p, 0, len(data), chunk_bytes=3)) == data.decode()


def test_dtype_is_uint16_up_to_65536_ids_then_uint32(tmp_path):
    assert dtype_for(65536) == "uint16" and dtype_for(65537) == "uint32" and dtype_for(68) == "uint16"
    text = "".join(chr(0x10000 + i) for i in range(65540)) + "\n" + "x\ny\n" * 10
    p = tmp_path / "wide.txt"
    p.write_text(text, encoding="utf-8")
    ds = prepare(p, tmp_path / "wide", val_fraction=0)
    assert ds.meta["dtype"] == "uint32" and ds.train.dtype == np.dtype("<u4")
    assert ds.tokenizer.vocab_size > 65536
    assert list(ds.train) == ds.tokenizer.encode(text)


def test_bits_per_byte():
    assert bits_per_byte(math.log(2), 10, 10) == pytest.approx(1.0)
    assert bits_per_byte(1.0, 5, 10) == pytest.approx(0.5 / math.log(2))


def test_load_tokenizer_from_a_dataset_a_checkpoint_file_or_bpe_files(text_file, tmp_path):
    ds = prepare(text_file, tmp_path / "bpe", tokenizer="bpe", vocab_size=280)
    assert load_tokenizer(tmp_path / "bpe") == ds.tokenizer
    assert load_tokenizer(tmp_path / "bpe" / "tokenizer.json") == ds.tokenizer
    ds.tokenizer.save(tmp_path / "files")
    assert load_tokenizer(tmp_path / "files").to_dict() == ds.tokenizer.to_dict()
    with pytest.raises(DataError) as exc:
        load_tokenizer(tmp_path)
    assert exc.value.param == "tokenizer_from" and "\n" not in str(exc.value)


# -- error paths -----------------------------------------------------------------------------------------------------

def _one_line_data_error(fn, *words, param="data"):
    with pytest.raises(DataError) as exc:
        fn()
    msg = str(exc.value)
    assert "\n" not in msg and exc.value.param == param, msg
    assert "--" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.fixture
def dataset(text_file, tmp_path):
    prepare(text_file, tmp_path / "ds")
    return tmp_path / "ds"


def test_a_missing_or_foreign_directory(tmp_path):
    _one_line_data_error(lambda: open_dataset(tmp_path / "nowhere"), "does not exist")
    (tmp_path / "other").mkdir()
    _one_line_data_error(lambda: open_dataset(tmp_path / "other"), "not a token dataset", "meta.json")


@pytest.mark.parametrize("name", ["train.bin", "val.bin", "tokenizer.json"])
def test_a_missing_file(dataset, name):
    (dataset / name).unlink()
    _one_line_data_error(lambda: open_dataset(dataset), name, "missing")


def test_a_file_of_the_wrong_size_for_the_dtype(dataset):
    with open(dataset / "train.bin", "ab") as f:
        f.write(b"\0")
    _one_line_data_error(lambda: open_dataset(dataset), "train.bin", "bytes", "uint16")


def test_an_id_outside_the_vocabulary(dataset):
    ids = np.fromfile(dataset / "val.bin", "<u2")
    ids[3] = 60000
    ids.tofile(dataset / "val.bin")
    _one_line_data_error(lambda: open_dataset(dataset), "60000", "outside the vocabulary")


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.update(format_version=99), ["format_version"]),
    (lambda m: m.update(dtype="int8"), ["dtype"]),
    (lambda m: m.update(vocab_size=7), ["vocab_size"]),
    (lambda m: m.update(vocab_size=70000), ["uint16"]),
    (lambda m: m["splits"]["train"].pop("tokens"), ["token and byte counts"]),
    (lambda m: m["tokenizer"].update(sha256="0" * 64), ["SHA-256"]),
    (lambda m: m.update(format="other"), ["token dataset"]),
])
def test_a_hand_edited_meta(dataset, edit, words):
    meta = json.loads((dataset / META_FILE).read_text())
    edit(meta)
    (dataset / META_FILE).write_text(json.dumps(meta))
    _one_line_data_error(lambda: open_dataset(dataset), *words)


def test_meta_that_is_not_json(dataset):
    (dataset / META_FILE).write_text("{not json")
    _one_line_data_error(lambda: open_dataset(dataset), "not valid JSON")


def test_prepare_refuses_what_it_did_not_write_unless_told(text_file, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    msg = _one_line_data_error(lambda: prepare(text_file, other), "not a token dataset", "`overwrite`", param="out")
    assert "`out`" in msg
    assert sorted(p.name for p in other.iterdir()) == ["mine.txt"]
    ds = prepare(text_file, other, overwrite=True)
    assert (other / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in other.iterdir()) == ["meta.json", "mine.txt", "tokenizer.json", "train.bin",
                                                       "val.bin"]
    _one_line_data_error(lambda: prepare(text_file, other), "already holds a token dataset", param="out")
    again = prepare(text_file, other, overwrite=True, tokenizer="bpe", vocab_size=270)
    assert again.tokenizer.vocab_size == 270 and ds.fingerprint != again.fingerprint
    assert (other / "mine.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    _one_line_data_error(lambda: check_destination(tmp_path / "file", True), "not a directory", param="out")


def test_a_failed_write_leaves_only_what_was_there(text_file, tmp_path):
    def parts():
        yield [1, 2, 3]
        raise KeyboardInterrupt

    out = tmp_path / "half"
    with pytest.raises(KeyboardInterrupt):
        write_dataset(out, CharTokenizer.from_texts(["abc"]), {"train": parts(), "val": []},
                      source={"name": "x", "bytes": 3, "sha256": "0" * 64}, split_bytes={"train": 3, "val": 0},
                      val_fraction=0.0)
    assert not out.exists()  # made by the failed call, so removed with its temporary files
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(KeyboardInterrupt):
        write_dataset(out, CharTokenizer.from_texts(["abc"]), {"train": parts(), "val": []},
                      source={"name": "x", "bytes": 3, "sha256": "0" * 64}, split_bytes={"train": 3, "val": 0},
                      val_fraction=0.0, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_prepare_input_errors(tmp_path, text_file):
    _one_line_data_error(lambda: prepare(tmp_path / "missing.txt", tmp_path / "o"), "not a file", param="text")
    (tmp_path / "empty.txt").write_text("")
    _one_line_data_error(lambda: prepare(tmp_path / "empty.txt", tmp_path / "o"), "empty", param="text")
    (tmp_path / "bad.txt").write_bytes(b"abc\nde\xff\nfg\n")
    _one_line_data_error(lambda: prepare(tmp_path / "bad.txt", tmp_path / "o"), "UTF-8", "offset 6", param="text")
    (tmp_path / "oneline.txt").write_text("a" * 100)
    _one_line_data_error(lambda: prepare(tmp_path / "oneline.txt", tmp_path / "o"), "line break",
                         param="val_fraction")
    with pytest.raises(ConfigError):
        prepare(text_file, tmp_path / "o", tokenizer="word")
    with pytest.raises(ConfigError):
        prepare(text_file, tmp_path / "o", tokenizer="bpe")
    with pytest.raises(ConfigError):
        prepare(text_file, tmp_path / "o", tokenizer="char", vocab_size=300)
    assert not (tmp_path / "o").exists()


def test_token_windows_refuse_what_is_not_a_1d_integer_stream():
    with pytest.raises(ConfigError) as exc:
        TokenWindows(np.zeros((4, 4), np.int64), np.zeros(0), 2, 2, 0, 2)
    assert exc.value.param == "train_ids"
    with pytest.raises(ConfigError):
        TokenWindows(np.zeros(40, np.float32), np.zeros(0), 2, 2, 0, 2)
