"""Batch sources: where the training loop's batches come from (host side).

Two kinds feed the one loop (:mod:`llm.training.loop`):

* :class:`ExampleEpochs`: shuffled epochs over encoded examples (facts, dialogues), one list per phase, each batch
  right-padded to its longest sequence with a loss mask;
* :class:`TokenWindows`: windows at uniform random offsets into one long token stream (a book, nanoGPT's way),
  with a fixed set of validation windows spread evenly over the held-out part.

A source keeps its place in the run's :class:`~llm.training.loop.TrainState` (``epoch``, ``batch`` and
``rng_state``), so a run saved at any step boundary resumes to the same batches.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from llm.data.corpora import Batch, Example, collate
from llm.errors import ConfigError


# -- shuffled epochs of examples -------------------------------------------------------------------------------------

def iterate_batches(examples: list[Example], batch_size: int, pad_id: int,
                    order: np.ndarray | None = None, start: int = 0) -> Iterator[Batch]:
    """Yield batches of `batch_size` examples taken in `order` (a permutation; None keeps corpus order).

    `start` skips the first batches (resuming mid-epoch). The last batch may be smaller.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}", param="batch_size")
    order = np.arange(len(examples)) if order is None else order
    for i in range(start * batch_size, len(order), batch_size):
        yield collate([examples[j] for j in order[i:i + batch_size]], pad_id)


def new_shuffle_state(seed: int | None) -> dict:
    """The state of a fresh generator (JSON-serializable, so checkpoints can carry it)."""
    return np.random.default_rng(seed).bit_generator.state


def shuffled_order(state: dict, n: int) -> tuple[np.ndarray, dict]:
    """An epoch's order of `n` examples drawn from the RNG in `state`, and the RNG's state afterwards."""
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    order = rng.permutation(n)
    return order, rng.bit_generator.state


def num_batches(n_examples: int, batch_size: int) -> int:
    """How many batches of `batch_size` cover `n_examples` (the last one may be short)."""
    return -(-n_examples // batch_size)


class ExampleEpochs:
    """Shuffled epochs over each phase's examples; the validation loss over each phase's held-out examples."""

    has_epochs = True

    def __init__(self, examples: dict[str, list[Example]], val_examples: dict[str, list[Example]],
                 batch_size: int, pad_id: int) -> None:
        self.examples, self.val_examples = examples, val_examples
        self.batch_size, self.pad_id = batch_size, pad_id

    def size(self, phase: str) -> int:
        """Training examples of `phase` (0: nothing to train on)."""
        return len(self.examples[phase])

    def batches_per_epoch(self, phase: str) -> int:
        return num_batches(self.size(phase), self.batch_size)

    def epoch(self, phase: str, state: Any) -> tuple[Iterator[Batch], dict]:
        """The rest of the current epoch of `phase` (from ``state.batch``), and the RNG state for the next one."""
        order, next_rng_state = shuffled_order(state.rng_state, self.size(phase))
        return iterate_batches(self.examples[phase], self.batch_size, self.pad_id, order, start=state.batch), \
            next_rng_state

    def validation_loss(self, model: Any, phase: str) -> float | None:
        """Mean loss over `phase`'s held-out examples (None without any): a forward pass, one transfer."""
        from llm.infer.evaluation import evaluate_examples

        val = self.val_examples[phase]
        if not val:
            return None
        return evaluate_examples(model, val, self.pad_id, self.batch_size)[0]


# -- windows into one long token stream ------------------------------------------------------------------------------

def windows_at(data: np.ndarray, offsets: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token targets, each (len(offsets), seq_len) int64: ``data[o:o + seq_len]`` and
    ``data[o + 1:o + seq_len + 1]`` for each offset `o` (every offset must leave room for seq_len + 1 tokens)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.size and (offsets.min() < 0 or offsets.max() + seq_len + 1 > len(data)):
        raise ConfigError(f"a window of {seq_len + 1} tokens at offsets {offsets.min()}..{offsets.max()} does not "
                          f"fit in {len(data)} tokens")
    idx = offsets[:, None] + np.arange(seq_len + 1, dtype=np.int64)[None, :]
    rows = np.asarray(data[idx], dtype=np.int64)  # only these windows are read (from a memory map) and copied
    return rows[:, :-1], rows[:, 1:]


def random_windows(data: np.ndarray, batch_size: int, seq_len: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`batch_size` windows at uniform random offsets (nanoGPT's ``get_batch``): ``(tokens, targets)``."""
    n_starts = len(data) - seq_len
    if n_starts < 1:
        raise ConfigError(f"{len(data)} tokens hold no window of {seq_len + 1}")
    return windows_at(data, rng.integers(0, n_starts, size=batch_size), seq_len)


def spread_offsets(n_tokens: int, n_windows: int, seq_len: int) -> np.ndarray:
    """`n_windows` offsets spread evenly over `n_tokens` (the same every time: a fixed evaluation set)."""
    last = n_tokens - seq_len - 1
    if last < 0:
        raise ConfigError(f"{n_tokens} tokens hold no window of {seq_len + 1}")
    return np.linspace(0, last, n_windows).round().astype(np.int64)


def token_stream(ids: Any, name: str = "train_ids") -> Any:
    """`ids` as a 1-D integer array, not copied when it already is one (a ``numpy.memmap`` of a token dataset stays
    a map: only each batch's windows are read); a list or a tuple becomes an int64 array."""
    arr = ids if isinstance(ids, np.ndarray) else np.asarray(ids, dtype=np.int64)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ConfigError(f"{name} must be a 1-D array of integer token ids, got shape {arr.shape} of {arr.dtype}",
                          param=name)
    return arr if arr.size else arr.astype(np.int64)


class TokenWindows:
    """Random windows of `seq_len` tokens from `train_ids` (a generator seeded with `seed`, whose state the run
    keeps); validation on `eval_windows` fixed windows spread over `val_ids`. Both may be any 1-D integer array,
    a ``numpy.memmap`` included: they are never copied whole."""

    has_epochs = False

    def __init__(self, train_ids: np.ndarray, val_ids: np.ndarray, batch_size: int, seq_len: int, seed: int,
                 eval_windows: int) -> None:
        self.batch_size, self.seq_len, self.eval_windows = batch_size, seq_len, eval_windows
        self.rng = np.random.default_rng(seed)
        self.train_ids = token_stream(train_ids)
        self.set_val(val_ids)

    def set_val(self, val_ids: np.ndarray) -> None:
        self.val_ids = token_stream(val_ids, "val_ids")
        T = self.seq_len
        self.eval_offsets = (spread_offsets(len(self.val_ids), self.eval_windows, T)
                             if len(self.val_ids) > T else None)

    def size(self, phase: str) -> int:
        return len(self.train_ids)

    def draw(self, state: Any) -> Batch:
        """The next batch; ``state.rng_state`` follows the generator, so a save at any step resumes exactly."""
        tokens, targets = random_windows(self.train_ids, self.batch_size, self.seq_len, self.rng)
        state.rng_state = self.rng.bit_generator.state
        return Batch(tokens, targets, None, int(tokens.size))

    def epoch(self, phase: str, state: Any) -> tuple[Iterator[Batch], None]:
        """Endless batches (a window source has no epochs: the phase's step budget ends it)."""
        if state.rng_state is not None:
            self.rng.bit_generator.state = state.rng_state

        def endless() -> Iterator[Batch]:
            while True:
                yield self.draw(state)

        return endless(), None

    def validation_loss(self, model: Any, phase: str) -> float | None:
        """Mean loss over the fixed validation windows (None without a validation part): a plain forward pass
        (``model.predict``); no gradient, no optimizer state and no batch generator is touched."""
        from llm.nn.loss import cross_entropy

        if self.eval_offsets is None:
            return None
        be, T, B = model.backend, self.seq_len, self.batch_size
        losses = []
        for i in range(0, len(self.eval_offsets), B):
            tokens, targets = windows_at(self.val_ids, self.eval_offsets[i:i + B], T)
            loss, _ = cross_entropy(model.predict(tokens), be.asarray(targets, dtype=be.xp.int64))
            losses.append(loss)
        return float(be.to_numpy(be.xp.stack(losses)).astype(np.float64).mean())
