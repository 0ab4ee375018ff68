"""Learning byte-level BPE merges (host side, pure Python): what :meth:`BPETokenizer.train` runs.

The texts are cut like encode cuts them (special tokens out, then GPT-2's pattern), and each distinct word is kept
once with its count. Pair counts are kept for the whole corpus and updated after each merge from the words that
held the merged pair only (an index pair -> words), and the best pair comes from a heap whose stale entries are
dropped as they surface, so a merge costs what it changes, not a pass over the corpus.

The vocabulary: ids 0..255 are the bytes in byte order, then each merge's new token in merge order, then the special
tokens. Rule for the next merge: the pair with the highest count (each word weighted by its count); a tie goes to
the pair whose first token's bytes are smallest, then whose second token's bytes are (``bytes`` order). A merge
whose joined bytes are a token already (``a bc`` after ``ab c``) is recorded in the merges and adds no token.
"""

from __future__ import annotations

import heapq
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable

import regex

from llm import checks
from llm.errors import DataError, LLMWarning


def count_words(texts: Iterable[str] | str, specials: tuple[str, ...], pattern: str) -> Counter[str]:
    """How often each pre-tokenized word occurs in `texts` (special tokens left out)."""
    if isinstance(texts, str):
        texts = [texts]
    words = regex.compile(pattern)
    split = regex.compile("|".join(regex.escape(s) for s in sorted(specials, key=lambda s: (-len(s), s))))
    counts: Counter[str] = Counter()
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"text {i} must be a str, got {type(text).__name__}; pass the texts themselves",
                            param="texts")
        for piece in (split.split(text) if specials else [text]):
            counts.update(words.findall(piece))
    return counts


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[int]:
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


class _PairTable:
    """Pair counts over distinct words, the words each pair occurs in, and a heap of candidate best pairs."""

    def __init__(self, words: list[list[int]], freqs: list[int], token_bytes: list[bytes]):
        self.words, self.freqs, self.token_bytes = words, freqs, token_bytes
        self.count: defaultdict[tuple[int, int], int] = defaultdict(int)
        self.where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        for w, (word, f) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                self.count[pair] += f
                self.where[pair].add(w)
        self.heap = [self._entry(pair, c) for pair, c in self.count.items()]
        heapq.heapify(self.heap)

    def _entry(self, pair: tuple[int, int], count: int) -> tuple:
        return (-count, self.token_bytes[pair[0]], self.token_bytes[pair[1]], pair)

    def best(self) -> tuple[int, int] | None:
        """The pair to merge next (see the module docstring), or None when no pair is left."""
        while self.heap:
            neg, _, _, pair = heapq.heappop(self.heap)
            if self.count.get(pair, 0) == -neg:
                return pair
        return None

    def merge(self, pair: tuple[int, int], new: int) -> None:
        """Replace `pair` by token `new` in every word that holds it; update the counts and the heap."""
        a, b = pair
        delta: defaultdict[tuple[int, int], int] = defaultdict(int)
        for w in self.where.pop(pair, ()):
            word, f = self.words[w], self.freqs[w]
            merged = _merge_word(word, a, b, new)
            if len(merged) == len(word):  # the pair left this word in an earlier merge
                continue
            for p in zip(word, word[1:]):
                delta[p] -= f
            for p in zip(merged, merged[1:]):
                delta[p] += f
                self.where[p].add(w)
            self.words[w] = merged
        for p, d in delta.items():
            if not d:
                continue
            c = self.count[p] = self.count[p] + d
            if c > 0:
                heapq.heappush(self.heap, self._entry(p, c))
            else:
                del self.count[p]
                self.where.pop(p, None)


def learn_merges(counts: Counter[str], n_tokens: int) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Merges learned from word `counts` until there are `n_tokens` tokens (or no pair is left): returns (each
    token's bytes, ids 0..255 the bytes themselves; the merges as id pairs, in rank order)."""
    token_bytes = [bytes([b]) for b in range(256)]
    known = {t: i for i, t in enumerate(token_bytes)}
    words = [list(w.encode("utf-8", "surrogatepass")) for w in counts]
    table = _PairTable(words, list(counts.values()), token_bytes)
    merges: list[tuple[int, int]] = []
    while len(token_bytes) < n_tokens:
        pair = table.best()
        if pair is None:
            break
        joined = token_bytes[pair[0]] + token_bytes[pair[1]]
        new = known.get(joined)
        if new is None:
            new = known[joined] = len(token_bytes)
            token_bytes.append(joined)
        merges.append(pair)
        table.merge(pair, new)
    return token_bytes, merges


def train_vocab(texts: Iterable[str] | str, vocab_size: int, specials: tuple[str, ...],
                pattern: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` for :class:`BPETokenizer`: `vocab_size` tokens in all, special tokens last."""
    from llm.data.bpe import token_text

    vocab_size = checks.int_at_least(vocab_size, 256 + len(specials), "vocab_size")
    token_bytes, merges = learn_merges(count_words(texts, specials, pattern), vocab_size - len(specials))
    vocab = {token_text(t): i for i, t in enumerate(token_bytes)}
    for s in specials:
        vocab.setdefault(s, len(vocab))
    if len(vocab) < vocab_size:
        warnings.warn(LLMWarning(f"the texts ran out of pairs to merge at {len(vocab)} tokens, short of vocab_size "
                                 f"{vocab_size}; train on more text or ask for fewer tokens", param="vocab_size"),
                      stacklevel=3)
    strings = [token_text(t) for t in token_bytes]
    return vocab, [(strings[a], strings[b]) for a, b in merges]


__all__ = ["count_words", "learn_merges", "train_vocab"]
