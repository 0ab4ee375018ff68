"""Softmax cross-entropy fused with its gradient."""

from __future__ import annotations

from typing import Any

import array_api_extra as xpx
from array_api_compat import array_namespace


def cross_entropy(logits: Any, targets: Any, mask: Any = None) -> tuple[Any, Any]:
    """Mean cross-entropy over the positions where `mask` is True (all positions when None), and d loss/d logits.

    logits: (B, T, V) float; targets: (B, T) int; mask: (B, T) bool or None.
    Returns (loss as a 0-d device array, dlogits (B, T, V)). Log-sum-exp with the row max subtracted, so large
    logits cannot overflow. Masked positions contribute nothing to the loss or the gradient, whatever their target.
    """
    xp = array_namespace(logits)
    V = logits.shape[-1]
    z = logits - xp.max(logits, axis=-1, keepdims=True)
    e = xp.exp(z)
    sum_e = xp.sum(e, axis=-1, keepdims=True)  # (B, T, 1)
    onehot = xpx.one_hot(targets, V, dtype=logits.dtype, xp=xp)  # (B, T, V)
    logp_target = xp.sum(z * onehot, axis=-1) - xp.log(sum_e[..., 0])  # (B, T)
    if mask is None:
        weight = 1.0 / (targets.shape[0] * targets.shape[1])
        loss = -xp.sum(logp_target) * weight
        dlogits = (e / sum_e - onehot) * weight
    else:
        w = xp.astype(mask, logits.dtype)
        w = w / xp.clip(xp.sum(w), min=1.0)  # (B, T); an all-False mask gives loss 0, gradient 0
        loss = -xp.sum(logp_target * w)
        dlogits = (e / sum_e - onehot) * w[..., None]
    return loss, dlogits
