"""Softmax cross-entropy fused with its gradient."""

from __future__ import annotations

from typing import Any

from .layers.reductions import array_key, constant
from .namespace import array_namespace, device

from backends.ops import add_at_columns

_OFFSETS: dict[tuple, Any] = {}  # (namespace, N, V, device) -> arange(N) * V, the flat index of each row's start


def _row_offsets(xp: Any, N: int, V: int, like: Any) -> Any:
    key = (N, V, *array_key(like))
    off = _OFFSETS.get(key)
    if off is None:
        off = _OFFSETS[key] = xp.arange(N, device=device(like)) * V
    return off


def softmax_cross_entropy(z: Any, targets: Any, weights: Any = None) -> tuple[Any, Any]:
    """Weighted cross-entropy of rows of logits and its gradient; `z` is overwritten (it becomes dlogits).

    z: (N, V) float; targets: (N,) int; weights: (N,) float summing to 1 (or to 0), or None for the mean over
    the N rows. Returns (loss as a 0-d device array, dlogits (N, V)). Log-sum-exp with the row max subtracted,
    so large logits cannot overflow. Nothing here reads a value back to the host.
    """
    xp = array_namespace(z)
    N, V = z.shape
    z -= xp.max(z, axis=-1, keepdims=True)
    z_target = xp.take(xp.reshape(z, (-1,)), _row_offsets(xp, N, V, z) + targets)  # (N,) gather
    e = xp.exp(z)
    sum_e = e @ constant(xp, "ones", (V, 1), 1.0, z)  # (N, 1); a matmul beats a last-axis sum
    nll = xp.log(xp.reshape(sum_e, (-1,))) - z_target  # (N,) -log softmax at the target
    if weights is None:
        w_col, neg_w = (1.0 / N) / sum_e, constant(xp, "-1/N", (N,), -1.0 / N, z)
        loss = nll @ constant(xp, "1/N", (N,), 1.0 / N, z)
    else:
        w_col, neg_w = weights[:, None] / sum_e, -weights
        loss = nll @ weights
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
