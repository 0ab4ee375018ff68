"""Host-side checks of token ids, targets and masks before they are sent to the device.

Token ids, targets and masks are checked here, on the host, where they already are and a check costs nothing: a
negative or too-large id would otherwise wrap around or read another row silently on some libraries. The rows that
count in a masked loss are chosen here too, so the step on the device never waits for a data-dependent shape.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from llm.errors import ConfigError

_HOST_TYPES = (list, tuple, np.ndarray, np.generic, int)


class DeviceBatch(NamedTuple):
    """A checked batch on the device, as :meth:`llm.nn.model.GPT.loss_and_grads_device` takes it.

    tokens: (B, T) int; targets: (N,) int, one per counted position; rows: (N,) int flat positions ``b * T + t``
    into the B*T, or None when every position counts (N = B*T); weights: (N,) float summing to 1, or None for the
    plain mean.
    """

    tokens: Any
    targets: Any
    rows: Any = None
    weights: Any = None


def is_host(a: Any) -> bool:
    """True for host data (lists, NumPy arrays), which is checked in full before it is sent."""
    return isinstance(a, _HOST_TYPES)


def batch_shape(tokens: Any) -> tuple[int, ...]:
    """The shape of host data (lists too) or of a device array, as plain ints, without sending or reading it."""
    shape = getattr(tokens, "shape", None)
    return tuple(int(n) for n in (shape if shape is not None else np.shape(tokens)))


def _as_ids(ids: Any, what: str) -> Any:
    # host data -> NumPy int64; a device array is returned as it is, after a dtype check
    if is_host(ids):
        a = np.asarray(ids)
        if a.size == 0 and a.dtype.kind == "f":  # np.asarray([[]]) is float: let the shape check speak
            a = a.astype(np.int64)
        if a.dtype == object or a.dtype.kind not in "iu":
            raise ConfigError(f"{what} must be integer token ids, got dtype {a.dtype}")
        return a.astype(np.int64, copy=False)
    if "int" not in str(ids.dtype):
        raise ConfigError(f"{what} must be integer token ids, got dtype {ids.dtype}")
    return ids


def _check_range(a: np.ndarray, vocab_size: int, what: str) -> None:
    if a.size and (int(a.min()) < 0 or int(a.max()) >= vocab_size):
        bad = int(a.min()) if int(a.min()) < 0 else int(a.max())
        raise ConfigError(f"{what} holds id {bad}, outside [0, {vocab_size}): the vocabulary has {vocab_size} ids "
                          "(was the tokenizer built for another model?)")


def check_ids(backend: Any, ids: Any, config: Any, what: str = "tokens", shape: tuple | None = None,
              max_len: bool = True) -> Any:
    """Check a (B, T) array of token ids and return it (host data as a NumPy int64 array).

    Host data is checked in full: integer dtype, 2-D, B >= 1, 1 <= T <= max_seq_len, every id in [0, vocab_size).
    A device array is checked for shape and dtype only: reading its values would cost a device -> host transfer.
    Raises ConfigError naming what was wrong.
    """
    a = _as_ids(ids, what)
    if a.ndim != 2:
        raise ConfigError(f"{what} must have shape (batch, time), got {tuple(a.shape)}")
    B, T = (int(n) for n in a.shape)
    if B < 1 or T < 1:
        raise ConfigError(f"{what} is empty (shape {(B, T)}): give at least one sequence of at least one token")
    if shape is not None and (B, T) != tuple(shape):
        raise ConfigError(f"{what} has shape {(B, T)}, expected {tuple(shape)} like the tokens")
    if max_len and T > config.max_seq_len:
        raise ConfigError(f"sequence of {T} tokens exceeds max_seq_len {config.max_seq_len}: truncate or split it")
    if isinstance(a, np.ndarray):
        _check_range(a, config.vocab_size, what)
    return a


def check_mask(backend: Any, mask: Any, shape: tuple[int, int]) -> np.ndarray:
    """A host (B, T) boolean loss mask, checked against the tokens' shape (a device mask is read back once)."""
    m = np.asarray(mask) if is_host(mask) else backend.to_numpy(mask)
    if m.dtype != np.bool_:
        raise ConfigError(f"mask must be boolean (True where the target counts), got dtype {m.dtype}")
    if m.shape != tuple(shape):
        raise ConfigError(f"mask has shape {m.shape}, expected {tuple(shape)} like the tokens")
    return m


def prepare_batch(backend: Any, config: Any, tokens: Any, targets: Any, mask: Any = None) -> DeviceBatch:
    """Check a batch on the host and send it: -> DeviceBatch(tokens (B, T), targets (N,), rows (N,) or None, None).

    With a mask, `rows` are the flat positions ``b * T + t`` where it is True (chosen here, on the host) and
    `targets` holds only their targets; without one (or when every position counts) rows is None and N = B*T.
    Targets are range-checked only where they count, so padding may hold any id. N = 0 gives rows of length 0.
    """
    xp = backend.xp
    tok = check_ids(backend, tokens, config, "tokens")
    shape = tuple(int(n) for n in tok.shape)
    tgt = check_ids(backend, targets, config, "targets", shape=shape, max_len=False) if not is_host(targets) \
        else _as_ids(targets, "targets")
    if is_host(targets) and tgt.shape != shape:
        raise ConfigError(f"targets has shape {tgt.shape}, expected {shape} like the tokens")
    rows = None
    if mask is not None:
        m = check_mask(backend, mask, shape)
        if not m.all():
            rows = np.flatnonzero(m)
    send = lambda a: backend.asarray(a, dtype=xp.int64)  # noqa: E731
    if isinstance(tgt, np.ndarray):
        tgt = tgt.reshape(-1) if rows is None else tgt.reshape(-1)[rows]
        _check_range(tgt, config.vocab_size, "targets")
        tgt = send(tgt)
    else:
        tgt = xp.reshape(tgt, (-1,))
        if rows is not None:
            tgt = xp.take(tgt, send(rows), axis=0)
    return DeviceBatch(send(tok), tgt, None if rows is None else send(rows), None)
