"""Softmax cross-entropy fused with its gradient.

Low-precision logits (float16 / bfloat16, under mixed precision) are widened to float32 block by block: the
log-sum-exp, the loss and the softmax are float32, and only the gradient written back over the logits is narrowed
(after multiplying by the loss scale, where one is given, so that small gradients survive float16).
"""

from __future__ import annotations

from typing import Any

from llm.nn.layers.reductions import array_key, constant, low_precision
from llm.nn.namespace import array_namespace, device

from backends.ops import add_at_columns

_OFFSETS: dict[tuple, Any] = {}  # (namespace, N, V, device) -> arange(N) * V, the flat index of each row's start


def _row_offsets(xp: Any, N: int, V: int, like: Any) -> Any:
    key = (N, V, *array_key(like))
    off = _OFFSETS.get(key)
    if off is None:
        off = _OFFSETS[key] = xp.arange(N, device=device(like)) * V
    return off


# Rows of logits handled at once: above this many elements the loss runs block by block, so its temporaries (the
# exponentials) never hold a second copy of a large (N, V) array. At GPT-2's vocabulary and 8 x 1024 positions that
# is 1.6 GB less at the step's peak, where every layer's activations are alive too.
CHUNK_ELEMENTS = 1 << 24


def softmax_cross_entropy(z: Any, targets: Any, weights: Any = None, grad_scale: Any = None) -> tuple[Any, Any]:
    """Weighted cross-entropy of rows of logits and its gradient; `z` is overwritten (it becomes dlogits).

    z: (N, V) float; targets: (N,) int; weights: (N,) float summing to 1 (or to 0), or None for the mean over
    the N rows. Returns (loss as a 0-d device array, dlogits (N, V)). Log-sum-exp with the row max subtracted,
    so large logits cannot overflow. Nothing here reads a value back to the host.

    Float16 / bfloat16 logits: the loss (float32) and the softmax are computed in float32; dlogits keeps z's dtype.
    `grad_scale` (a 0-d float32 device array, or None) multiplies dlogits only, not the loss: a loss scale.
    """
    N, V = z.shape
    rows = max(1, CHUNK_ELEMENTS // V)
    low = low_precision(array_namespace(z), z)
    if N <= rows and not low and grad_scale is None:
        return _cross_entropy_block(z, targets, weights, N)
    loss = None
    for r0 in range(0, N, rows):  # block by block, each block's gradient written back over its logits
        r1 = min(N, r0 + rows)
        zb = z[r0:r1, :]
        xp = array_namespace(z)
        part, grad = _cross_entropy_block(xp.astype(zb, xp.float32) if low else zb, targets[r0:r1],
                                          None if weights is None else weights[r0:r1], N, grad_scale)
        zb[...] = grad
        del grad  # before the next block: its exponentials must not coexist with these
        loss = part if loss is None else loss + part
    return loss, z


def _cross_entropy_block(z: Any, targets: Any, weights: Any, n_total: int, grad_scale: Any = None
                         ) -> tuple[Any, Any]:
    # z: (n, V) rows of the N = n_total that the loss averages over when weights is None -> (loss part, dlogits)
    # grad_scale: a 0-d array multiplying dlogits (not the loss), or None
    xp = array_namespace(z)
    n, V = z.shape
    z -= xp.max(z, axis=-1, keepdims=True)
    z_target = xp.take(xp.reshape(z, (-1,)), _row_offsets(xp, n, V, z) + targets)  # (n,) gather
    e = xp.exp(z)
    sum_e = e @ constant(xp, "ones", (V, 1), 1.0, z)  # (n, 1); a matmul beats a last-axis sum
    nll = xp.log(xp.reshape(sum_e, (-1,))) - z_target  # (n,) -log softmax at the target
    if weights is None:
        w_col, neg_w = (1.0 / n_total) / sum_e, constant(xp, f"-1/{n_total}", (n,), -1.0 / n_total, z)
        loss = nll @ constant(xp, f"1/{n_total}", (n,), 1.0 / n_total, z)
    else:
        w_col, neg_w = weights[:, None] / sum_e, -weights
        loss = nll @ weights
    if grad_scale is not None:
        w_col, neg_w = w_col * grad_scale, neg_w * grad_scale
    e *= w_col  # softmax * weight ...
    add_at_columns(e, targets, neg_w)  # ... minus the one-hot target * weight
    return loss, e


def cross_entropy(logits: Any, targets: Any, mask: Any = None) -> tuple[Any, Any]:
    """Mean cross-entropy over the positions where `mask` is True (all positions when None), and d loss/d logits.

    logits: (B, T, V) float; targets: (B, T) int; mask: (B, T) bool or None.
    Returns (loss as a 0-d device array, dlogits (B, T, V)); `logits` is left unchanged. Masked positions
    contribute nothing to the loss or the gradient, whatever their target; an all-False mask gives 0 and 0.
    """
    xp = array_namespace(logits)
    V = logits.shape[-1]
    z = xp.reshape(logits, (-1, V))
    z = xp.asarray(z, copy=True)
    weights = None
    if mask is not None:
        w = xp.astype(xp.reshape(mask, (-1,)), z.dtype)
        weights = w / xp.clip(xp.sum(w), min=1.0)
    loss, dlogits = softmax_cross_entropy(z, xp.reshape(targets, (-1,)), weights)
    return loss, xp.reshape(dlogits, logits.shape)
