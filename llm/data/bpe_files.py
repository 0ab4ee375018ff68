"""GPT-2's tokenizer files, read with every check and written in its exact format (host side).

* ``vocab.json``: one JSON object, ``{token: id}``, written in id order as GPT-2's ``encoder.json`` is (Python's
  ``json.dumps`` defaults: ASCII with ``\\uXXXX`` escapes).
* ``merges.txt``: the line ``#version: 0.2``, then one merge a line, its two tokens separated by one space, rank =
  order (GPT-2's ``vocab.bpe``); Hugging Face ``tokenizers`` and ``transformers`` read both.
* ``special_tokens.json`` (ours): the JSON list of special tokens, so that :meth:`BPETokenizer.load` gives back
  what :meth:`~BPETokenizer.save` wrote.

Every problem is a one-line :class:`~llm.errors.DataError` naming the file and the parameter; so is every problem
of the contents (:func:`check_vocab`, :func:`check_merges`, :func:`check_specials`), whichever way they came.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

from llm import checks
from llm.data.safe_read import NotRegularFile, UnreadableJSON, parse_json, read_regular
from llm.errors import DataError

MERGES_HEADER = "#version: 0.2"
_LIMIT = 1 << 30  # bytes read from one file at most


def _fail(message: str, param: str) -> DataError:
    return DataError(message, param=param)


def check_specials(special_tokens: object) -> tuple[str, ...]:
    """The special tokens as a tuple of distinct non-empty strings."""
    if isinstance(special_tokens, str) or not isinstance(special_tokens, Iterable):
        raise _fail(f"special_tokens must be a list of strings, got {type(special_tokens).__name__}",
                    "special_tokens")
    specials = tuple(special_tokens)
    for s in specials:
        if not isinstance(s, str) or not s:
            raise _fail(f"special token {s!r} must be a non-empty str", "special_tokens")
    if len(set(specials)) != len(specials):
        raise _fail(f"special_tokens lists a token twice: {list(specials)}", "special_tokens")
    return specials


def check_vocab(vocab: object, specials: tuple[str, ...], symbols: Collection[str]) -> list[str]:
    """``{token: id}`` -> the tokens in id order, every check made: ids 0..n-1 once each, every token but the special
    ones made of `symbols` (the 256 byte characters), all of which are tokens, and every special token in it."""
    if not isinstance(vocab, Mapping):
        raise _fail(f"vocab must be a dict of token -> id, got {type(vocab).__name__}", "vocab")
    tokens: list[str | None] = [None] * len(vocab)
    for tok, i in vocab.items():
        if not isinstance(tok, str) or not tok:
            raise _fail(f"vocab token {tok!r} must be a non-empty str", "vocab")
        if not checks.is_int(i) or not 0 <= i < len(vocab):
            raise _fail(f"vocab id {i!r} of {tok!r} must be an integer in 0..{len(vocab) - 1}: ids are 0..n-1, "
                        "each once", "vocab")
        if tokens[i] is not None:
            raise _fail(f"vocab id {i} is given to both {tokens[i]!r} and {tok!r}: ids are 0..n-1, each once",
                        "vocab")
        tokens[int(i)] = tok
    special_set = set(specials)
    for i, tok in enumerate(tokens):
        if tok not in special_set and not set(tok) <= symbols:
            raise _fail(f"vocab token {tok!r} (id {i}) is not made of GPT-2 byte symbols and is not a special "
                        "token", "vocab")
    missing = [c for c in symbols if c not in vocab]
    if missing:
        raise _fail(f"vocab lacks {len(missing)} of the 256 byte tokens (first: {missing[0]!r}); a byte-level "
                    "vocabulary has them all", "vocab")
    for s in specials:
        if s not in vocab:
            raise _fail(f"special token {s!r} is not in vocab; add it or leave it out of special_tokens",
                        "special_tokens")
    return tokens  # type: ignore[return-value]


def check_merges(merges: object, index: dict[str, int]) -> tuple[list[tuple[str, str]], dict]:
    """``[(a, b), ...]`` -> (the pairs as tuples, ``{(id a, id b): rank << 32 | id of a+b}``)."""
    if isinstance(merges, (str, bytes)) or not isinstance(merges, Iterable):
        raise _fail(f"merges must be a list of (token, token) pairs, got {type(merges).__name__}", "merges")
    ranks: dict[tuple[int, int], int] = {}
    pairs: list[tuple[str, str]] = []
    for rank, pair in enumerate(merges):
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise _fail(f"merge {rank} is {pair!r}; each merge is a pair of two tokens", "merges")
        a, b = pair
        if not isinstance(a, str) or not isinstance(b, str):
            raise _fail(f"merge {rank} is {pair!r}; each merge is a pair of two token strings", "merges")
        pairs.append((a, b))
        for part in (a, b, f"{a}{b}"):
            if part not in index:
                raise _fail(f"merge {rank} ({a!r}, {b!r}) refers to {part!r}, which is not in vocab", "merges")
        key = (index[a], index[b])
        if key in ranks:
            raise _fail(f"merge {rank} ({a!r}, {b!r}) repeats merge {ranks[key] >> 32}", "merges")
        ranks[key] = rank << 32 | index[a + b]
    return pairs, ranks


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


__all__ = ["MERGES_HEADER", "check_specials", "check_vocab", "check_merges", "read_vocab", "read_merges", "read_specials", "write_files"]
