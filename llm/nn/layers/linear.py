"""Fully connected layer ``y = x @ W + b``."""

from __future__ import annotations

from typing import Any

from llm.nn.namespace import array_namespace

from llm.nn.layers.base import Layer
from llm.nn.layers.reductions import sum_rows


class Linear(Layer):
    """Affine map over the last axis; weight stored (d_in, d_out). The cache is the input itself."""

    def __init__(self, backend: Any, rng: Any, d_in: int, d_out: int, std: float = 0.02, bias: bool = True) -> None:
        super().__init__()
        self.d_in, self.d_out, self.has_bias = d_in, d_out, bias
        self.add_param("weight", backend.normal(rng, (d_in, d_out), std))
        if bias:
            self.add_param("bias", backend.asarray([0.0] * d_out))

    def forward(self, x: Any) -> tuple[Any, Any]:
        # x: (N, d_in) -> y: (N, d_out), cache: x. Rows are flattened positions: one 2-D GEMM (NumPy runs a
        # 3-D @ 2-D matmul as a loop of small per-batch GEMMs).
        y = x @ self.params["weight"]
        if self.has_bias:
            y += self.params["bias"]
        return y, x

    def backward(self, dout: Any, x: Any) -> Any:
        # dout: (N, d_out), x: the cached input (N, d_in) -> dx: (N, d_in)
        xp = array_namespace(dout)
        self.grads["weight"] += xp.matrix_transpose(x) @ dout
        if self.has_bias:
            self.grads["bias"] += sum_rows(dout)
        return dout @ self.transposed("weight")
