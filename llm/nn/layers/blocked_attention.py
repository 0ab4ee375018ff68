"""Blocked causal attention: the FlashAttention-2 algorithm (Dao, 2023) written in array-API operations.

The explicit path in :mod:`llm.nn.layers.attention` builds the (B, H, T, T) scores and keeps the probabilities
for backward. Here queries are taken ``block_q`` rows at a time and keys ``block_k`` columns at a time; the
forward pass keeps a running row max and a running row sum (an online softmax), so it keeps only the output and
one log-sum-exp per query row, (B, H, T). Backward recomputes each block's probabilities from q, k and that
log-sum-exp, and uses ``D = rowsum(dO * O)`` for the softmax's row term. The largest temporary is
(B, H, block_q, block_k); key blocks entirely above the causal diagonal are skipped, not masked, and only the
blocks that cross it get the causal bias.

Masking is the explicit path's, value for value: forbidden scores get ``MASK_VALUE`` added (causal and padding
biases summed as there), so a query row whose keys are all padding gets the same finite softmax as there. Such a
row's scores sit near ``MASK_VALUE``, where a log-sum-exp would lose its low digits; those rows (known from the
key mask) are shifted back by ``MASK_VALUE`` after the bias is added, an exact subtraction that leaves the
probabilities as the explicit path computes them and their log-sum-exp an ordinary number. The explicit path lets
such a row attend to later real keys too (their causal bias equals its padding bias), so the query blocks holding
one visit every key block; with no key mask, or padding on the right, every block above the diagonal is skipped.
"""

from __future__ import annotations

from typing import Any, Iterator

from llm.nn.namespace import array_namespace, device

from backends.ops import exp_

from llm.nn.layers.reductions import array_key, sum_last

# Added to the scores of forbidden keys. Finite, so a row with every key masked (a padding query) gives a uniform
# softmax instead of NaN; exp() of it underflows to exactly 0 in float32 and float64. (In float64 the scores
# s + MASK_VALUE keep s to about 1e-7, so such a row's softmax is that of its rounded scores, nearly uniform only
# in float32; the blocked path reproduces whichever the explicit path computes.)
MASK_VALUE = -1e9

# Block sizes and the length from which "auto" attention is blocked: chosen by measurement (docs/measurements.md,
# benchmarks/attention_memory.py --sweep), NumPy on a 2-core CPU.
BLOCK_Q = 128
BLOCK_K = 128
BLOCKED_FROM = 512

_CONSTANTS: dict[tuple, Any] = {}  # causal bias blocks, per (row offset, shape, array type, dtype, device)


def _dense(xp: Any, x: Any) -> Any:
    # x: (B, H, T, D), often a view of the QKV projection's (B, T, 3, H, D) -> the same values, row-major: NumPy
    # multiplies the small blocks of a strided view several times slower (no BLAS); reshape copies only if needed
    return xp.reshape(xp.reshape(x, (-1,)), x.shape)


def _causal_block(xp: Any, first_row: int, bq: int, bk: int, like: Any) -> Any:
    # -> (bq, bk): MASK_VALUE where key column c > query row first_row + r (positions relative to the key block)
    key = (first_row, bq, bk, *array_key(like))
    bias = _CONSTANTS.get(key)
    if bias is None:
        rows = xp.arange(first_row, first_row + bq, device=device(like))[:, None]
        cols = xp.arange(bk, device=device(like))[None, :]
        bias = _CONSTANTS[key] = xp.astype(cols > rows, like.dtype) * MASK_VALUE
    return bias


def _padding(xp: Any, key_mask: Any, T_q: int, like: Any) -> tuple[Any, Any, int]:
    # key_mask: (B, T_k) bool or None -> pad: (B, 1, 1, T_k) bias, shift: (B, 1, T_q, 1) MASK_VALUE on query rows
    # (the last T_q positions) that see no real key, else 0, and how many leading query rows are such a row in some
    # sequence (one value read back: it decides which blocks are visited); (None, None, 0) without a mask
    if key_mask is None:
        return None, None, 0
    real = xp.astype(key_mask, like.dtype)
    pad = (1.0 - real) * MASK_VALUE
    blind = xp.cumulative_sum(real, axis=1)[:, -T_q:] == 0  # no real key at or before the query's position
    n_blind = int(xp.max(xp.sum(xp.astype(blind, xp.int64), axis=1)))  # a prefix of the rows in each sequence
    shift = xp.astype(blind, like.dtype) * MASK_VALUE
    return pad[:, None, None, :], shift[:, None, :, None], n_blind


def _key_blocks(xp: Any, first: int, bq: int, block_k: int, pad: Any, like: Any,
                n_keys: int) -> Iterator[tuple[int, int, Any]]:
    # -> (ks, ke, bias) for the key blocks 0 .. n_keys-1 seen by query rows at positions first .. first+bq-1;
    # bias: None, (bq, bk), (B, 1, 1, bk) or (B, 1, bq, bk). n_keys is first+bq (keys after the last row's
    # position are skipped) except for rows that see only padding: see _visited.
    for ks in range(0, n_keys, block_k):
        ke = min(ks + block_k, n_keys)
        bias = _causal_block(xp, first - ks, bq, ke - ks, like) if ke - 1 > first else None
        if pad is not None:
            p = pad[..., ks:ke]
            bias = p if bias is None else bias + p  # causal + padding, then added once: the explicit order
        yield ks, ke, bias


def _visited(first: int, bq: int, T_k: int, blind: bool) -> int:
    # -> how many keys the query rows first .. first+bq-1 visit. The explicit path gives a row that sees only
    # padding (blind) MASK_VALUE on its padding keys and on its later real keys alike (the causal bias), so its
    # softmax spreads over both: such blocks visit every key; the others skip those above the diagonal.
    return T_k if blind else first + bq


def _scores(xp: Any, q: Any, k: Any, bias: Any, shift: Any) -> Any:
    # q: (B, H, bq, D), k: (B, H, bk, D) -> (B, H, bq, bk) biased scores, padding-only rows shifted back
    s = q @ xp.matrix_transpose(k)
    if bias is not None:
        s += bias
    if shift is not None:
        s -= shift
    return s


def _forward_rows(xp: Any, q: Any, k: Any, v: Any, first: int, pad: Any, shift: Any, block_k: int,
                  n_keys: int) -> tuple[Any, Any]:
    # q: (B, H, bq, D) at positions first.., k, v: (B, H, T_k, D) -> out (B, H, bq, D), lse (B, H, bq, 1)
    m = l = acc = None
    for ks, ke, bias in _key_blocks(xp, first, q.shape[2], block_k, pad, q, n_keys):
        s = _scores(xp, q, k[:, :, ks:ke, :], bias, shift)
        m_blk = xp.max(s, axis=-1, keepdims=True)
        if m is None:  # the first block: nothing to rescale
            m = m_blk
            s -= m
            p = exp_(s)
            l, acc = sum_last(p), p @ v[:, :, ks:ke, :]
            continue
        m_new = xp.maximum(m, m_blk)
        alpha = xp.exp(m - m_new)  # (B, H, bq, 1): what the old sums are worth under the new max
        s -= m_new
        p = exp_(s)
        l *= alpha
        l += sum_last(p)
        acc *= alpha
        acc += p @ v[:, :, ks:ke, :]
        m = m_new
    return acc / l, m + xp.log(l)


def blocked_forward(q: Any, k: Any, v: Any, key_mask: Any = None, block_q: int = BLOCK_Q,
                    block_k: int = BLOCK_K) -> tuple[Any, Any]:
    """Causal attention without the (T_q, T_k) scores: -> ``out`` (B, H, T_q, D) and ``lse`` (B, H, T_q).

    q: (B, H, T_q, D), already scaled by 1/sqrt(D); k, v: (B, H, T_k, D) with T_k >= T_q, the queries being the
    last T_q positions (T_q < T_k when decoding with a KV cache); key_mask: (B, T_k) bool, True for real tokens,
    or None. ``lse`` is each query row's log-sum-exp of its biased scores (shifted back by MASK_VALUE on rows
    that see only padding), what :func:`blocked_backward` needs beside the output.
    """
    # q: (B, H, T_q, D), k, v: (B, H, T_k, D) -> out: (B, H, T_q, D), lse: (B, H, T_q)
    xp = array_namespace(q)
    q, k, v = _dense(xp, q), _dense(xp, k), _dense(xp, v)
    B, H, T_q, D = q.shape
    offset = k.shape[2] - T_q
    pad, shift, n_blind = _padding(xp, key_mask, T_q, q)
    out = xp.empty((B, H, T_q, D), dtype=q.dtype, device=device(q))
    lse = xp.empty((B, H, T_q), dtype=q.dtype, device=device(q))
    for qs in range(0, T_q, block_q):
        qe = min(qs + block_q, T_q)
        rows = None if shift is None else shift[:, :, qs:qe, :]
        n_keys = _visited(offset + qs, qe - qs, k.shape[2], qs < n_blind)
        o, r = _forward_rows(xp, q[:, :, qs:qe, :], k, v, offset + qs, pad, rows, block_k, n_keys)
        out[:, :, qs:qe, :] = o
        lse[:, :, qs:qe] = r[..., 0]
    return out, lse


def blocked_backward(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, key_mask: Any = None,
                     block_q: int = BLOCK_Q, block_k: int = BLOCK_K) -> tuple[Any, Any, Any]:
    """The gradients of :func:`blocked_forward`'s output: -> ``dq, dk, dv`` (dq with respect to the scaled q).

    dout, out: (B, H, T_q, D); q, k, v, key_mask and the block sizes as given to the forward pass, lse its
    log-sum-exp. Each block's probabilities are recomputed as ``exp(scores - lse)``; ``D = rowsum(dout * out)``
    is the softmax's row term (it equals ``rowsum(p * dp)``), so no (T_q, T_k) array is ever built.
    """
    # dout, out: (B, H, T_q, D), q: (B, H, T_q, D), k, v: (B, H, T_k, D), lse: (B, H, T_q) -> dq, dk, dv
    xp = array_namespace(q)
    q, k, v, dout = _dense(xp, q), _dense(xp, k), _dense(xp, v), _dense(xp, dout)
    T_q = q.shape[2]
    offset = k.shape[2] - T_q
    pad, shift, n_blind = _padding(xp, key_mask, T_q, q)
    row_term = sum_last(dout * out)  # (B, H, T_q, 1)
    dq, dk, dv = xp.zeros_like(q), xp.zeros_like(k), xp.zeros_like(v)
    for qs in range(0, T_q, block_q):
        qe = min(qs + block_q, T_q)
        q_b, do_b, d_b = q[:, :, qs:qe, :], dout[:, :, qs:qe, :], row_term[:, :, qs:qe, :]
        lse_b = lse[:, :, qs:qe, None]
        rows = None if shift is None else shift[:, :, qs:qe, :]
        dq_b = dq[:, :, qs:qe, :]
        n_keys = _visited(offset + qs, qe - qs, k.shape[2], qs < n_blind)
        for ks, ke, bias in _key_blocks(xp, offset + qs, qe - qs, block_k, pad, q, n_keys):
            k_b, v_b = k[:, :, ks:ke, :], v[:, :, ks:ke, :]
            s = _scores(xp, q_b, k_b, bias, rows)
            s -= lse_b
            p = exp_(s)  # (B, H, bq, bk): the forward's probabilities, recomputed
            dv[:, :, ks:ke, :] += xp.matrix_transpose(p) @ do_b
            ds = do_b @ xp.matrix_transpose(v_b)  # dp
            ds -= d_b
            ds *= p  # the scores' gradient
            dq_b += ds @ k_b
            dk[:, :, ks:ke, :] += xp.matrix_transpose(ds) @ q_b
        dq[:, :, qs:qe, :] = dq_b
    return dq, dk, dv
