"""Token + learned positional embedding."""

from __future__ import annotations

from typing import Any

from ..namespace import array_namespace

from backends.ops import index_add

from .base import Layer


class Embedding(Layer):
    """``out[b, t] = token[tokens[b, t]] + position[t]``; tables (V, C) and (T_max, C)."""

    def __init__(self, backend: Any, rng: Any, vocab_size: int, max_seq_len: int, d_model: int,
                 std: float = 0.02) -> None:
        super().__init__()
        self.d_model = d_model
        self.add_param("token", backend.normal(rng, (vocab_size, d_model), std))
        self.add_param("position", backend.normal(rng, (max_seq_len, d_model), std))
        self.flat_ids = None
        self.seq_len = 0

    def forward(self, tokens: Any, start: int = 0) -> Any:
        # tokens: (B, T) int -> (B, T, C); `start` offsets the positions (used with a KV cache)
        xp = array_namespace(tokens)
        B, T = tokens.shape
        self.flat_ids = xp.reshape(tokens, (-1,))
        self.seq_len = T
        tok = xp.reshape(xp.take(self.params["token"], self.flat_ids, axis=0), (B, T, self.d_model))
        return tok + self.params["position"][start:start + T, :]

    def backward(self, dout: Any) -> None:
        # dout: (B, T, C); tokens are integers, so there is no input gradient to return
        xp = array_namespace(dout)
        T = self.seq_len
        # A true scatter-add: a token id repeated in the batch accumulates every one of its gradients.
        index_add(self.grads["token"], self.flat_ids, xp.reshape(dout, (-1, self.d_model)))
        self.grads["position"][:T, :] += xp.sum(dout, axis=0)
        self.flat_ids = None
        return None
