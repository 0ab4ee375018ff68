"""Scoring a model on texts: the loss and perplexity of a held-out set, exact-match on dialogues, and the loss,
perplexity and bits per byte of one long token stream (a book, a validation split).

    result = llm.evaluate(model, tokenizer, texts)        # Evaluation(loss, perplexity, tokens, exact_match)
    score = evaluate_stream(model, ids)                    # StreamScore(loss, tokens, windows, seq_len)
    score.bits_per_byte(len(text.encode("utf-8")))

A forward pass only (``model.predict``): no gradient, no optimizer, nothing on the model changes. The losses of all
batches stay on the device and come back in one transfer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm.data.corpora import Example, collate, encode_corpus, split_dialogue
from llm import checks
from llm.errors import ConfigError, DataError
from llm.infer.generation import greedy_batch
from llm.nn.loss import CHUNK_ELEMENTS, cross_entropy
from llm.nn.namespace import array_namespace, device


@dataclass
class ExactMatch:
    """Greedy answers compared token for token with the training answers."""

    correct: int
    total: int
    misses: list[tuple[str, str, str]]  # (question prompt, expected answer, generated answer)

    @property
    def fraction(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass
class Evaluation:
    """A model scored on texts: mean loss per counted token, its perplexity, how many tokens counted, and (for
    dialogues) exact-match of the greedy answers."""

    loss: float
    perplexity: float
    tokens: int
    exact_match: ExactMatch | None = None


def perplexity(loss: float) -> float:
    """exp(loss): the perplexity of a mean loss per token; ``inf`` where that is above the float range (a loss above
    ~709.78, a run far gone), never an OverflowError."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def exact_match(model: Any, tokenizer: Any, chat_texts: list[str], max_new_tokens: int | None = None) -> ExactMatch:
    """Answer each dialogue's question greedily; count answers equal to the training answer (``</s>`` included)."""
    prompts, expected = [], []
    ctx = model.config.max_seq_len
    for text in chat_texts:
        prompt, answer = split_dialogue(text)
        ids = tokenizer.encode(prompt)
        if 0 < len(ids) < ctx:  # a question that fills the context cannot be answered: it counts as a miss
            prompts.append(ids)
            expected.append(tokenizer.encode(answer))
    if not prompts:
        return ExactMatch(0, len(chat_texts), [])
    limit = max_new_tokens or max(len(e) for e in expected) + 1
    got = greedy_batch(model, prompts, limit, tokenizer.eos_id)
    misses = [(tokenizer.decode(p), tokenizer.decode(e), tokenizer.decode(g))
              for p, e, g in zip(prompts, expected, got) if g != e]
    return ExactMatch(len(prompts) - len(misses), len(chat_texts), misses)


def evaluate_examples(model: Any, examples: list[Example], pad_id: int, batch_size: int = 32) -> tuple[float, int]:
    """(mean loss per counted token, counted tokens) of encoded examples; one device -> host transfer."""
    checks.positive_int(batch_size, "batch_size")
    if not examples:
        raise ConfigError("nothing to evaluate: no example has a target that counts")
    be = model.backend
    xp = be.xp
    sums, counts = [], []
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i:i + batch_size], pad_id)
        n = batch.n_tokens
        if n == 0:
            continue
        logits = model.predict(batch.tokens)
        loss, _ = cross_entropy(logits, be.asarray(batch.targets, dtype=xp.int64), be.asarray(batch.mask))
        sums.append(loss * n)  # the batch mean, weighted by its counted tokens
        counts.append(n)
    total = sum(counts)
    if total == 0:
        raise ConfigError("nothing to evaluate: no example has a target that counts")
    return float(np.sum(be.to_numpy(xp.stack(sums)).astype(np.float64)) / total), total


def evaluate(model: Any, tokenizer: Any, texts: list[str], loss_on: str | None = None, batch_size: int = 32,
             exact: bool | None = None) -> Evaluation:
    """Loss, perplexity and (for dialogues) exact-match of `model` on `texts`.

    `loss_on`: ``"all"`` counts every token, ``"answer"`` only the assistant's answers of dialogues
    ``User: ... Assistant: ... </s>``; None chooses "answer" when every text is a dialogue, else "all". `exact`
    (default: when every text is a dialogue) also answers each question greedily and compares it with the text's
    answer. Texts longer than the context are truncated, as in training.
    """
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ConfigError("evaluate needs a non-empty list of texts")
    dialogues = all(_is_dialogue(t) for t in texts)
    loss_on = loss_on or ("answer" if dialogues else "all")
    if exact is None:
        exact = dialogues
    if exact and not dialogues:
        raise ConfigError("exact-match needs dialogues 'User: ... Assistant: ... </s>'; pass exact=False")
    examples = encode_corpus(texts, tokenizer, model.config.max_seq_len, loss_on)
    loss, tokens = evaluate_examples(model, examples, tokenizer.pad_id, batch_size)
    em = exact_match(model, tokenizer, texts) if exact else None
    return Evaluation(loss, perplexity(loss), tokens, em)


def _is_dialogue(text: str) -> bool:
    try:
        split_dialogue(text)
    except DataError:
        return False
    return True


# -- one long token stream -----------------------------------------------------------------------------------------

@dataclass
class StreamScore:
    """A model scored on one token stream: mean loss in nats per predicted token, how many tokens were predicted
    (every id but the first), in how many windows of at most `seq_len` positions."""

    loss: float
    tokens: int
    windows: int
    seq_len: int

    @property
    def perplexity(self) -> float:
        return perplexity(self.loss)

    def bits_per_byte(self, n_bytes: int) -> float:
        """The total loss in bits over `n_bytes` bytes of text (its UTF-8 size): loss * tokens / n_bytes / ln 2,
        comparable across tokenizers."""
        checks.positive_int(n_bytes, "n_bytes")
        return self.loss * self.tokens / n_bytes / math.log(2)


def token_losses(logits: Any, targets: Any) -> Any:
    """-log softmax(logits) at each target, row by row (blocks of rows at a large vocabulary).

    logits: (N, V) float; targets: (N,) int -> (N,) float, on the logits' device; logits are left unchanged."""
    xp = array_namespace(logits)
    N, V = logits.shape
    step = max(1, CHUNK_ELEMENTS // V)
    parts = []
    for r0 in range(0, N, step):
        n = min(step, N - r0)  # slices stay in bounds (array-api-strict refuses any other)
        z = logits[r0:r0 + n, :]
        top = xp.max(z, axis=-1, keepdims=True)  # (n, 1)
        lse = xp.log(xp.sum(xp.exp(z - top), axis=-1)) + top[:, 0]  # (n,)
        flat = xp.arange(n, device=device(z)) * V + targets[r0:r0 + n]
        parts.append(lse - xp.take(xp.reshape(z, (-1,)), flat))
    return parts[0] if len(parts) == 1 else xp.concat(parts)


def stream_windows(n_ids: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, length) of the non-overlapping windows that predict ids 1..n_ids-1 once each: inputs
    ``ids[start:start+length]``, targets one further; every window has `seq_len` positions but the last."""
    return [(s, min(seq_len, n_ids - 1 - s)) for s in range(0, n_ids - 1, seq_len)]


def evaluate_stream(model: Any, ids: Any, seq_len: int | None = None, batch_size: int = 8) -> StreamScore:
    """The loss of `model` on the token ids `ids` (a 1-D sequence; a NumPy memory map is read window by window),
    in non-overlapping windows of `seq_len` (default the model's context) positions, `batch_size` windows a forward
    pass; one device -> host transfer.

    Each id but the first is predicted once, from the ids before it in its window (at most seq_len - 1 of them)."""
    ctx = model.config.max_seq_len
    seq_len = ctx if seq_len is None else checks.positive_int(seq_len, "seq_len")
    checks.positive_int(batch_size, "batch_size")
    if seq_len > ctx:
        raise ConfigError(f"seq_len {seq_len} is longer than the model's context ({ctx} positions); give at most "
                          f"{ctx}", param="seq_len")
    ids = ids if isinstance(ids, np.ndarray) else np.asarray(ids, dtype=np.int64)  # a memory map stays one
    ids = ids.reshape(-1)
    if ids.size < 2:
        raise DataError(f"the token stream has {ids.size} id{'s' if ids.size != 1 else ''}: a loss needs at least 2 "
                        "(one to predict from, one to predict)")
    be = model.backend
    xp = be.xp
    windows = stream_windows(int(ids.size), seq_len)
    full = [s for s, n in windows if n == seq_len]
    groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    groups += [[s] for s, n in windows if n < seq_len]  # the last, shorter window: a batch of its own
    sums = []
    for starts in groups:
        n = min(seq_len, int(ids.size) - 1 - starts[0])
        x = np.stack([ids[s:s + n] for s in starts]).astype(np.int64)  # (b, n): only these ids are read
        y = np.stack([ids[s + 1:s + 1 + n] for s in starts]).astype(np.int64)
        logits = model.predict(x)  # (b, n, V)
        nll = token_losses(xp.reshape(logits, (-1, logits.shape[-1])), be.asarray(y.reshape(-1), dtype=xp.int64))
        sums.append(xp.sum(nll))
    total = float(np.sum(be.to_numpy(xp.stack(sums)).astype(np.float64)))
    return StreamScore(total / (ids.size - 1), int(ids.size) - 1, len(windows), seq_len)
