"""Layer normalization over the channel axis."""

from __future__ import annotations

from typing import Any, NamedTuple

from backends.fused import fast_path

from llm.nn.layers.base import Layer
from llm.nn.layers.reductions import mean_last, sum_rows


class LayerNormCache(NamedTuple):
    """What :meth:`LayerNorm.forward` keeps: the normalized input xhat (N, C) and 1/std per row rstd (N, 1)."""

    xhat: Any
    rstd: Any


class LayerNorm(Layer):
    """``(x - mean) / sqrt(var + eps) * gamma + beta`` over the last axis (biased variance)."""

    def __init__(self, backend: Any, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.add_param("gamma", backend.asarray([1.0] * d_model))
        self.add_param("beta", backend.asarray([0.0] * d_model))

    def forward(self, x: Any) -> tuple[Any, LayerNormCache]:
        # x: (N, C) -> y: (N, C), cache: (xhat (N, C), rstd (N, 1))
        fused = fast_path("layernorm_forward", x)
        if fused is not None:  # the lines below as one kernel (backends.fused)
            y, xhat, rstd = fused(x, self.params["gamma"], self.params["beta"], self.eps)
            return y, LayerNormCache(xhat, rstd)
        xhat = x - mean_last(x)
        rstd = (mean_last(xhat * xhat) + self.eps) ** -0.5
        xhat *= rstd  # x - mean, normalized in place
        y = xhat * self.params["gamma"]
        y += self.params["beta"]
        return y, LayerNormCache(xhat, rstd)

    def backward(self, dout: Any, cache: LayerNormCache) -> Any:
        # dout: (N, C) -> dx: (N, C)
        xhat, rstd = cache.xhat, cache.rstd
        self.grads["gamma"] += sum_rows(dout * xhat)
        self.grads["beta"] += sum_rows(dout)
        fused = fast_path("layernorm_backward", dout)
        if fused is not None:  # the lines below as one kernel (backends.fused)
            return fused(dout, xhat, rstd, self.params["gamma"])
        dx = dout * self.params["gamma"]  # dxhat, turned into dx in place
        # d/dx of the normalization: remove the mean of dxhat and its projection on xhat.
        proj = mean_last(dx * xhat)
        dx -= mean_last(dx)
        dx -= xhat * proj
        dx *= rstd
        return dx
