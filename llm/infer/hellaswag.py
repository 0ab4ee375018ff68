"""HellaSwag multiple choice, scored the way llm.c and build-nanogpt score it ("completion style").

    examples = read_hellaswag("hellaswag_val.jsonl")       # each line: {"ctx": ..., "endings": [4 texts], "label": i}
    score = score_hellaswag(model, tokenizer, examples)    # HellaSwagScore(examples, correct, correct_norm, ...)

For each example the context is followed by each of its four endings (``ctx`` + ``" " + ending``, tokenized apart,
as build-nanogpt does); the model's loss on the ending's tokens alone (given the context and the ending's earlier
tokens) is summed. ``acc`` picks the ending of lowest total loss, ``acc_norm`` the one of lowest mean loss per
ending token (what llm.c reports: 0.2955 for GPT-2 124M on the 10,042 validation examples). A row longer than the
model's context keeps its last ``max_seq_len + 1`` tokens (the context is cut from the left).

A forward pass only; the losses of every batch stay on the device and come back in one transfer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np  # host side: the padded id batches in, the four totals per example out

from llm import checks
from llm.errors import DataError
from llm.infer.evaluation import token_losses

N_ENDINGS = 4


@dataclass
class HellaSwagExample:
    """One example: the context, its four endings, the index of the right one, and its line in the file."""

    ctx: str
    endings: list[str]
    label: int
    line: int = 0


@dataclass
class HellaSwagScore:
    """How many examples were right by total loss (`correct`) and by mean loss per token (`correct_norm`); the
    losses of each example's endings (`sums`, `counts`: totals in nats and ending tokens)."""

    examples: int
    correct: int
    correct_norm: int
    sums: list[list[float]] = field(default_factory=list)
    counts: list[list[int]] = field(default_factory=list)

    @property
    def acc(self) -> float:
        return self.correct / self.examples if self.examples else 0.0

    @property
    def acc_norm(self) -> float:
        return self.correct_norm / self.examples if self.examples else 0.0


def parse_example(line: str, number: int, where: str = "the file") -> HellaSwagExample:
    """One jsonl line as an example; DataError naming `where` and the line `number` when it is not one."""
    bad = f"{where} line {number}"
    try:
        d = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{bad} is not JSON ({exc.msg}); each line must be one HellaSwag example") from None
    if not isinstance(d, dict):
        raise DataError(f"{bad} is not a JSON object; each line must be {{\"ctx\", \"endings\", \"label\"}}")
    ctx, endings, label = d.get("ctx"), d.get("endings"), d.get("label")
    if not isinstance(ctx, str) or not ctx.strip():
        raise DataError(f"{bad} has no \"ctx\" text; each example needs its context")
    if not (isinstance(endings, list) and len(endings) == N_ENDINGS and all(isinstance(e, str) for e in endings)):
        raise DataError(f"{bad}: \"endings\" must be a list of {N_ENDINGS} texts")
    if not (checks.is_int(label) and 0 <= label < N_ENDINGS):
        raise DataError(f"{bad}: \"label\" must be an integer from 0 to {N_ENDINGS - 1}, got {label!r}")
    return HellaSwagExample(ctx, list(endings), int(label), number)


def read_hellaswag(path: str, limit: int | None = None) -> list[HellaSwagExample]:
    """The examples of a HellaSwag jsonl file (blank lines skipped), the first `limit` when given."""
    checks.positive_int(limit, "limit", allow_none=True)
    out: list[HellaSwagExample] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    out.append(parse_example(line, number, str(path)))
                    if limit is not None and len(out) == limit:
                        break
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; give a HellaSwag jsonl file", param="path") from None
    if not out:
        raise DataError(f"{path} holds no example; give a HellaSwag jsonl file (one JSON object a line)", param="path")
    return out


def example_rows(tokenizer: Any, ex: HellaSwagExample, max_len: int) -> list[tuple[list[int], int]]:
    """Per ending: (the ids of context + ending, at most `max_len`, cut from the left; where the ending starts)."""
    ctx = tokenizer.encode(ex.ctx)
    rows = []
    for i, ending in enumerate(ex.endings):
        end = tokenizer.encode(" " + ending)
        if not ctx or not end:
            what = "its context" if not ctx else f"ending {i}"
            raise DataError(f"line {ex.line}: {what} has no tokens for this tokenizer; nothing to score")
        ids = (ctx + end)[-max_len:]
        rows.append((ids, max(1, len(ids) - len(end))))  # the first id is never predicted
    return rows


def score_hellaswag(model: Any, tokenizer: Any, examples: list[HellaSwagExample],
                    batch_size: int = 8) -> HellaSwagScore:
    """Score `examples` (see the module docstring), `batch_size` examples (4 rows each) a forward pass."""
    checks.positive_int(batch_size, "batch_size")
    be = model.backend
    xp = be.xp
    max_len = model.config.max_seq_len + 1
    rows_of = [example_rows(tokenizer, ex, max_len) for ex in examples]
    sums, counts = [], []
    for b0 in range(0, len(examples), batch_size):
        rows = [r for rs in rows_of[b0:b0 + batch_size] for r in rs]
        width = max(len(ids) for ids, _ in rows)
        tokens = np.zeros((len(rows), width), dtype=np.int64)  # right padding: causal attention never sees it
        mask = np.zeros((len(rows), width - 1), dtype=bool)  # which targets are ending tokens
        for j, (ids, start) in enumerate(rows):
            tokens[j, :len(ids)] = ids
            mask[j, start - 1:len(ids) - 1] = True
        logits = model.predict(tokens[:, :-1])  # (R, width - 1, V)
        nll = token_losses(xp.reshape(logits, (-1, logits.shape[-1])),
                           be.asarray(tokens[:, 1:].reshape(-1), dtype=xp.int64))
        weights = be.asarray(mask.reshape(len(rows), -1).astype(np.float64))
        sums.append(xp.sum(xp.reshape(nll, mask.shape) * weights, axis=1))  # (R,)
        counts.append(mask.sum(axis=1))
    total = be.to_numpy(xp.concat(sums)).astype(np.float64).reshape(-1, N_ENDINGS)
    count = np.concatenate(counts).reshape(-1, N_ENDINGS)
    labels = np.asarray([ex.label for ex in examples])
    pred, pred_norm = np.argmin(total, axis=1), np.argmin(total / count, axis=1)
    return HellaSwagScore(len(examples), int(np.sum(pred == labels)), int(np.sum(pred_norm == labels)),
                          total.tolist(), count.astype(int).tolist())
