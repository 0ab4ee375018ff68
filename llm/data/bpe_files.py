"""GPT-2's tokenizer files, read with every check and written in its exact format (host side).

* ``vocab.json``: one JSON object, ``{token: id}``, written in id order as GPT-2's ``encoder.json`` is (Python's
  ``json.dumps`` defaults: ASCII with ``\\uXXXX`` escapes).
* ``merges.txt``: the line ``#version: 0.2``, then one merge a line, its two tokens separated by one space, rank =
  order (GPT-2's ``vocab.bpe``); Hugging Face ``tokenizers`` and ``transformers`` read both.
* ``special_tokens.json`` (ours): the JSON list of special tokens, so that :meth:`BPETokenizer.load` gives back
  what :meth:`~BPETokenizer.save` wrote.

Every problem is a one-line :class:`~llm.errors.DataError` naming the file and the parameter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from llm.data.safe_read import NotRegularFile, UnreadableJSON, parse_json, read_regular
from llm.errors import DataError

MERGES_HEADER = "#version: 0.2"
_LIMIT = 1 << 30  # bytes read from one file at most


def _read_text(path: str | os.PathLike, param: str) -> str:
    try:
        data = read_regular(path, _LIMIT)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; give the path of an existing {param} file", param=param) from None
    except (NotRegularFile, IsADirectoryError) as exc:
        raise DataError(f"{path}: {getattr(exc, 'kind', 'a directory')}, not a regular file; give a file",
                        param=param) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions",
                        param=param) from None
    if len(data) > _LIMIT:
        raise DataError(f"{path}: larger than {_LIMIT} bytes; that is no tokenizer file", param=param)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); give GPT-2's text file", param=param) from None


def read_vocab(path: str | os.PathLike) -> dict[str, int]:
    """``vocab.json`` as ``{token: id}`` (the ids are checked by :class:`BPETokenizer`)."""
    try:
        vocab = parse_json(_read_text(path, "vocab_json"))
    except UnreadableJSON as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); give GPT-2's vocab.json", param="vocab_json") from None
    if not isinstance(vocab, dict):
        raise DataError(f"{path}: must hold one JSON object of token -> id, got a {type(vocab).__name__}",
                        param="vocab_json")
    return vocab


def read_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``merges.txt`` as ``[(a, b), ...]`` in rank order (a ``#version`` first line is skipped; so are empty
    lines)."""
    merges: list[tuple[str, str]] = []
    for n, line in enumerate(_read_text(path, "merges_txt").split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise DataError(f"{path}, line {n}: {line[:60]!r} is not two tokens separated by one space",
                            param="merges_txt")
        merges.append((parts[0], parts[1]))
    return merges


def read_specials(path: str | os.PathLike) -> list[str]:
    """``special_tokens.json`` (a JSON list of strings), or ``["<|endoftext|>"]`` when there is no such file."""
    if not os.path.lexists(path):
        return ["<|endoftext|>"]
    try:
        specials = parse_json(_read_text(path, "special_tokens"))
    except UnreadableJSON as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); it holds a list of strings", param="special_tokens") from None
    if not isinstance(specials, list) or not all(isinstance(s, str) for s in specials):
        raise DataError(f"{path}: must hold a JSON list of strings", param="special_tokens")
    return specials


def write_files(directory: Path, index: Mapping[str, int], merges: Sequence[tuple[str, str]],
                specials: Sequence[str]) -> Path:
    """Write vocab.json, merges.txt and special_tokens.json into `directory` (made if need be)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        vocab = dict(sorted(index.items(), key=lambda kv: kv[1]))
        (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        lines = [MERGES_HEADER] + [f"{a} {b}" for a, b in merges]
        (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (directory / "special_tokens.json").write_text(json.dumps(list(specials)) + "\n", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{directory}: cannot write the tokenizer files ({exc.strerror or exc}); choose a "
                        "writable directory", param="directory") from None
    return directory


__all__ = ["MERGES_HEADER", "read_vocab", "read_merges", "read_specials", "write_files"]
