"""Softmax cross-entropy fused with its gradient."""

from __future__ import annotations

from typing import Any

from .namespace import array_namespace, device

from backends.ops import add_at_columns


def cross_entropy(logits: Any, targets: Any, mask: Any = None) -> tuple[Any, Any]:
    """Mean cross-entropy over the positions where `mask` is True (all positions when None), and d loss/d logits.

    logits: (B, T, V) float; targets: (B, T) int; mask: (B, T) bool or None.
    Returns (loss as a 0-d device array, dlogits (B, T, V)). Log-sum-exp with the row max subtracted, so large
    logits cannot overflow. Masked positions contribute nothing to the loss or the gradient, whatever their target.
    """
    xp = array_namespace(logits)
    V = logits.shape[-1]
    z = xp.reshape(logits, (-1, V))  # (N, V)
    N = z.shape[0]
    z = z - xp.max(z, axis=-1, keepdims=True)
    e = xp.exp(z)
    sum_e = e @ xp.ones((V, 1), dtype=z.dtype, device=device(z))  # (N, 1); a matmul beats a last-axis sum
    cols = xp.reshape(targets, (-1,))
    z_target = xp.take(xp.reshape(z, (-1,)), xp.arange(N, device=device(z)) * V + cols)  # (N,) gather
    nll = xp.log(sum_e[:, 0]) - z_target  # (N,) -log softmax at the target
    if mask is None:
        w = xp.full((N,), 1.0 / N, dtype=z.dtype, device=device(z))
    else:
        w = xp.astype(xp.reshape(mask, (-1,)), z.dtype)
        w = w / xp.clip(xp.sum(w), min=1.0)  # an all-False mask gives loss 0, gradient 0
    loss = xp.sum(nll * w)
    dlogits = e * (w[:, None] / sum_e)  # softmax * weight
    add_at_columns(dlogits, cols, -w)  # ... minus the one-hot target * weight
    return loss, xp.reshape(dlogits, logits.shape)
