"""Layer normalization over the channel axis.

Under mixed precision (float16 / bfloat16 activations) the statistics are float32: the input is widened, mean,
variance, normalization and the backward reductions run in float32, and only the output (and the cached xhat) are
narrowed back. A float16 sum of squares over a row of a few hundred activations of size ~10 already overflows
(65504), and the variance's cancellation loses most of float16's 11 bits.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from backends.fused import fast_path

from llm.nn.layers.base import Layer
from llm.nn.layers.reductions import low_precision, mean_last, sum_rows
from llm.nn.namespace import array_namespace


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
        xp = array_namespace(x)
        if low_precision(xp, x):  # float32 statistics; y and xhat narrowed back to x's dtype
            y, (xhat, rstd) = self._forward(x, *self._float32_params(xp))
            return xp.astype(y, x.dtype), LayerNormCache(xp.astype(xhat, x.dtype), rstd)
        return self._forward(x, self.params["gamma"], self.params["beta"])

    def _float32_params(self, xp: Any) -> tuple[Any, Any]:
        # -> gamma, beta: (C,) each, widened to float32 from their low-precision shadows
        return xp.astype(self.params["gamma"], xp.float32), xp.astype(self.params["beta"], xp.float32)

    def _forward(self, x: Any, gamma: Any, beta: Any) -> tuple[Any, LayerNormCache]:
        # x: (N, C) float32 or float64, gamma, beta: (C,) -> y: (N, C), cache: (xhat (N, C), rstd (N, 1))
        fused = fast_path("layernorm_forward", x)
        if fused is not None:  # the lines below as one kernel (backends.fused)
            y, xhat, rstd = fused(x, gamma, beta, self.eps)
            return y, LayerNormCache(xhat, rstd)
        xhat = x - mean_last(x)
        rstd = (mean_last(xhat * xhat) + self.eps) ** -0.5
        xhat *= rstd  # x - mean, normalized in place
        y = xhat * gamma
        y += beta
        return y, LayerNormCache(xhat, rstd)

    def backward(self, dout: Any, cache: LayerNormCache) -> Any:
        # dout: (N, C) -> dx: (N, C)
        xp = array_namespace(dout)
        if low_precision(xp, dout):  # in float32 (the gradients' dtype), dx narrowed back to dout's dtype
            f32 = xp.float32
            wide = LayerNormCache(xp.astype(cache.xhat, f32), cache.rstd)
            return xp.astype(self._backward(xp.astype(dout, f32), wide, self._float32_params(xp)[0]), dout.dtype)
        return self._backward(dout, cache, self.params["gamma"])

    def _backward(self, dout: Any, cache: LayerNormCache, gamma: Any) -> Any:
        # dout: (N, C) float32 or float64, gamma: (C,) -> dx: (N, C)
        xhat, rstd = cache.xhat, cache.rstd
        self.grads["gamma"] += sum_rows(dout * xhat)
        self.grads["beta"] += sum_rows(dout)
        fused = fast_path("layernorm_backward", dout)
        if fused is not None:  # the lines below as one kernel (backends.fused)
            return fused(dout, xhat, rstd, gamma)
        dx = dout * gamma  # dxhat, turned into dx in place
        # d/dx of the normalization: remove the mean of dxhat and its projection on xhat.
        proj = mean_last(dx * xhat)
        dx -= mean_last(dx)
        dx -= xhat * proj
        dx *= rstd
        return dx
