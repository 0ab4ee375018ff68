"""Host-side checks and the layout of one training batch before it is sent to the device.

Token ids, targets and masks are checked here, on the host, where they already are and a check costs nothing: a
negative or too-large id would otherwise wrap around or read another row silently on some libraries. The rows that
count in a masked loss are chosen here too, so the step on the device never waits for a data-dependent shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError

_HOST_TYPES = (list, tuple, np.ndarray, np.generic, int)


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


def prepare_batch(backend: Any, config: Any, tokens: Any, targets: Any, mask: Any = None) -> tuple:
    """Check a batch on the host and send it: -> (tokens (B, T), targets (N,), rows (N,) or None, None).

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
    return send(tok), tgt, (None if rows is None else send(rows)), None


def prepare_padded_batch(backend: Any, config: Any, tokens: Any, targets: Any, mask: Any,
                         shape: tuple[int, int]) -> tuple:
    """Like :func:`prepare_batch`, laid out for a captured step of fixed `shape` (B_pad, T_pad).

    Every position is kept (rows is None) and the mask becomes per-position weights summing to 1, so batches of any
    size and mask reuse one shape. Padded positions hold token 0 and weight 0: they change nothing, since padding
    is on the right and attention is causal. -> (tokens (B_pad, T_pad), targets (B_pad*T_pad,), None, weights).
    """
    tok = check_ids(backend, tokens, config, "tokens")
    if not isinstance(tok, np.ndarray):
        tok = backend.to_numpy(tok)
    B, T = tok.shape
    Bp, Tp = shape
    m = np.ones((B, T), dtype=bool) if mask is None else check_mask(backend, mask, (B, T))
    tgt = _as_ids(targets if is_host(targets) else backend.to_numpy(targets), "targets")
    if tgt.shape != (B, T):
        raise ConfigError(f"targets has shape {tgt.shape}, expected {(B, T)} like the tokens")
    tgt = np.where(m, tgt, 0)
    _check_range(tgt, config.vocab_size, "targets")
    t_pad = np.zeros((Bp, Tp), dtype=np.int64)
    y_pad = np.zeros((Bp, Tp), dtype=np.int64)
    w = np.zeros((Bp, Tp), dtype=np.float64)
    t_pad[:B, :T] = tok
    y_pad[:B, :T] = tgt
    w[:B, :T] = m / max(int(m.sum()), 1)
    xp = backend.xp
    return (backend.asarray(t_pad, dtype=xp.int64), backend.asarray(y_pad.reshape(-1), dtype=xp.int64), None,
            backend.asarray(w.reshape(-1)))


def shard_bounds(batch: int, index: int, n: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of shard `index` of `n`: contiguous, sizes differing by at most one (the first
    ``batch % n`` shards take one more); empty when ``batch < n`` leaves none for this shard."""
    base, extra = divmod(batch, n)
    lo = index * base + min(index, extra)
    return lo, lo + base + (1 if index < extra else 0)


def host_shards(backend: Any, config: Any, tokens: Any, targets: Any, mask: Any, n_shards: int) -> tuple:
    """Check a batch on the host and split it by sequences into at most `n_shards` shards for data parallelism
    (threads in one process, or the ranks of a distributed run: each takes shard ``i``).

    -> (shards, count): `count` is the number of positions that count in the whole batch (B*T without a mask);
    each shard is ``(tokens (b, T), targets (n,), rows (n,) or None, weights (n,))`` on the host, as
    :func:`prepare_batch` lays it out for the shard's own b sequences, with every counted position weighted
    ``1 / count``, so the shards' losses and gradients sum to the mean over the whole batch. Sequences with no
    counted position are left out (they add exactly zero to the loss and every gradient); the others are dealt out
    in contiguous blocks whose sizes differ by at most one sequence. A batch with nothing counted gives ``([], 0)``.
    """
    tok = check_ids(backend, tokens, config, "tokens")
    if not isinstance(tok, np.ndarray):
        tok = backend.to_numpy(tok)
    shape = tuple(int(n) for n in tok.shape)
    tgt = _as_ids(targets if is_host(targets) else backend.to_numpy(targets), "targets")
    if tgt.shape != shape:
        raise ConfigError(f"targets has shape {tgt.shape}, expected {shape} like the tokens")
    m = None if mask is None else check_mask(backend, mask, shape)
    if m is not None and m.all():
        m = None
    if m is None:
        keep = None
        count = shape[0] * shape[1]
        _check_range(tgt, config.vocab_size, "targets")
    else:
        count = int(m.sum())
        _check_range(tgt[m], config.vocab_size, "targets")
        keep = np.flatnonzero(m.any(axis=1))  # the sequences with at least one counted position
        if keep.shape[0] == shape[0]:
            keep = None
    if count == 0:
        return [], 0
    if keep is not None:
        tok, tgt, m = tok[keep], tgt[keep], m[keep]
    shards = []
    for i in range(n_shards):
        lo, hi = shard_bounds(tok.shape[0], i, n_shards)
        if hi <= lo:
            break
        t_s, y_s, rows = tok[lo:hi], tgt[lo:hi].reshape(-1), None
        if m is not None:
            m_s = m[lo:hi]
            if not m_s.all():
                rows = np.flatnonzero(m_s)
                y_s = y_s[rows]
        weights = np.full(y_s.shape[0], 1.0 / count)  # float64 here; the backend's dtype once sent
        shards.append((np.ascontiguousarray(t_s), y_s, rows, weights))
    return shards, count


def send_shard(backend: Any, shard: tuple) -> tuple:
    """A host shard of :func:`host_shards` on the device: (tokens, targets, rows or None, weights)."""
    t_s, y_s, rows, weights = shard
    send = lambda a: backend.asarray(a, dtype=backend.xp.int64)  # noqa: E731
    return send(t_s), send(y_s), None if rows is None else send(rows), backend.asarray(weights)


def prepare_shards(backend: Any, config: Any, tokens: Any, targets: Any, mask: Any, n_shards: int) -> tuple:
    """:func:`host_shards`, every shard sent to the device: -> (shards, count)."""
    shards, count = host_shards(backend, config, tokens, targets, mask, n_shards)
    return [send_shard(backend, s) for s in shards], count
