"""The layout of one training batch before it is sent to the device: padded to a captured shape, or split by
sequences into shards for threads and ranks (the checks themselves are :mod:`llm.nn.batch_checks`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from llm.errors import ConfigError
from llm.nn.batch_checks import (DeviceBatch, _as_ids, _check_range, batch_shape, check_ids, check_mask,  # noqa: F401
                                 is_host, prepare_batch)


class HostShard(NamedTuple):
    """One shard of a batch on the host, laid out as :class:`DeviceBatch` (see :func:`host_shards`): NumPy
    tokens (b, T), targets (n,), rows (n,) or None, weights (n,) float64."""

    tokens: np.ndarray
    targets: np.ndarray
    rows: np.ndarray | None
    weights: np.ndarray


class ShardedBatch(NamedTuple):
    """A batch split by sequences: its shards (host or device, in order) and `count`, the number of positions
    that count in the whole batch (every shard's weights are ``1 / count``)."""

    shards: list
    count: int


def prepare_padded_batch(backend: Any, config: Any, tokens: Any, targets: Any, mask: Any,
                         shape: tuple[int, int], count: int | None = None) -> DeviceBatch:
    """Like :func:`prepare_batch`, laid out for a captured step of fixed `shape` (B_pad, T_pad).

    Every position is kept (rows is None) and the mask becomes per-position weights summing to 1, so batches of any
    size and mask reuse one shape. Padded positions hold token 0 and weight 0: they change nothing, since padding
    is on the right and attention is causal. -> DeviceBatch(tokens (B_pad, T_pad), targets (B_pad*T_pad,), None,
    weights (B_pad*T_pad,)). `count` (a micro-batch of a larger batch): the positions that count in the whole
    batch, so that the weights are ``1 / count`` and the micro-batches' weights together sum to 1.
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
    w[:B, :T] = m / (max(int(m.sum()), 1) if count is None else count)
    xp = backend.xp
    return DeviceBatch(backend.asarray(t_pad, dtype=xp.int64), backend.asarray(y_pad.reshape(-1), dtype=xp.int64),
                       None, backend.asarray(w.reshape(-1)))


def prepare_padded_micro_batches(backend: Any, config: Any, tokens: Any, targets: Any, mask: Any, micro_batch: int,
                                 shape_of: Any) -> list[DeviceBatch]:
    """A (B, T) batch cut into slices of `micro_batch` sequences (the last may hold fewer), each laid out by
    :func:`prepare_padded_batch` for the captured shape ``shape_of(b, T)``, every counted position weighted
    ``1 / count`` of the whole batch (so the slices' weights sum to 1). Every sequence is kept: shapes stay fixed."""
    tok = check_ids(backend, tokens, config, "tokens")
    if not isinstance(tok, np.ndarray):
        tok = backend.to_numpy(tok)
    B, T = tok.shape
    m = np.ones((B, T), dtype=bool) if mask is None else check_mask(backend, mask, (B, T))
    tgt = _as_ids(targets if is_host(targets) else backend.to_numpy(targets), "targets")
    if tgt.shape != (B, T):
        raise ConfigError(f"targets has shape {tgt.shape}, expected {(B, T)} like the tokens")
    count = max(int(m.sum()), 1)
    return [prepare_padded_batch(backend, config, tok[lo:lo + micro_batch], tgt[lo:lo + micro_batch],
                                 m[lo:lo + micro_batch], shape_of(min(micro_batch, B - lo), T), count=count)
            for lo in range(0, B, micro_batch)]


def shard_bounds(batch: int, index: int, n: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of shard `index` of `n`: contiguous, sizes differing by at most one (the first
    ``batch % n`` shards take one more); empty when ``batch < n`` leaves none for this shard."""
    base, extra = divmod(batch, n)
    lo = index * base + min(index, extra)
    return lo, lo + base + (1 if index < extra else 0)


def host_shards(backend: Any, config: Any, tokens: Any, targets: Any, mask: Any, n_shards: int) -> ShardedBatch:
    """Check a batch on the host and split it by sequences into at most `n_shards` shards for data parallelism
    (threads in one process, or the ranks of a distributed run: each takes shard ``i``).

    -> ShardedBatch(shards, count): `count` is the number of positions that count in the whole batch (B*T without
    a mask); each shard is a :class:`HostShard` ``(tokens (b, T), targets (n,), rows (n,) or None, weights (n,))``, as
    :func:`prepare_batch` lays it out for the shard's own b sequences, with every counted position weighted
    ``1 / count``, so the shards' losses and gradients sum to the mean over the whole batch. Sequences with no
    counted position are left out (they add exactly zero to the loss and every gradient); the others are dealt out
    in contiguous blocks whose sizes differ by at most one sequence. A batch with nothing counted has no shards and
    count 0.
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
        return ShardedBatch([], 0)
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
        shards.append(HostShard(np.ascontiguousarray(t_s), y_s, rows, weights))
    return ShardedBatch(shards, count)


def split_shard(shard: HostShard, micro_batch: int | None) -> list[HostShard]:
    """A host shard cut into micro-batches of `micro_batch` sequences (the last may hold fewer), in order; the
    shard itself (a list of one) when it holds no more than that, or `micro_batch` is None.

    Each keeps the shard's per-position weights (``1 / count`` of the whole batch), so the micro-batches' losses
    and gradients sum to the shard's. The rows of a micro-batch are renumbered from its first sequence (None when
    all of its positions count); every sequence of a shard counts somewhere, so no micro-batch is empty.
    """
    b, T = shard.tokens.shape
    if micro_batch is None or b <= micro_batch:
        return [shard]
    out = []
    for lo in range(0, b, micro_batch):
        hi = min(b, lo + micro_batch)
        if shard.rows is None:
            a, z = lo * T, hi * T
            rows = None
        else:
            a, z = (int(i) for i in np.searchsorted(shard.rows, [lo * T, hi * T]))  # rows are sorted
            rows = shard.rows[a:z] - lo * T
            if rows.shape[0] == (hi - lo) * T:
                rows = None
        out.append(HostShard(np.ascontiguousarray(shard.tokens[lo:hi]), shard.targets[a:z], rows,
                             shard.weights[a:z]))
    return out


def send_shard(backend: Any, shard: HostShard) -> DeviceBatch:
    """A host shard of :func:`host_shards` on the device."""
    send = lambda a: backend.asarray(a, dtype=backend.xp.int64)  # noqa: E731
    return DeviceBatch(send(shard.tokens), send(shard.targets), None if shard.rows is None else send(shard.rows),
                       backend.asarray(shard.weights))


def prepare_shards(backend: Any, config: Any, tokens: Any, targets: Any, mask: Any, n_shards: int) -> ShardedBatch:
    """:func:`host_shards`, every shard sent to the device (a :class:`DeviceBatch` each)."""
    split = host_shards(backend, config, tokens, targets, mask, n_shards)
    return ShardedBatch([send_shard(backend, s) for s in split.shards], split.count)
