"""Output projection from the model width to vocabulary logits."""

from __future__ import annotations

from typing import Any

from ..namespace import array_namespace

from .base import Layer
from .reductions import sum_rows


class OutputProjection(Layer):
    """``logits = x @ W.T + b`` with W (V, C); W is the token embedding table itself when tied."""

    def __init__(self, backend: Any, rng: Any, d_model: int, vocab_size: int, tied_to: Layer | None = None,
                 std: float = 0.02) -> None:
        super().__init__()
        self.d_model, self.vocab_size = d_model, vocab_size
        self.tied_to = tied_to  # an Embedding whose "token" table doubles as W
        if tied_to is None:
            self.add_param("weight", backend.normal(rng, (vocab_size, d_model), std))
        self.add_param("bias", backend.asarray([0.0] * vocab_size))
        self.x = None

    def _weight(self) -> tuple[Any, Any]:
        owner = self.tied_to if self.tied_to is not None else self
        key = "token" if self.tied_to is not None else "weight"
        return owner.params[key], owner.grads[key]

    def forward(self, x: Any) -> Any:
        # x: (B, T, C) -> logits: (B, T, V)
        xp = array_namespace(x)
        self.x = x
        x2 = xp.reshape(x, (-1, self.d_model))  # one 2-D GEMM, not a loop over the batch
        logits = x2 @ xp.matrix_transpose(self._weight()[0]) + self.params["bias"]
        return xp.reshape(logits, (*x.shape[:-1], self.vocab_size))

    def backward(self, dout: Any) -> Any:
        # dout: (B, T, V) -> dx: (B, T, C)
        xp = array_namespace(dout)
        weight, grad = self._weight()
        d2 = xp.reshape(dout, (-1, self.vocab_size))
        grad += xp.matrix_transpose(d2) @ xp.reshape(self.x, (-1, self.d_model))
        self.grads["bias"] += sum_rows(d2)
        self.x = None
        return xp.reshape(d2 @ weight, (*dout.shape[:-1], self.d_model))
