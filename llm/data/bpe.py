"""Byte-level BPE (GPT-2's scheme), host side: :class:`BPETokenizer`.

How text becomes ids:

1. Special tokens (``<|endoftext|>`` by default) are found in the text first and are one id each, never split.
2. The rest is cut into words by GPT-2's pattern (:data:`GPT2_PATTERN`: contractions, letters, digits, other
   symbols, each with at most one leading space, and runs of whitespace).
3. Each word is UTF-8 encoded (``surrogatepass``: a lone surrogate, which Python strings may hold, is written as its
   3-byte form so that every ``str`` round-trips), each byte is a token (GPT-2's byte -> printable character table,
   :func:`bytes_to_unicode`), and the ranked merges join adjacent tokens, the lowest-ranked pair first, every
   occurrence left to right, until no ranked pair is left. Each distinct word's ids are cached.

Decoding joins the tokens' bytes and decodes UTF-8 with ``"replace"`` (any id sequence decodes), except that the
3-byte form of a surrogate decodes back to that surrogate. So ``decode(encode(s), skip_special=False) == s`` for every
Python ``str`` and ``decode(encode(s)) == s`` for every ``str`` without special tokens in it.

GPT-2 has no padding and no unknown token: ``pad_id`` and ``unk_id`` are ``eos_id``. Padding is masked out of the loss
wherever this project pads, so its id never matters; no byte sequence is unknown to a byte-level vocabulary, so
``unk_id`` only answers :meth:`BPETokenizer.token_to_id` for a string that is not a token.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain, repeat
from pathlib import Path

import numpy as np
import regex

from llm.data.bpe_files import (check_merges, check_specials, check_vocab, read_merges, read_specials,
                                read_tokenizer_json, read_vocab, write_files)
from llm.data.tokenizers import check_token_id
from llm.errors import DataError

# GPT-2's pre-tokenization pattern (published with its encoder).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
_CACHE_LIMIT = 200_000  # distinct words remembered per tokenizer; the cache starts again when full
_ERRORS = "arraygpt-bpe"  # the codec error handler registered below
_NO_MERGE = 1 << 62  # a pair that is not a merge; a merge is rank << 32 | id of the merged token


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: byte -> one printable character. The printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``,
    ``®``..``ÿ``) stand for themselves; the other 68, in byte order, take the characters from U+0100 on (so the
    space is ``Ġ``, U+0120)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(0x100 + n)
    return dict(sorted(table.items()))


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _replace_or_surrogate(exc: UnicodeError) -> tuple[str, int]:
    """``"replace"``, except that the 3-byte form of a surrogate (ED A0..BF 80..BF) decodes to that surrogate."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    b = exc.object[exc.start:exc.start + 3]
    if len(b) == 3 and b[0] == 0xED and 0xA0 <= b[1] <= 0xBF and 0x80 <= b[2] <= 0xBF:
        return chr(0xD000 | ((b[1] & 0x3F) << 6) | (b[2] & 0x3F)), exc.start + 3
    return "\ufffd", exc.end


codecs.register_error(_ERRORS, _replace_or_surrogate)


def _incomplete_tail(buf: bytes) -> int:
    """How many bytes at the end of `buf` start a UTF-8 sequence that needs more bytes (0 if none)."""
    for k in range(1, min(3, len(buf)) + 1):
        b = buf[-k]
        if b & 0xC0 == 0x80:  # a continuation byte: look further back for its lead
            continue
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        return k if need > k else 0
    return 0


def token_text(data: bytes) -> str:
    """The vocabulary string of a token's bytes (one table character per byte)."""
    return "".join(BYTE_TO_CHAR[b] for b in data)


class _WordCache(dict):
    """word -> its ids, computed on the first look-up (the dict starts again once it holds _CACHE_LIMIT words)."""

    def __init__(self, encode_word):
        super().__init__()
        self.encode_word = encode_word

    def __missing__(self, word: str) -> tuple[int, ...]:
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        ids = self[word] = self.encode_word(word)
        return ids


def _fail(message: str, param: str) -> DataError:
    return DataError(message, param=param)


class BPETokenizer:
    """Byte-level BPE tokenizer with GPT-2's pre-tokenizer, byte table and ranked merges (see the module docstring).

    ``BPETokenizer(vocab, merges, special_tokens=("<|endoftext|>",))``: `vocab` maps each token (GPT-2 byte symbols,
    or a special token) to its id, 0..n-1; `merges` lists ``(a, b)`` pairs, rank = position. Build one with
    :meth:`train`, :meth:`from_files` (GPT-2's vocab.json + merges.txt), :meth:`load` (a directory written by
    :meth:`save`) or :meth:`from_dict`. The interface is the project's other tokenizers'.
    """

    _TYPE = "bpe"

    def __init__(self, vocab: Mapping[str, int], merges: Iterable[Sequence[str]],
                 special_tokens: Iterable[str] = (ENDOFTEXT,)):
        self._specials = check_specials(special_tokens)
        self._vocab = check_vocab(vocab, self._specials, CHAR_TO_BYTE.keys())
        self._index = {tok: i for i, tok in enumerate(self._vocab)}
        self._merges, self._ranks = check_merges(merges, self._index)
        special_set = set(self._specials)
        self._bytes = [tok.encode("utf-8", "surrogatepass") if tok in special_set
                       else bytes(CHAR_TO_BYTE[c] for c in tok) for tok in self._vocab]
        self._byte_ids = [self._index[BYTE_TO_CHAR[b]] for b in range(256)]
        self._special_ids = {s: self._index[s] for s in self._specials}
        self._eos = self._special_ids.get(ENDOFTEXT, self._special_ids[self._specials[0]] if self._specials else None)
        self._word_re = regex.compile(GPT2_PATTERN)
        by_length = sorted(self._specials, key=lambda s: (-len(s), s))  # the longest special token wins
        self._special_re = regex.compile("(" + "|".join(regex.escape(s) for s in by_length) + ")") if by_length else None
        self._cache = _WordCache(self._encode_word)

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str] | str, vocab_size: int,
              special_tokens: Iterable[str] = (ENDOFTEXT,)) -> BPETokenizer:
        """Learn merges from `texts` until the vocabulary has `vocab_size` tokens (256 bytes + merges + special
        tokens), deterministically: see :func:`llm.data.bpe_train.learn_merges` for the tie rule."""
        from llm.data.bpe_train import train_vocab  # lazy: the trainer is not needed to encode

        specials = check_specials(special_tokens)
        vocab, merges = train_vocab(texts, vocab_size, specials, GPT2_PATTERN)
        return cls(vocab, merges, specials)

    @classmethod
    def from_files(cls, vocab_json: str | Path, merges_txt: str | Path,
                   special_tokens: Iterable[str] = (ENDOFTEXT,)) -> BPETokenizer:
        """Read GPT-2's two files: ``vocab.json`` (``{token: id}``) and ``merges.txt`` (``#version: 0.2``, then one
        ``a b`` pair a line, rank = order)."""
        return cls(read_vocab(vocab_json), read_merges(merges_txt), special_tokens)

    @classmethod
    def load(cls, directory: str | Path, special_tokens: Iterable[str] | None = None) -> BPETokenizer:
        """Read a directory holding ``vocab.json`` and ``merges.txt`` (and ``special_tokens.json``, a list, as
        :meth:`save` writes it; without it and without `special_tokens`, ``<|endoftext|>``), or, without those, a
        ``tokenizer.json``: a checkpoint's, or Hugging Face's for a byte-level BPE."""
        d = Path(directory)
        if not d.is_dir():
            raise _fail(f"{d} is not a directory holding vocab.json and merges.txt", "directory")
        if not (d / "vocab.json").exists() and (d / "tokenizer.json").exists():
            desc = read_tokenizer_json(d / "tokenizer.json")
            return cls.from_dict(desc if special_tokens is None else {**desc, "special_tokens": list(special_tokens)})
        if special_tokens is None:
            special_tokens = read_specials(d / "special_tokens.json")
        return cls.from_files(d / "vocab.json", d / "merges.txt", special_tokens)

    def save(self, directory: str | Path) -> Path:
        """Write ``vocab.json``, ``merges.txt`` (GPT-2's format, which Hugging Face reads) and
        ``special_tokens.json`` into `directory` (made if need be); returns its path."""
        return write_files(Path(directory), self._index, self._merges, self._specials)

    @classmethod
    def from_dict(cls, d: Mapping) -> BPETokenizer:
        """Rebuild from :meth:`to_dict` output (its vocab a list of tokens in id order, or a ``{token: id}`` dict;
        each merge ``"a b"`` or ``[a, b]``)."""
        vocab = d.get("vocab") if isinstance(d, Mapping) else None
        if not isinstance(vocab, (list, dict)) or not isinstance(d.get("merges"), list):
            raise _fail("a bpe tokenizer description needs a 'vocab' list and a 'merges' list", "vocab")
        index: dict[str, int] = vocab if isinstance(vocab, dict) else {}
        for i, tok in enumerate(vocab if isinstance(vocab, list) else ()):
            if not isinstance(tok, str):
                raise _fail(f"vocab entry {i} is {tok!r}; tokens are non-empty strings", "vocab")
            if tok in index:
                raise _fail(f"vocab has {tok!r} twice, at ids {index[tok]} and {i}", "vocab")
            index[tok] = i
        merges = [m.split(" ") if isinstance(m, str) else m for m in d["merges"]]
        return cls(index, merges, d.get("special_tokens", (ENDOFTEXT,)))

    def to_dict(self) -> dict:
        """JSON-ready description (what checkpoints save); :func:`llm.data.tokenizers.tokenizer_from_dict` (type
        ``"bpe"``) turns it back into an equal tokenizer."""
        return {"type": self._TYPE, "vocab": list(self._vocab), "merges": [f"{a} {b}" for a, b in self._merges],
                "special_tokens": list(self._specials)}

    # --- vocabulary ---------------------------------------------------------------------------------------------
    @property
    def vocab(self) -> list[str]:
        """The vocabulary (a copy): id ``i`` is ``vocab[i]``."""
        return list(self._vocab)

    @property
    def merges(self) -> list[tuple[str, str]]:
        """The merges (a copy), rank = position."""
        return list(self._merges)

    @property
    def special_tokens(self) -> tuple[str, ...]:
        return self._specials

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def eos_id(self) -> int | None:
        """``<|endoftext|>``'s id (else the first special token's; None without special tokens)."""
        return self._eos

    @property
    def pad_id(self) -> int | None:
        """``eos_id``: GPT-2 has no padding token, and padded positions are masked out of the loss."""
        return self._eos

    @property
    def unk_id(self) -> int | None:
        """``eos_id``: a byte-level vocabulary has no unknown input; see :meth:`token_to_id`."""
        return self._eos

    def __len__(self) -> int:
        return len(self._vocab)

    def token_to_id(self, token: str) -> int | None:
        """Id of ``token`` (a vocabulary string), or ``unk_id`` if it is not in the vocabulary."""
        return self._index.get(token, self.unk_id)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary string of ``token_id``."""
        return self._vocab[self._check_id(token_id)]

    def _check_id(self, token_id: object) -> int:
        return check_token_id(token_id, len(self._vocab))

    # --- encode -------------------------------------------------------------------------------------------------
    def _chunks(self, text: object) -> Iterable[tuple[str, bool]]:
        """(piece, is special) in order; pieces that are not special tokens are never empty."""
        if not isinstance(text, str):
            raise DataError(f"text must be a str, got {type(text).__name__}; pass the text itself")
        parts = self._special_re.split(text) if self._special_re is not None else [text]
        for j, part in enumerate(parts):
            if part:
                yield part, bool(j % 2)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        """The ids of one pre-tokenized word: its bytes, then the ranked merges (the work is in C-level calls:
        one ``map`` finds every adjacent pair's rank, ``min`` the best, ``index`` its occurrences)."""
        get, none = self._ranks.get, _NO_MERGE
        ids = list(map(self._byte_ids.__getitem__, word.encode("utf-8", "surrogatepass")))
        while len(ids) > 1:
            found = list(map(get, zip(ids, ids[1:]), repeat(none)))  # rank << 32 | merged id, each adjacent pair
            best = min(found)
            if best == none:
                break
            merged = best & 0xFFFFFFFF
            j = found.index(best)
            if found.count(best) == 1:  # the usual case: one occurrence
                ids[j:j + 2] = (merged,)
                continue
            out = ids[:j]
            while j >= 0:  # every occurrence, left to right, never overlapping
                out.append(merged)
                k = found.index(best, j + 2) if best in found[j + 2:] else -1
                out += ids[j + 2:k] if k >= 0 else ids[j + 2:]
                j = k
            ids = out
        return tuple(ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens included, one id each). ``""`` gives ``[]``."""
        ids: list[int] = []
        for piece, special in self._chunks(text):
            if special:
                ids.append(self._special_ids[piece])
            else:
                ids += chain.from_iterable(map(self._cache.__getitem__, self._word_re.findall(piece)))
        return ids

    def encode_to_array(self, text: str) -> np.ndarray:
        """:meth:`encode` as a NumPy array: uint16 when every id fits (vocabularies up to 65,536), else uint32."""
        return np.asarray(self.encode(text), dtype=np.uint16 if len(self._vocab) <= 1 << 16 else np.uint32)

    def tokenize(self, text: str) -> list[str]:
        """``text`` as vocabulary strings (the tokens :meth:`encode` gives the ids of)."""
        return [self._vocab[i] for i in self.encode(text)]

    # --- decode -------------------------------------------------------------------------------------------------
    def _token_bytes(self, ids: Iterable[int], skip_special: bool) -> list[bytes]:
        data, special = self._bytes, self._special_ids.values()
        skipped = set(special) if skip_special else set()
        return [data[i] for i in map(self._check_id, ids) if i not in skipped]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ``ids`` (any iterable of ints, NumPy integers included): the tokens' bytes joined, as UTF-8 with
        invalid bytes replaced by U+FFFD. With ``skip_special`` (the default) special tokens are dropped. An id
        outside the vocabulary raises :class:`~llm.errors.DataError`."""
        return b"".join(self._token_bytes(ids, skip_special)).decode("utf-8", _ERRORS)

    def decode_pieces(self, ids: Iterable[int], skip_special: bool = True) -> list[str]:
        """What each token adds to :meth:`decode`'s text; they join to ``decode(ids)``. A character whose bytes
        span several tokens belongs to the token of its last byte, so while ids arrive one by one every piece but
        the last is final (:func:`llm.infer.generation.decode_stream`)."""
        pieces, pending = [], b""
        for data in self._token_bytes(ids, skip_special):
            pending += data
            keep = _incomplete_tail(pending)
            ready, pending = (pending[:-keep], pending[-keep:]) if keep else (pending, b"")
            pieces.append(ready.decode("utf-8", _ERRORS))
        if pending:
            pieces[-1] += pending.decode("utf-8", _ERRORS)
        return pieces

    # --- comparison ---------------------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BPETokenizer):
            return NotImplemented
        return (type(self) is type(other) and self._vocab == other._vocab and self._merges == other._merges
                and self._specials == other._specials)

    def __hash__(self) -> int:
        return hash((self._TYPE, tuple(self._vocab), len(self._merges), self._specials))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, merges={len(self._merges)})"


__all__ = ["BPETokenizer", "GPT2_PATTERN", "ENDOFTEXT", "BYTE_TO_CHAR", "CHAR_TO_BYTE", "bytes_to_unicode", "token_text"]
