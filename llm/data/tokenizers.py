"""Tokenizers: text <-> lists of integer ids (host side, pure Python).

Two tokenizers share one API (``from_texts``, ``tokenize``, ``encode``, ``decode``, ``to_dict``, ``vocab``,
``vocab_size``, ``pad_id``, ``unk_id``, ``eos_id``):

* :class:`WordTokenizer` -- word level. Words are split on whitespace, every ASCII punctuation character is a token
  of its own and the literal ``</s>`` is one token (end of sequence).
* :class:`CharTokenizer` -- character level, for any plain-text file.

Both reserve the same three special tokens at the start of the vocabulary::

    0 <pad>   padding (never produced by encode)
    1 <unk>   anything that is not in the vocabulary
    2 </s>    end of sequence

followed by every other token in sorted (code point) order, so the vocabulary built from the same texts is the same
whatever order the texts come in. :func:`tokenizer_from_dict` rebuilds a tokenizer from its ``to_dict()`` output,
that of :class:`llm.data.bpe.BPETokenizer` (byte-level BPE, the same API, GPT-2's special tokens) included.
"""

from __future__ import annotations

import operator
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from llm import checks
from llm.errors import DataError

if TYPE_CHECKING:
    from llm.data.bpe import BPETokenizer

PAD = "<pad>"
UNK = "<unk>"
EOS = "</s>"
SPECIAL_TOKENS: tuple[str, str, str] = (PAD, UNK, EOS)

_PUNCT = frozenset(string.punctuation)
# One token: the literal </s>, or one ASCII punctuation character, or a run of anything else (whitespace already gone).
_WORD_RE = re.compile(
    "</s>|[" + re.escape(string.punctuation) + "]|[^" + re.escape(string.punctuation) + "]+"
)

# decode() spacing rules (see WordTokenizer.decode).
_NO_SPACE_BEFORE = frozenset(".,!?;:)]}%")
_NO_SPACE_AFTER = frozenset("([{$")
_INFIX = frozenset("'-/")
_DIGIT_JOINERS = frozenset(".:")


def _clean_controls(text: str) -> str:
    """Replace control/format characters (Unicode categories Cc and Cf) with a space."""
    if text.isprintable():  # fast path: no control, format or whitespace characters other than " "
        return text
    return "".join(" " if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in text)


def _check_text(text: object, what: str = "text") -> str:
    if not isinstance(text, str):
        raise DataError(f"{what} must be a str, got {type(text).__name__}; pass the text itself")
    return text


def _check_vocab(vocab: object, kind: str) -> list[str]:
    """Validate a vocabulary list; return a copy. ``kind`` is "word" or "char"."""
    if isinstance(vocab, (str, bytes)) or not isinstance(vocab, Sequence):
        raise DataError(f"{kind} tokenizer vocab must be a list of strings, got {type(vocab).__name__}")
    vocab = list(vocab)
    for i, tok in enumerate(vocab):
        if not isinstance(tok, str):
            raise DataError(f"{kind} tokenizer vocab entry {i} is {type(tok).__name__}, expected a non-empty str")
        if not tok:
            raise DataError(f"{kind} tokenizer vocab entry {i} is an empty string; remove it")
    if tuple(vocab[:3]) != SPECIAL_TOKENS:
        raise DataError(
            f"{kind} tokenizer vocab must start with {list(SPECIAL_TOKENS)} at ids 0..2, got {vocab[:3]!r}"
        )
    seen: dict[str, int] = {}
    for i, tok in enumerate(vocab):
        if tok in seen:
            raise DataError(f"{kind} tokenizer vocab has duplicate token {tok!r} at ids {seen[tok]} and {i}")
        seen[tok] = i
    for i, tok in enumerate(vocab[3:], start=3):
        if kind == "char":
            if len(tok) != 1:
                raise DataError(f"char tokenizer vocab entry {i} ({tok!r}) must be a single character")
        elif any(ch.isspace() for ch in tok):
            raise DataError(f"word tokenizer vocab entry {i} ({tok!r}) contains whitespace; tokens never do")
    return vocab


def check_token_id(token_id: object, vocab_size: int) -> int:
    """`token_id` as an int in [0, vocab_size), or a DataError saying what it was (every tokenizer's decode)."""
    try:
        i = operator.index(token_id)
    except TypeError:
        raise DataError(f"token id must be an integer, got {type(token_id).__name__}") from None
    if not 0 <= i < vocab_size:
        raise DataError(f"token id {i} is out of range for a vocabulary of {vocab_size} tokens")
    return i


class _BaseTokenizer:
    """Shared vocabulary handling. Subclasses define ``_TYPE``, ``tokenize`` and ``_pieces``."""

    _TYPE = ""

    def __init__(self, vocab: list[str]):
        self._vocab: list[str] = _check_vocab(vocab, self._TYPE)
        self._index: dict[str, int] = {tok: i for i, tok in enumerate(self._vocab)}

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_texts(cls, texts: Iterable[str], max_size: int | None = None):
        """Build the vocabulary from every token of ``texts``: specials first, then the other tokens sorted.

        ``max_size=N`` keeps only the N most frequent tokens (ties: the first in sorted order), plus the special
        tokens; the others encode as ``<unk>``. None (the default) keeps every token.
        """
        max_size = checks.positive_int(max_size, "max_size", allow_none=True)  # numpy integers too; not "3", 2.5, True
        if isinstance(texts, str):
            texts = [texts]  # one text, not an iterable of characters
        counts: Counter[str] = Counter()
        for i, text in enumerate(texts):
            counts.update(cls._tokenize(_check_text(text, f"text {i}")))
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)
        tokens = sorted(counts)
        if max_size is not None and len(tokens) > max_size:
            tokens = sorted(sorted(tokens, key=lambda t: -counts[t])[:max_size])  # stable: ties in sorted order
        return cls(list(SPECIAL_TOKENS) + tokens)

    # --- vocabulary ---------------------------------------------------------------------------------------------
    @property
    def vocab(self) -> list[str]:
        """The vocabulary (a copy): id ``i`` is ``vocab[i]``."""
        return list(self._vocab)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    def __len__(self) -> int:
        return len(self._vocab)

    def token_to_id(self, token: str) -> int:
        """Id of ``token``, or ``unk_id`` if it is not in the vocabulary."""
        return self._index.get(token, self.unk_id)

    def id_to_token(self, token_id: int) -> str:
        return self._vocab[self._check_id(token_id)]

    def _check_id(self, token_id: object) -> int:
        return check_token_id(token_id, len(self._vocab))

    # --- encode / decode ----------------------------------------------------------------------------------------
    @classmethod
    def _tokenize(cls, text: str) -> list[str]:
        raise NotImplementedError

    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into tokens (strings; tokens not in the vocabulary are kept as they are)."""
        return self._tokenize(_check_text(text))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; unknown tokens map to ``unk_id``. ``""`` gives ``[]``."""
        index, unk = self._index, self.unk_id
        return [index.get(tok, unk) for tok in self._tokenize(_check_text(text))]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ``ids`` (any iterable of ints, numpy integers included).

        With ``skip_special`` (the default) ``<pad>`` and ``</s>`` are dropped; ``<unk>`` is always written as
        ``"<unk>"``. An id outside the vocabulary raises :class:`~llm.errors.DataError`.
        """
        return "".join(self.decode_pieces(ids, skip_special))

    def decode_pieces(self, ids: Iterable[int], skip_special: bool = True) -> list[str]:
        """What each token adds to :meth:`decode`'s text (its leading space included); they join to ``decode(ids)``.

        A token's piece depends on the tokens before it and on the next one only (``well - known`` becomes
        ``well-known`` once ``known`` has come), so while ids arrive one by one every piece but the last is final:
        that is how a chat answer is printed word by word (:func:`llm.generation.decode_stream`)."""
        vocab = self._vocab
        tokens = [vocab[self._check_id(i)] for i in ids]
        if skip_special:
            tokens = [t for t in tokens if t != PAD and t != EOS]
        return self._pieces(tokens)

    def _pieces(self, tokens: list[str]) -> list[str]:
        raise NotImplementedError

    # --- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready description; :func:`tokenizer_from_dict` turns it back into an equal tokenizer."""
        return {"type": self._TYPE, "vocab": list(self._vocab)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _BaseTokenizer):
            return NotImplemented
        return type(self) is type(other) and self._vocab == other._vocab

    def __hash__(self) -> int:
        return hash((self._TYPE, tuple(self._vocab)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def _is_word(tok: str | None) -> bool:
    """True for a token that reads as a word: not a lone punctuation character, not <pad> or </s>."""
    return tok is not None and tok not in _PUNCT and tok != EOS and tok != PAD


class WordTokenizer(_BaseTokenizer):
    """Word-level tokenizer.

    Tokenization:

    * Control and format characters (Unicode categories Cc, Cf: NUL, escape, zero-width space, BOM...) count as
      whitespace; the text is then split on (Unicode) whitespace.
    * Every ASCII punctuation character (``string.punctuation``) is a token of its own, so ``"don't"`` is
      ``["don", "'", "t"]`` and ``"rain."`` is ``["rain", "."]``.
    * The literal ``</s>`` is one token (end of sequence), even when glued to a word (``"rain.</s>"``).
    * Anything else (letters, digits, non-ASCII characters, emoji, non-ASCII punctuation) stays inside words.
      Case is kept. A word that is not in the vocabulary encodes to ``<unk>``; nothing is dropped silently.

    :meth:`decode` joins tokens with single spaces, except:

    * no space before ``. , ! ? ; : ) ] } %``;
    * no space after ``( [ { $``;
    * ``'``, ``-`` and ``/`` between two words join both sides (``don't``, ``well-known``, ``and/or``);
      a ``'`` after a word that is not followed by one attaches to that word (``dogs'``), any other ``'``
      attaches to the next token (opening quote);
    * ``"`` alternates: the 1st, 3rd... one opens a quote (no space after), the 2nd, 4th... close it (no space
      before);
    * ``.`` and ``:`` between two digits join both sides (``3.5``, ``10:30``).

    So ``decode(encode(s)) == s`` for ordinary English written with single spaces and normal punctuation whose words
    are all in the vocabulary. It is lossy by design for spacing the rules cannot see: ``"a - b"`` decodes to
    ``"a-b"``, ``"1,000"`` to ``"1, 000"``, ``"e.g."`` to ``"e. g."``, ``"dogs' toys"`` and single-quoted words
    after a word (``"said 'hi'"``) lose the space before the ``'``, and runs of whitespace become one space.
    """

    _TYPE = "word"

    @classmethod
    def _tokenize(cls, text: str) -> list[str]:
        out: list[str] = []
        for chunk in _clean_controls(text).split():
            out.extend(_WORD_RE.findall(chunk))
        return out

    def _pieces(self, tokens: list[str]) -> list[str]:
        parts: list[str] = []
        glue_next = True  # no space before the first token
        quote_open = False
        n = len(tokens)
        for i, tok in enumerate(tokens):
            prev = tokens[i - 1] if i > 0 else None
            nxt = tokens[i + 1] if i + 1 < n else None
            left = right = False  # attach to the previous / next token
            if tok in _NO_SPACE_BEFORE:
                left = True
                if tok in _DIGIT_JOINERS and prev and nxt and prev[-1].isdigit() and nxt[0].isdigit():
                    right = True
            elif tok in _NO_SPACE_AFTER:
                right = True
            elif tok == '"':
                if quote_open:
                    left = True
                else:
                    right = True
                quote_open = not quote_open
            elif tok in _INFIX:
                if _is_word(prev) and _is_word(nxt):
                    left = right = True
                elif tok == "'":
                    if _is_word(prev):
                        left = True
                    else:
                        right = True
            parts.append(tok if not parts or left or glue_next else " " + tok)
            glue_next = right
        return parts


class CharTokenizer(_BaseTokenizer):
    """Character-level tokenizer for any plain text.

    Every character is a token (whitespace and control characters included); the literal substring ``</s>`` is the
    end-of-sequence token. ``decode(encode(s), skip_special=False) == s`` for any ``s`` whose characters are all in
    the vocabulary, and ``decode(encode(s)) == s`` when ``s`` also contains no ``</s>``. Unknown characters decode
    to ``"<unk>"``.
    """

    _TYPE = "char"

    @classmethod
    def _tokenize(cls, text: str) -> list[str]:
        if EOS not in text:
            return list(text)
        out: list[str] = []
        pieces = text.split(EOS)
        for j, piece in enumerate(pieces):
            if j:
                out.append(EOS)
            out.extend(piece)
        return out

    def _pieces(self, tokens: list[str]) -> list[str]:
        return list(tokens)


_TYPES = {"word": WordTokenizer, "char": CharTokenizer}


def tokenizer_from_dict(d: dict) -> WordTokenizer | CharTokenizer | BPETokenizer:
    """Rebuild a tokenizer from ``to_dict()`` output (``{"type": "word" | "char", "vocab": [...]}``, or
    ``{"type": "bpe", "vocab": [...], "merges": [...], "special_tokens": [...]}`` for a
    :class:`~llm.data.bpe.BPETokenizer`)."""
    if not isinstance(d, dict):
        raise DataError(f"tokenizer description must be a dict, got {type(d).__name__}")
    kind = d.get("type")
    if kind == "bpe":
        from llm.data.bpe import BPETokenizer  # lazy: only a byte-level BPE checkpoint needs it

        return BPETokenizer.from_dict(d)
    if kind not in _TYPES:
        raise DataError(f"tokenizer type must be 'word', 'char' or 'bpe', got {kind!r}")
    if "vocab" not in d:
        raise DataError(f"{kind} tokenizer description has no 'vocab' list")
    return _TYPES[kind](d["vocab"])


__all__ = [
    "PAD",
    "UNK",
    "EOS",
    "SPECIAL_TOKENS",
    "WordTokenizer",
    "CharTokenizer",
    "tokenizer_from_dict",
]
