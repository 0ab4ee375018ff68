"""Causal multi-head self-attention with a fused QKV projection."""

from __future__ import annotations

import math
from typing import Any

from ..namespace import array_namespace, device

from .base import Layer
from .linear import Linear

# Added to the scores of forbidden keys. Finite, so a row with every key masked (a padding query) gives a uniform
# softmax instead of NaN; exp() of it underflows to exactly 0 in float32 and float64.
MASK_VALUE = -1e9


class CausalSelfAttention(Layer):
    """Multi-head attention where position t attends to positions <= t (and, optionally, only to real tokens).

    ``head_dim = d_model // n_heads``; scores are scaled by ``1/sqrt(head_dim)`` in forward and, unlike the seed,
    in backward too. Backward reuses the cached q, k, v and probabilities; it never recomputes the forward pass.
    """

    def __init__(self, backend: Any, rng: Any, d_model: int, n_heads: int, out_std: float = 0.02) -> None:
        super().__init__()
        if d_model % n_heads:
            from ..errors import ConfigError

            raise ConfigError(f"d_model {d_model} is not divisible by n_heads {n_heads}: pick n_heads dividing it")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        # No QKV bias: the key bias has an identically zero gradient (softmax ignores a per-row shift), so Adam
        # would only turn its rounding noise into lr-sized steps; the value bias duplicates the output bias.
        self.qkv = Linear(backend, rng, d_model, 3 * d_model, bias=False)
        self.proj = Linear(backend, rng, d_model, d_model, std=out_std)
        self.children = {"qkv": self.qkv, "proj": self.proj}
        self.cache = None
        self._causal_cache: dict[tuple[int, int], Any] = {}

    def _mask_bias(self, xp: Any, T_q: int, T_k: int, key_mask: Any, like: Any) -> Any:
        # -> (T_q, T_k) or (B, 1, T_q, T_k): 0 where allowed, MASK_VALUE where not. Queries are the last T_q
        # positions of the T_k keys (T_q < T_k only when decoding with a KV cache).
        bias = self._causal_cache.get((T_q, T_k))
        if bias is None:  # built once per shape: training sees only a few distinct lengths
            rows = xp.arange(T_k - T_q, T_k, device=device(like))[:, None]
            cols = xp.arange(T_k, device=device(like))[None, :]
            bias = self._causal_cache[(T_q, T_k)] = xp.astype(cols > rows, like.dtype) * MASK_VALUE
        if key_mask is not None:
            pad = (1.0 - xp.astype(key_mask, like.dtype)) * MASK_VALUE  # (B, T_k)
            bias = bias + pad[:, None, None, :]
        return bias

    def _split_heads(self, xp: Any, qkv: Any) -> tuple[Any, Any, Any]:
        # qkv: (B, T, 3C) -> q, k, v: (B, H, T, D)
        B, T, _ = qkv.shape
        qkv = xp.permute_dims(xp.reshape(qkv, (B, T, 3, self.n_heads, self.head_dim)), (2, 0, 3, 1, 4))
        return qkv[0, ...], qkv[1, ...], qkv[2, ...]

    @staticmethod
    def _softmax(xp: Any, s: Any) -> Any:
        # s: (..., T_k) -> probabilities over the last axis, max-subtracted for stability
        e = xp.exp(s - xp.max(s, axis=-1, keepdims=True))
        # The row sum as a matmul with a ones column: several times faster than a short last-axis reduction.
        ones = xp.ones((s.shape[-1], 1), dtype=s.dtype, device=device(s))
        return e / (e @ ones)

    def forward(self, x: Any, key_mask: Any = None) -> Any:
        # x: (B, T, C); key_mask: (B, T) bool, True for real tokens, or None -> (B, T, C)
        xp = array_namespace(x)
        B, T, C = x.shape
        q, k, v = self._split_heads(xp, self.qkv.forward(x))  # (B, H, T, D) each
        qs = q * self.scale
        scores = qs @ xp.matrix_transpose(k) + self._mask_bias(xp, T, T, key_mask, x)  # (B, H, T, T)
        p = self._softmax(xp, scores)
        y = p @ v  # (B, H, T, D)
        self.cache = (qs, k, v, p, y)
        return self.proj.forward(xp.reshape(xp.permute_dims(y, (0, 2, 1, 3)), (B, T, C)))

    def backward(self, dout: Any) -> Any:
        # dout: (B, T, C) -> dx: (B, T, C)
        xp = array_namespace(dout)
        B, T, C = dout.shape
        qs, k, v, p, y = self.cache
        dy = xp.permute_dims(xp.reshape(self.proj.backward(dout), (B, T, self.n_heads, self.head_dim)),
                             (0, 2, 1, 3))  # (B, H, T, D)
        dv = xp.matrix_transpose(p) @ dy
        dp = dy @ xp.matrix_transpose(v)  # (B, H, T, T)
        # Softmax backward: ds = p * (dp - sum_j p*dp). That row sum equals sum_d dy*y, which is T/D times cheaper.
        ds = p * (dp - xp.sum(dy * y, axis=-1, keepdims=True))
        dq = (ds @ k) * self.scale
        dk = xp.matrix_transpose(ds) @ qs
        dqkv = xp.reshape(xp.permute_dims(xp.stack((dq, dk, dv), axis=0), (1, 3, 0, 2, 4)), (B, T, 3 * C))
        self.cache = None
        return self.qkv.backward(dqkv)

    def forward_cached(self, x: Any, kv: dict) -> Any:
        # x: (B, T_new, C), kv: {"k", "v": (B, H, T_past, D)} or empty -> (B, T_new, C). Inference only: no cache
        # for backward; the new keys and values are appended to `kv`, so each new token costs one position.
        xp = array_namespace(x)
        B, T, C = x.shape
        q, k, v = self._split_heads(xp, x @ self.qkv.params["weight"])
        if kv:
            k = xp.concat((kv["k"], k), axis=2)
            v = xp.concat((kv["v"], v), axis=2)
        kv["k"], kv["v"] = k, v
        T_k = k.shape[2]
        scores = (q * self.scale) @ xp.matrix_transpose(k) + self._mask_bias(xp, T, T_k, None, x)
        y = self._softmax(xp, scores) @ v
        y = xp.reshape(xp.permute_dims(y, (0, 2, 1, 3)), (B, T, C))
        return y @ self.proj.params["weight"] + self.proj.params["bias"]
