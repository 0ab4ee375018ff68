"""Fully connected layer ``y = x @ W + b``."""

from __future__ import annotations

from typing import Any

from ..namespace import array_namespace

from .base import Layer
from .reductions import sum_rows


class Linear(Layer):
    """Affine map over the last axis; weight stored (d_in, d_out)."""

    def __init__(self, backend: Any, rng: Any, d_in: int, d_out: int, std: float = 0.02, bias: bool = True) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.add_param("weight", backend.normal(rng, (d_in, d_out), std))
        if bias:
            self.add_param("bias", backend.asarray([0.0] * d_out))
        self.x = None

    def forward(self, x: Any) -> Any:
        # x: (..., d_in) -> (..., d_out)
        xp = array_namespace(x)
        self.x = x
        # One 2-D GEMM: NumPy runs a 3-D @ 2-D matmul as a loop of small per-batch GEMMs.
        y = xp.reshape(x, (-1, self.d_in)) @ self.params["weight"]
        if "bias" in self.params:
            y = y + self.params["bias"]
        return xp.reshape(y, (*x.shape[:-1], self.d_out))

    def backward(self, dout: Any) -> Any:
        # dout: (..., d_out) -> dx: (..., d_in)
        xp = array_namespace(dout)
        x_shape = self.x.shape
        x2 = xp.reshape(self.x, (-1, self.d_in))
        d2 = xp.reshape(dout, (-1, self.d_out))
        self.grads["weight"] += xp.matrix_transpose(x2) @ d2
        if "bias" in self.params:
            self.grads["bias"] += sum_rows(d2)
        self.x = None
        return xp.reshape(d2 @ xp.matrix_transpose(self.params["weight"]), x_shape)
