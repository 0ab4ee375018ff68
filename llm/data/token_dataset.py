"""Token datasets: a text tokenized once into ``train.bin`` / ``val.bin``, read back with ``numpy.memmap`` (host side).

A dataset is a directory (nanoGPT's and llm.c's habit; the format is ours)::

    train.bin        the training part's token ids, flat, little-endian uint16 (uint32 when a vocabulary has more
                     than 65,536 ids), no header
    val.bin          the validation part's (the last ``val_fraction`` of the text's bytes, cut at a line boundary)
    tokenizer.json   the tokenizer's ``to_dict()`` (any kind :func:`llm.data.tokenizers.tokenizer_from_dict` reads)
    meta.json        written last, the marker that makes a directory a dataset: {"format": "arraygpt-tokens",
                     "format_version": 1, "dtype", "vocab_size", "tokenizer": {"type", "file", "sha256"},
                     "source": {"name", "bytes", "sha256"}, "val_fraction",
                     "splits": {"train" | "val": {"file", "tokens", "bytes", "sha256"}}}

``splits.*.bytes`` is the UTF-8 size of the text each part holds, so a loss in nats per token becomes bits per byte
(:func:`bits_per_byte`), the one measure two tokenizers share. A dataset's fingerprint (what a checkpoint records)
is the SHA-256 of its ``meta.json``, which holds the SHA-256 of every other file.

:func:`open_dataset` checks the directory (every file there, sizes that fit the dtype, the vocabulary against the
tokenizer, no id outside it) and maps the two parts without reading them; :func:`write_dataset` writes one from
streams of token-id chunks (:mod:`llm.data.prepare` tokenizes a text file into them with bounded memory).
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm import checks
from llm.errors import DataError

FORMAT = "arraygpt-tokens"
FORMAT_VERSION = 1
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"
SPLIT_FILES = {"train": "train.bin", "val": "val.bin"}
DATASET_FILES = (*SPLIT_FILES.values(), TOKENIZER_FILE, META_FILE)
DTYPES = ("uint16", "uint32")
_SCAN = 1 << 22  # ids checked per slice when a dataset is opened (bounded memory)
_REPREPARE = "prepare it again with `arraygpt prepare`"


def dtype_for(vocab_size: int) -> str:
    """The narrowest dtype that holds every id of a `vocab_size` vocabulary: uint16 up to 65,536 ids, else uint32."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def bits_per_byte(loss: float, tokens: int, n_bytes: int) -> float:
    """A mean loss in nats per token over a text of `tokens` tokens and `n_bytes` UTF-8 bytes, in bits per byte."""
    return loss * tokens / n_bytes / math.log(2)


def is_dataset(path: str | os.PathLike) -> bool:
    """True when `path` is a directory holding a dataset's ``meta.json`` (of any version)."""
    meta = Path(path) / META_FILE
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _fail(message: str) -> DataError:
    return DataError(message, param="data")


# -- reading -------------------------------------------------------------------------------------------------------

@dataclass
class TokenDataset:
    """An opened dataset: ``train`` and ``val`` are read-only memory maps of the ids (a zero-length array for an
    empty part); ``fingerprint`` is the SHA-256 of ``meta.json``."""

    path: Path
    meta: dict
    tokenizer: Any
    train: np.ndarray
    val: np.ndarray
    fingerprint: str

    def tokens(self, split: str) -> int:
        """Token ids in `split` ("train" or "val")."""
        return int(self.meta["splits"][split]["tokens"])

    def n_bytes(self, split: str) -> int:
        """UTF-8 bytes of the text `split` holds."""
        return int(self.meta["splits"][split]["bytes"])

    @property
    def info(self) -> dict:
        """What a checkpoint records of the dataset it trained on: ``{"fingerprint", "name", "tokens"}``."""
        return {"fingerprint": self.fingerprint, "name": self.meta["source"]["name"],
                "tokens": self.tokens("train") + self.tokens("val")}


def open_dataset(path: str | os.PathLike) -> TokenDataset:
    """The dataset in directory `path`, checked; DataError (one line, ``param="data"``) naming what is wrong."""
    from llm.data.tokenizers import tokenizer_from_dict

    d = Path(path)
    if not d.is_dir():
        raise _fail(f"dataset directory {d} does not exist or is not a directory; {_REPREPARE} (or check the path)")
    meta_bytes = _read(d / META_FILE, f"{d} is not a token dataset (it has no {META_FILE}); {_REPREPARE}")
    meta = _parse_meta(d, meta_bytes)
    tok_bytes = _read(d / TOKENIZER_FILE, f"{d / TOKENIZER_FILE} is missing; the dataset is incomplete: {_REPREPARE}")
    if hashlib.sha256(tok_bytes).hexdigest() != meta["tokenizer"]["sha256"]:
        raise _fail(f"{d / TOKENIZER_FILE} is not the tokenizer {META_FILE} records (its SHA-256 differs); {_REPREPARE}")
    try:
        tokenizer = tokenizer_from_dict(json.loads(tok_bytes.decode("utf-8")))
    except (DataError, ValueError) as exc:
        raise _fail(f"{d / TOKENIZER_FILE}: invalid tokenizer ({str(exc).splitlines()[0]}); {_REPREPARE}") from None
    if tokenizer.vocab_size != meta["vocab_size"]:
        raise _fail(f"{d / TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but {META_FILE} says vocab_size "
                    f"{meta['vocab_size']}; {_REPREPARE}")
    parts = {split: _map(d, meta, split) for split in SPLIT_FILES}
    return TokenDataset(d, meta, tokenizer, parts["train"], parts["val"], hashlib.sha256(meta_bytes).hexdigest())


def _read(path: Path, missing: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _fail(missing) from None
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror or exc}; check its permissions or {_REPREPARE}") from None


def _parse_meta(d: Path, data: bytes) -> dict:
    where = d / META_FILE
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _fail(f"{where} is not valid JSON ({str(exc).splitlines()[0]}); {_REPREPARE}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(f"{where} does not describe a token dataset (format {FORMAT!r}); {_REPREPARE}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _fail(f"{where}: unsupported format_version {meta.get('format_version')!r} (this version reads "
                    f"{FORMAT_VERSION}); {_REPREPARE}")
    if meta.get("dtype") not in DTYPES:
        raise _fail(f"{where}: dtype must be one of {', '.join(DTYPES)}, got {meta.get('dtype')!r}; {_REPREPARE}")
    ok = (checks.is_int(meta.get("vocab_size")) and meta["vocab_size"] > 0
          and isinstance(meta.get("tokenizer"), dict) and isinstance(meta["tokenizer"].get("sha256"), str)
          and isinstance(meta.get("source"), dict) and isinstance(meta.get("splits"), dict)
          and checks.is_number(meta.get("val_fraction")) and 0 <= meta["val_fraction"] < 1
          and all(isinstance(meta["splits"].get(s), dict) and all(_count(meta["splits"][s].get(k))
                                                                   for k in ("tokens", "bytes"))
                  for s in SPLIT_FILES))
    if not ok:
        raise _fail(f"{where} lacks vocab_size, tokenizer, source, val_fraction or the splits' token and byte counts; {_REPREPARE}")
    if dtype_for(meta["vocab_size"]) == "uint32" and meta["dtype"] == "uint16":
        raise _fail(f"{where}: a vocabulary of {meta['vocab_size']} ids does not fit in uint16; {_REPREPARE}")
    return meta


def _count(v: Any) -> bool:
    return checks.is_int(v) and v >= 0


def _map(d: Path, meta: dict, split: str) -> np.ndarray:
    path = d / SPLIT_FILES[split]
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    n = meta["splits"][split]["tokens"]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _fail(f"{path} is missing; the dataset is incomplete: {_REPREPARE}") from None
    if size != n * dtype.itemsize:
        raise _fail(f"{path} has {size} bytes, but {n} {meta['dtype']} tokens take {n * dtype.itemsize} "
                    f"({META_FILE}); the file is truncated or from another dataset: {_REPREPARE}")
    if n == 0:
        return np.zeros(0, dtype)
    top = _largest_id(path, dtype)
    if top >= meta["vocab_size"]:
        raise _fail(f"{path} holds the id {top}, outside the vocabulary of {meta['vocab_size']}; the file is "
                    f"corrupt or from another dataset: {_REPREPARE}")
    ids = np.memmap(path, dtype=dtype, mode="r", shape=(n,))
    advise = getattr(getattr(ids, "_mmap", None), "madvise", None)
    if advise is not None and hasattr(mmap, "MADV_RANDOM"):  # random windows: no read-ahead around each one
        advise(mmap.MADV_RANDOM)
    return ids


def _largest_id(path: Path, dtype: np.dtype) -> int:
    """The largest id in the file, read a slice at a time into one buffer (not through the map, whose pages would
    stay resident: the run's memory stays flat)."""
    buf = np.empty(_SCAN, dtype)
    top = 0
    with open(path, "rb") as f:
        while (got := f.readinto(memoryview(buf).cast("B"))) > 0:
            top = max(top, int(buf[:got // dtype.itemsize].max()))
    return top


# -- writing -------------------------------------------------------------------------------------------------------

def check_destination(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Where a dataset may be written: a new or empty directory; one holding a dataset or anything else only with
    `overwrite` (then only the dataset's own files are replaced: nothing else in it is touched)."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise DataError(f"{d} exists and is not a directory; choose another destination (out)", param="out")
    if d.is_dir() and any(d.iterdir()) and not overwrite:
        what = "a token dataset" if is_dataset(d) else "files that are not a token dataset"
        raise DataError(f"{d} already holds {what}; choose another destination (`out`), or allow `overwrite` (only "
                        f"the dataset's files {', '.join(DATASET_FILES)} are replaced)", param="out")
    return d


class _PartWriter:
    """One part's ids to a hidden temporary file beside its final name, hashed and counted as they come."""

    def __init__(self, d: Path, name: str, dtype: np.dtype) -> None:
        self.final, self.dtype = d / name, dtype
        self.tmp = d / f".{name}.tmp-{secrets.token_hex(4)}"
        self.file = open(self.tmp, "wb")
        self.sha, self.tokens = hashlib.sha256(), 0

    def write(self, ids: Any) -> None:
        data = np.ascontiguousarray(np.asarray(ids, dtype=self.dtype)).tobytes()
        self.file.write(data)
        self.sha.update(data)
        self.tokens += len(data) // self.dtype.itemsize

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def write_dataset(path: str | os.PathLike, tokenizer: Any, parts: dict[str, Iterable[Any]], *, source: dict,
                  split_bytes: dict[str, int], val_fraction: float, overwrite: bool = False) -> TokenDataset:
    """Write a dataset to directory `path`: ``parts["train"]`` / ``parts["val"]`` are iterables of id chunks (any
    1-D integer arrays or lists), `split_bytes` the UTF-8 bytes of each part's text, `source` ``{"name", "bytes",
    "sha256"}``. Each file goes to a hidden temporary name first and is renamed into place once complete,
    ``meta.json`` last; on any failure only those temporary files are removed. Returns the dataset, opened."""
    d = check_destination(path, overwrite)
    created = not d.exists()
    d.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(dtype_for(tokenizer.vocab_size)).newbyteorder("<")
    writers: list[_PartWriter] = []
    tmp_files: list[Path] = []
    try:
        for split in SPLIT_FILES:
            w = _PartWriter(d, SPLIT_FILES[split], dtype)
            writers.append(w)
            tmp_files.append(w.tmp)
            for chunk in parts[split]:
                w.write(chunk)
            w.close()
        tok_bytes = (json.dumps(tokenizer.to_dict(), ensure_ascii=False) + "\n").encode("utf-8")
        splits = {s: {"file": w.final.name, "tokens": w.tokens, "bytes": int(split_bytes[s]),
                      "sha256": w.sha.hexdigest()} for s, w in zip(SPLIT_FILES, writers)}
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype_for(tokenizer.vocab_size),
                "vocab_size": tokenizer.vocab_size,
                "tokenizer": {"type": tokenizer.to_dict().get("type"), "file": TOKENIZER_FILE,
                              "sha256": hashlib.sha256(tok_bytes).hexdigest()},
                "source": dict(source), "val_fraction": val_fraction, "splits": splits}
        extra = {TOKENIZER_FILE: tok_bytes, META_FILE: (json.dumps(meta, indent=2) + "\n").encode("utf-8")}
        for name, data in extra.items():
            tmp_files.append(_write_tmp(d, name, data))
        meta_path = d / META_FILE
        if meta_path.exists():  # from here until the new one is in place, the directory is no dataset
            meta_path.unlink()
        for tmp, final in zip(tmp_files, (*(w.final for w in writers), d / TOKENIZER_FILE, meta_path)):
            os.replace(tmp, final)
        tmp_files = []
    except BaseException:
        for w in writers:
            if not w.file.closed:
                w.file.close()
        for tmp in tmp_files:  # only the files this call made
            if tmp.exists():
                tmp.unlink()
        if created and not any(d.iterdir()):
            d.rmdir()  # the directory too, if this call made it
        raise
    return open_dataset(d)


def _write_tmp(d: Path, name: str, data: bytes) -> Path:
    tmp = d / f".{name}.tmp-{secrets.token_hex(4)}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp

