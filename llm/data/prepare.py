"""Tokenize a text file once into a token dataset (:mod:`llm.data.token_dataset`), with bounded memory (host side).

    ds = prepare("book.txt", "data/book", tokenizer="char", val_fraction=0.1)
    ds = prepare("book.txt", "data/book-bpe", tokenizer="bpe", vocab_size=2048)
    ds = prepare("more.txt", "data/more", tokenizer=ds.tokenizer)            # one tokenizer for several texts

The file is read in chunks of about `chunk_bytes` (1 MiB), each cut at a *safe boundary*: just after a newline
that has a printable ASCII character on both sides. There the character tokenizer, the word pattern of byte-level
BPE and the ``</s>`` / ``<|endoftext|>`` literals all split the same way whether or not the text is cut, so the ids
are those of tokenizing the whole text at once (tests/test_token_dataset.py checks it). A chunk with no such
boundary grows until one comes (a text with no line breaks at all is read whole).

Passes over the file: one for its size and SHA-256 and where the validation part starts (the first safe boundary
after ``(1 - val_fraction)`` of its bytes), which also collects the characters of a new character tokenizer; a new
BPE tokenizer learns its merges from the first `bpe_train_bytes` of the training part; then one pass writes the ids.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llm import checks
from llm.data.token_dataset import TokenDataset, check_destination, write_dataset
from llm.errors import ConfigError, DataError

CHUNK_BYTES = 1 << 20
BPE_TRAIN_BYTES = 16 << 20  # what a new BPE tokenizer learns from, at most (the training part's first bytes)
TOKENIZERS = ("char", "bpe")


def _is_safe(buf: bytes, i: int) -> bool:
    """A cut before ``buf[i]`` changes no tokenization: ``buf[i - 1]`` is a newline between two printable ASCII
    characters."""
    return 2 <= i < len(buf) and buf[i - 1] == 10 and 0x21 <= buf[i - 2] <= 0x7E and 0x21 <= buf[i] <= 0x7E


def last_safe_cut(buf: bytes) -> int:
    """The largest safe cut position in `buf` (0: none)."""
    pos = len(buf) - 1
    while True:
        pos = buf.rfind(b"\n", 0, pos)
        if pos < 0:
            return 0
        if _is_safe(buf, pos + 1):
            return pos + 1


def first_safe_cut(path: str | os.PathLike, start: int, size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """The first safe cut at or after byte `start` of the file (`size` if there is none)."""
    with open(path, "rb") as f:
        at = max(start - 2, 0)
        f.seek(at)
        buf = f.read(chunk_bytes + 2)
        while buf:
            pos = buf.find(b"\n", max(start - at - 1, 0))
            while pos >= 0:
                if _is_safe(buf, pos + 1):
                    return at + pos + 1
                pos = buf.find(b"\n", pos + 1)
            more = f.read(chunk_bytes)
            if not more:
                break
            at, buf = at + len(buf) - 2, buf[-2:] + more
    return size


def iter_text(path: str | os.PathLike, start: int, end: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The text of bytes ``[start, end)`` of the file in pieces cut at safe boundaries (`start` and `end` must be
    safe cuts or the file's ends); DataError where the bytes are not UTF-8."""
    with open(path, "rb") as f:
        f.seek(start)
        left, buf = end - start, b""
        while left > 0 or buf:
            more = f.read(min(chunk_bytes, left)) if left > 0 else b""
            left -= len(more)
            buf += more
            cut = len(buf) if left <= 0 else last_safe_cut(buf)
            if cut == 0:
                continue  # no boundary yet: read on
            yield _decode(buf[:cut], path, start)
            start, buf = start + cut, buf[cut:]


def _decode(data: bytes, path: Any, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {offset + exc.start}); give a UTF-8 "
                        "plain-text file", param="text") from None


def scan(path: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES, chars: bool = False) -> tuple[int, str, set | None]:
    """One pass: the file's size, its SHA-256 and (with `chars`) the set of its character tokens."""
    from llm.data.tokenizers import EOS, CharTokenizer

    sha, size, found = hashlib.sha256(), 0, set() if chars else None
    with open(path, "rb") as f:
        while data := f.read(chunk_bytes):
            sha.update(data)
            size += len(data)
    if chars:
        for text in iter_text(path, 0, size, chunk_bytes):
            found.update(CharTokenizer._tokenize(text) if EOS in text else text)
    return size, sha.hexdigest(), found


def char_encoder(tokenizer: Any) -> Any:
    """``encode(text) -> uint32 ids`` for a character tokenizer, vectorized (a code-point table; the tokenizer's own
    encode where the text holds ``</s>``); the tokenizer's encode for any other kind."""
    from llm.data.tokenizers import EOS, CharTokenizer

    if not isinstance(tokenizer, CharTokenizer):
        return lambda text: np.asarray(tokenizer.encode(text), np.int64)
    vocab = tokenizer.vocab
    single = {ord(t): i for i, t in enumerate(vocab) if len(t) == 1}
    table = np.full(max(single, default=0) + 2, tokenizer.unk_id, np.int64)
    for cp, i in single.items():
        table[cp] = i

    def encode(text: str) -> np.ndarray:
        if EOS in text:
            return np.asarray(tokenizer.encode(text), np.int64)
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), "<u4").astype(np.int64)
        return table[np.minimum(cps, len(table) - 1)]

    return encode


def build_tokenizer(kind: str, vocab_size: int | None, path: Any, train_end: int, chars: set | None,
                    chunk_bytes: int, bpe_train_bytes: int) -> Any:
    """A new tokenizer of `kind` for the file: "char" from its characters, "bpe" learned from the training part."""
    from llm.data.tokenizers import SPECIAL_TOKENS, CharTokenizer

    if kind == "char":
        return CharTokenizer([*SPECIAL_TOKENS, *sorted(chars - set(SPECIAL_TOKENS))])
    from llm.data.bpe import BPETokenizer

    end = first_safe_cut(path, min(train_end, bpe_train_bytes), train_end, chunk_bytes)
    return BPETokenizer.train(list(iter_text(path, 0, end, chunk_bytes)), vocab_size)


def prepare(text: str | os.PathLike, out: str | os.PathLike, *, tokenizer: Any = "char", vocab_size: int | None = None,
            val_fraction: float = 0.1, overwrite: bool = False, chunk_bytes: int = CHUNK_BYTES,
            bpe_train_bytes: int = BPE_TRAIN_BYTES) -> TokenDataset:
    """Tokenize the UTF-8 file `text` into a dataset in directory `out` and return it opened. `tokenizer` is
    "char", "bpe" (then `vocab_size` is required) or a tokenizer object (reused as it is)."""
    checks.fraction(val_fraction, "val_fraction")
    checks.positive_int(chunk_bytes, "chunk_bytes")
    if isinstance(tokenizer, str):
        checks.one_of(tokenizer, TOKENIZERS, "tokenizer")
        if (tokenizer == "bpe") != (vocab_size is not None):
            raise ConfigError("`vocab_size` is for a new bpe tokenizer: give it with `tokenizer` bpe (and only then)",
                              param="vocab_size")
        if vocab_size is not None:
            checks.int_at_least(vocab_size, 257, "vocab_size")
    path = Path(text)
    if not path.is_file():
        raise DataError(f"`text` {path} is not a file; give a UTF-8 plain-text file", param="text")
    check_destination(out, overwrite)  # before any pass over the file
    size, sha, chars = scan(path, chunk_bytes, chars=tokenizer == "char")
    if size == 0:
        raise DataError(f"`text` {path} is empty; give a UTF-8 plain-text file with some text in it", param="text")
    split = size if val_fraction == 0 else first_safe_cut(path, size - int(size * val_fraction), size, chunk_bytes)
    if val_fraction > 0 and split >= size:
        raise DataError(f"{path} has no line break to start a validation part of {val_fraction:g} of its bytes at; "
                        "give a larger `val_fraction`, or 0 for none", param="val_fraction")
    if isinstance(tokenizer, str):
        tokenizer = build_tokenizer(tokenizer, vocab_size, path, split, chars, chunk_bytes, bpe_train_bytes)
    encode = char_encoder(tokenizer)
    parts = {"train": (encode(t) for t in iter_text(path, 0, split, chunk_bytes)),
             "val": (encode(t) for t in iter_text(path, split, size, chunk_bytes))}
    return write_dataset(out, tokenizer, parts, source={"name": path.name, "bytes": size, "sha256": sha},
                         split_bytes={"train": split, "val": size - split}, val_fraction=val_fraction,
                         overwrite=overwrite)


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer saved in `path`: a dataset's or a checkpoint's directory (its ``tokenizer.json``), a directory
    of BPE files (``vocab.json`` and ``merges.txt``, :meth:`llm.data.bpe.BPETokenizer.save`), or a tokenizer.json."""
    import json

    from llm.data.tokenizers import tokenizer_from_dict

    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if p.is_dir() and not file.is_file() and (p / "vocab.json").is_file() and (p / "merges.txt").is_file():
        from llm.data.bpe import BPETokenizer

        return BPETokenizer.load(p)
    if not file.is_file():
        raise DataError(f"`tokenizer_from` {p} holds no saved tokenizer (a tokenizer.json, or vocab.json and merges.txt); give a "
                        "dataset, a checkpoint or a saved BPE tokenizer", param="tokenizer_from")
    try:
        return tokenizer_from_dict(json.loads(file.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise DataError(f"`tokenizer_from` {file} is not a tokenizer ({str(exc).splitlines()[0]}); give a dataset, a checkpoint or a "
                        "saved BPE tokenizer", param="tokenizer_from") from None
