"""Token + learned positional embedding."""

from __future__ import annotations

from typing import Any

from ..namespace import array_namespace

from backends.ops import index_add

from .base import Layer
from .reductions import sum_rows


class Embedding(Layer):
    """``out[b, t] = token[tokens[b, t]] + position[start + t]``; tables (V, C) and (T_max, C)."""

    def __init__(self, backend: Any, rng: Any, vocab_size: int, max_seq_len: int, d_model: int,
                 std: float = 0.02) -> None:
        super().__init__()
        self.d_model = d_model
        self.add_param("token", backend.normal(rng, (vocab_size, d_model), std))
        self.add_param("position", backend.normal(rng, (max_seq_len, d_model), std))

    def forward(self, tokens: Any, start: int = 0) -> tuple[Any, Any]:
        # tokens: (B, T) int -> x: (B*T, C) rows in (b, t) order, cache: (flat ids (B*T,), T)
        # `start` offsets the positions (used with a KV cache)
        xp = array_namespace(tokens)
        B, T = tokens.shape
        flat_ids = xp.reshape(tokens, (-1,))
        tok = xp.reshape(xp.take(self.params["token"], flat_ids, axis=0), (B, T, self.d_model))
        tok += self.params["position"][start:start + T, :]
        return xp.reshape(tok, (B * T, self.d_model)), (flat_ids, T)

    def backward(self, dout: Any, cache: Any) -> None:
        # dout: (B*T, C); tokens are integers, so there is no input gradient to return
        xp = array_namespace(dout)
        flat_ids, T = cache
        # A true scatter-add: a token id repeated in the batch accumulates every one of its gradients.
        index_add(self.grads["token"], flat_ids, dout)
        # The position gradient sums over the batch: (B, T*C) summed down its rows, as one vector-matrix product.
        self.grads["position"][:T, :] += xp.reshape(sum_rows(xp.reshape(dout, (-1, T * self.d_model))),
                                                    (T, self.d_model))
        return None
