"""Layer normalization over the channel axis."""

from __future__ import annotations

from typing import Any

from ..namespace import array_namespace

from .base import Layer
from .reductions import mean_last, sum_rows


class LayerNorm(Layer):
    """``(x - mean) / sqrt(var + eps) * gamma + beta`` over the last axis (biased variance)."""

    def __init__(self, backend: Any, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.add_param("gamma", backend.asarray([1.0] * d_model))
        self.add_param("beta", backend.asarray([0.0] * d_model))
        self.xhat = self.rstd = None

    def forward(self, x: Any) -> Any:
        # x: (B, T, C) -> (B, T, C)
        xp = array_namespace(x)
        xc = x - mean_last(x)
        var = mean_last(xc * xc)
        self.rstd = 1.0 / xp.sqrt(var + self.eps)  # (B, T, 1)
        self.xhat = xc * self.rstd
        return self.xhat * self.params["gamma"] + self.params["beta"]

    def backward(self, dout: Any) -> Any:
        # dout: (B, T, C) -> dx: (B, T, C)
        xhat = self.xhat
        self.grads["gamma"] += sum_rows(dout * xhat)
        self.grads["beta"] += sum_rows(dout)
        dxhat = dout * self.params["gamma"]
        # d/dx of the normalization: remove the mean of dxhat and its projection on xhat.
        dx = self.rstd * (dxhat - mean_last(dxhat) - xhat * mean_last(dxhat * xhat))
        self.xhat = self.rstd = None
        return dx
