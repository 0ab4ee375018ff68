"""Token embedding plus a positional encoding: a learned table (the default) or a fixed sinusoidal one."""

from __future__ import annotations

from typing import Any, NamedTuple

import math

from llm.nn.namespace import array_namespace, device

from backends.ops import index_add

from llm.nn.layers.base import Layer
from llm.nn.layers.reductions import array_key, sum_rows


def sinusoid_table(xp: Any, n: int, dim: int, like: Any, scale: float = 1.0, base: float = 10000.0) -> Any:
    """(n, dim) fixed positional table on `like`'s device and dtype: column 2i is scale * sin(t * w_i), column
    2i + 1 is scale * cos(t * w_i), w_i = base**(-2i / dim) ("Attention Is All You Need"). Computed in float64,
    then cast."""
    f64 = xp.float64
    t = xp.arange(n, dtype=f64, device=device(like))[:, None]  # (n, 1)
    i = xp.arange((dim + 1) // 2, dtype=f64, device=device(like))[None, :]  # (1, ceil(dim/2))
    angle = t * xp.exp(i * (-2.0 * math.log(base) / dim))
    table = xp.reshape(xp.stack((xp.sin(angle), xp.cos(angle)), axis=-1), (n, -1))[:, :dim]  # sin, cos interleaved
    return xp.astype(table * scale, like.dtype)


class EmbeddingCache(NamedTuple):
    """What :meth:`Embedding.forward` keeps: the token ids flattened (B*T,) and the sequence length T."""

    flat_ids: Any
    T: int


class Embedding(Layer):
    """``out[b, t] = token[tokens[b, t]] + position[start + t]``; tables (V, C) and (T_max, C).

    ``pos_encoding="learned"``: ``position`` is a parameter. ``"sinusoidal"``: it is the fixed table of
    :func:`sinusoid_table` with amplitude `std`, the scale a learned table starts at (no parameter, built once per
    device and dtype). At amplitude 1 it drowns token embeddings drawn at std 0.02: the default run answered 80 of
    116 prompts, against 114 at 0.02. ``"rope"``: no position is added here (attention rotates q and k instead).
    """

    def __init__(self, backend: Any, rng: Any, vocab_size: int, max_seq_len: int, d_model: int,
                 std: float = 0.02, pos_encoding: str = "learned") -> None:
        super().__init__()
        self.d_model, self.max_seq_len, self.pos_encoding, self.std = d_model, max_seq_len, pos_encoding, std
        self.add_param("token", backend.normal(rng, (vocab_size, d_model), std))
        if pos_encoding == "learned":  # the only draw of a position table: the other encodings draw nothing
            self.add_param("position", backend.normal(rng, (max_seq_len, d_model), std))
        self._tables: dict[tuple, Any] = {}  # the fixed sinusoidal table per (array type, dtype, device)

    def _position(self, xp: Any, like: Any) -> Any:
        # -> the (T_max, C) position table, or None when this encoding adds none
        if self.pos_encoding == "learned":
            return self.params["position"]
        if self.pos_encoding != "sinusoidal":
            return None
        key = array_key(like)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = sinusoid_table(xp, self.max_seq_len, self.d_model, like, self.std)
        return table

    def forward(self, tokens: Any, start: int = 0) -> tuple[Any, EmbeddingCache]:
        # tokens: (B, T) int -> x: (B*T, C) rows in (b, t) order, cache: (flat ids (B*T,), T)
        # `start` offsets the positions (used with a KV cache)
        xp = array_namespace(tokens)
        B, T = tokens.shape
        flat_ids = xp.reshape(tokens, (-1,))
        tok = xp.reshape(xp.take(self.params["token"], flat_ids, axis=0), (B, T, self.d_model))
        position = self._position(xp, tok)
        if position is not None:
            tok += position[start:start + T, :]
        return xp.reshape(tok, (B * T, self.d_model)), EmbeddingCache(flat_ids, T)

    def backward(self, dout: Any, cache: EmbeddingCache) -> None:
        # dout: (B*T, C); tokens are integers, so there is no input gradient to return
        xp = array_namespace(dout)
        flat_ids, T = cache.flat_ids, cache.T
        # A true scatter-add: a token id repeated in the batch accumulates every one of its gradients.
        index_add(self.grads["token"], flat_ids, dout)
        if "position" not in self.grads:  # a fixed table (or none): nothing to learn
            return None
        # The position gradient sums over the batch: (B, T*C) summed down its rows, as one vector-matrix product.
        self.grads["position"][:T, :] += xp.reshape(sum_rows(xp.reshape(dout, (-1, T * self.d_model))),
                                                    (T, self.d_model))
        return None
