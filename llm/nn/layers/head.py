"""Output projection from the model width to vocabulary logits."""

from __future__ import annotations

from typing import Any

from llm.nn.namespace import array_namespace

from llm.nn.layers.base import Layer
from llm.nn.layers.reductions import sum_rows


class OutputProjection(Layer):
    """``logits = x @ W.T + b`` with W (V, C); W is the token embedding table itself when tied. ``bias=False``
    drops b (GPT-2's tied lm_head has none)."""

    def __init__(self, backend: Any, rng: Any, d_model: int, vocab_size: int, tied_to: Layer | None = None,
                 std: float = 0.02, bias: bool = True) -> None:
        super().__init__()
        self.d_model, self.vocab_size = d_model, vocab_size
        self.tied_to = tied_to  # an Embedding whose "token" table doubles as W
        if tied_to is None:
            self.add_param("weight", backend.normal(rng, (vocab_size, d_model), std))
        self.has_bias = bias
        if bias:
            self.add_param("bias", backend.asarray([0.0] * vocab_size))

    def _owner(self) -> tuple[Layer, str]:
        return (self.tied_to, "token") if self.tied_to is not None else (self, "weight")

    def forward(self, x: Any) -> tuple[Any, Any]:
        # x: (N, C) -> logits: (N, V), cache: x
        owner, key = self._owner()
        logits = x @ owner.transposed(key)
        if self.has_bias:
            logits += self.params["bias"]
        return logits, x

    def backward(self, dout: Any, x: Any) -> Any:
        # dout: (N, V), x: the cached input (N, C) -> dx: (N, C)
        xp = array_namespace(dout)
        owner, key = self._owner()
        owner.grads[key] += xp.matrix_transpose(dout) @ x
        if self.has_bias:
            self.grads["bias"] += sum_rows(dout)
        return dout @ owner.params[key]
