"""Scoring a model on texts: the loss and perplexity of a held-out set, and exact-match on dialogues.

    result = llm.evaluate(model, tokenizer, texts)        # Evaluation(loss, perplexity, tokens, exact_match)

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
from llm.nn.loss import cross_entropy


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
