"""Causal multi-head self-attention with a fused QKV projection, optionally with rotary position embeddings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from llm.nn.namespace import array_namespace, device

from backends.fused import fast_path
from backends.ops import exp_

from llm import checks
from llm.nn.layers.base import Layer
from llm.nn.layers.blocked_attention import (BLOCK_K, BLOCK_Q, BLOCKED_FROM, MASK_VALUE, blocked_backward,
                                             blocked_forward)
from llm.nn.layers.linear import Linear
from llm.nn.layers.reductions import array_key, sum_last

ROPE_BASE = 10000.0
ATTENTION_MODES = ("auto", "explicit", "blocked")  # auto: explicit below `blocked_from` query positions, else blocked


def rope_tables(xp: Any, n: int, head_dim: int, like: Any, base: float = ROPE_BASE) -> tuple[Any, Any]:
    """RoPE's constants for positions 0 .. n-1: ``cos`` and ``sin_signed``, (n, head_dim) each, in `like`'s dtype.

    Channel i of a head is paired with channel i + head_dim/2 (the GPT-NeoX / LLaMA layout: two half-width slices
    instead of strided pairs), and the pair is rotated by the angle ``t * base**(-2i / head_dim)`` at position t.
    ``cos`` repeats cos(angle) over both halves; ``sin_signed`` is (-sin, +sin), so that
    ``rotate(x) = x * cos + swap_halves(x) * sin_signed``. Computed in float64, then cast.
    """
    f64, half = xp.float64, head_dim // 2
    t = xp.arange(n, dtype=f64, device=device(like))[:, None]
    i = xp.arange(half, dtype=f64, device=device(like))[None, :]
    angle = t * xp.exp(i * (-2.0 * math.log(base) / head_dim))  # (n, D/2)
    cos, sin = xp.cos(angle), xp.sin(angle)
    return (xp.astype(xp.concat((cos, cos), axis=1), like.dtype),
            xp.astype(xp.concat((-sin, sin), axis=1), like.dtype))


def _swap_halves(xp: Any, x: Any) -> Any:
    # x: (..., D) -> (..., D) with its two halves exchanged
    half = x.shape[-1] // 2
    return xp.concat((x[..., half:], x[..., :half]), axis=-1)


def rope_rotate(xp: Any, x: Any, cos: Any, sin_signed: Any) -> Any:
    """x: (..., T, D) -> each channel pair (i, i + D/2) rotated by its angle at its position; cos, sin: (T, D)."""
    y = x * cos
    y += _swap_halves(xp, x) * sin_signed
    return y


def rope_unrotate(xp: Any, dy: Any, cos: Any, sin_signed: Any) -> Any:
    """The backward of :func:`rope_rotate`: the inverse rotation (a rotation's transpose is its inverse)."""
    dx = dy * cos
    dx -= _swap_halves(xp, dy) * sin_signed
    return dx


class AttentionCache(NamedTuple):
    """What :meth:`CausalSelfAttention.forward` keeps for its backward pass (and for attention maps).

    x: the input (B*T, C); q: the queries (B, H, T, D), scaled by 1/sqrt(D) and rotated when rope; k: the keys
    (B, H, T, D), rotated when rope; v: the values (B, H, T, D); probs: the attention probabilities (B, H, T, T),
    or None on the blocked path; heads: each head's output (B, H, T, D); merged: the heads side by side (B*T, C),
    the output projection's input. The blocked path keeps instead lse: each query row's log-sum-exp (B, H, T), and
    key_mask: the (B, T) padding mask its backward must apply again (None without one).
    """

    x: Any
    q: Any
    k: Any
    v: Any
    probs: Any
    heads: Any
    merged: Any
    lse: Any = None
    key_mask: Any = None


@dataclass(eq=False)
class KVCache:
    """One attention layer's keys and values of the positions seen so far, (B, H, T_past, D) each (rotated keys
    when rope); None before the first :meth:`CausalSelfAttention.forward_cached`, which appends to them."""

    keys: Any = None
    values: Any = None

    @property
    def length(self) -> int:
        """The number of positions cached."""
        return 0 if self.keys is None else int(self.keys.shape[2])


def configure_attention(layer: Layer, mode: str = "auto", blocked_from: int | None = None,
                        block_q: int | None = None, block_k: int | None = None) -> int:
    """Choose how every :class:`CausalSelfAttention` in `layer`'s tree (a GPT, a block, one attention) attends.

    `mode`: "explicit" (the (T, T) probabilities, the readable reference), "blocked"
    (:mod:`llm.nn.layers.blocked_attention`, no (T, T) array) or "auto" (blocked from `blocked_from` query
    positions on). None keeps a setting as it is. Returns how many attention layers were set. MASK_VALUE, the bias
    of forbidden keys, is defined (and explained) in the blocked module: both paths add it the same way.
    """
    checks.one_of(mode, ATTENTION_MODES, "attention")
    settings = {"blocked_from": checks.positive_int(blocked_from, "blocked_from", allow_none=True),
                "block_q": checks.positive_int(block_q, "block_q", allow_none=True),
                "block_k": checks.positive_int(block_k, "block_k", allow_none=True)}
    count, todo = 0, [layer]
    while todo:
        node = todo.pop()
        todo.extend(node.children.values())
        if isinstance(node, CausalSelfAttention):
            node.attention, count = mode, count + 1
            for name, value in settings.items():
                if value is not None:
                    setattr(node, name, value)
    return count


def _mask_value(xp: Any, like: Any) -> float:
    # MASK_VALUE, or half the most negative finite value of a narrower dtype (float16: -1e9 would be -inf, and
    # 0 * -inf is NaN); still far enough below any score for exp() to give exactly 0
    return max(MASK_VALUE, -float(xp.finfo(like.dtype).max) / 2)


class CausalSelfAttention(Layer):
    """Multi-head attention where position t attends to positions <= t (and, optionally, only to real tokens).

    ``head_dim = d_model // n_heads``; scores are scaled by ``1/sqrt(head_dim)`` in forward and, unlike the seed,
    in backward too. On the explicit path backward reuses the cached q, k, v and probabilities (the blocked path
    recomputes them block by block).

    ``rope=True`` rotates each head's queries and keys by their positions (:func:`rope_rotate`) before the scores,
    so a score depends on how far apart two positions are; the cache then holds the rotated q and k, and backward
    un-rotates their gradients. ``max_seq_len`` sizes the rotation table (built once per device and dtype).

    ``attention`` picks the algorithm (:func:`configure_attention` sets it): "explicit" builds the (B, H, T, T)
    probabilities and keeps them; "blocked" runs :func:`~llm.nn.layers.blocked_attention.blocked_forward`, whose
    cache holds one log-sum-exp per query row instead; "auto" (the default) is explicit below ``blocked_from``
    query positions, where it is as fast and its probabilities come free, and blocked from there on.
    """

    attention = "auto"  # class defaults, set per layer by configure_attention
    blocked_from, block_q, block_k = BLOCKED_FROM, BLOCK_Q, BLOCK_K

    def __init__(self, backend: Any, rng: Any, d_model: int, n_heads: int, out_std: float = 0.02,
                 rope: bool = False, max_seq_len: int | None = None, qkv_bias: bool = False) -> None:
        super().__init__()  # d_model divisible by n_heads, an even head size for rope: GPTConfig's rules
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        # No QKV bias by default: the key bias has an identically zero gradient (softmax ignores a per-row shift), so
        # Adam would only turn its rounding noise into lr-sized steps; the value bias duplicates the output bias.
        # qkv_bias=True is GPT-2's layout (its c_attn has one), for its checkpoints.
        self.qkv = Linear(backend, rng, d_model, 3 * d_model, bias=qkv_bias)
        self.proj = Linear(backend, rng, d_model, d_model, std=out_std)
        self.children = {"qkv": self.qkv, "proj": self.proj}
        self._causal_cache: dict[tuple, Any] = {}  # a constant per shape, not an activation
        self.rope, self.max_seq_len = rope, max_seq_len
        self._rope_cache: dict[tuple, Any] = {}  # RoPE's cos / sin tables, constants like the causal masks

    def _rope(self, xp: Any, start: int, T: int, like: Any) -> tuple[Any, Any]:
        # -> cos, sin_signed: (T, D) for positions start .. start+T-1, slices of one table per device and dtype
        n = self.max_seq_len if self.max_seq_len is not None else start + T
        key = (n, *array_key(like))
        tables = self._rope_cache.get(key)
        if tables is None:
            tables = self._rope_cache[key] = rope_tables(xp, n, self.head_dim, like)
        cos, sin = tables
        return cos[start:start + T, :], sin[start:start + T, :]

    def _mask_bias(self, xp: Any, T_q: int, T_k: int, key_mask: Any, like: Any) -> Any:
        # -> (T_q, T_k) or (B, 1, T_q, T_k): 0 where allowed, MASK_VALUE where not. Queries are the last T_q
        # positions of the T_k keys (T_q < T_k only when decoding with a KV cache).
        key = (T_q, T_k, *array_key(like))
        bias = self._causal_cache.get(key)
        if bias is None:  # built once per shape: training sees only a few distinct lengths
            rows = xp.arange(T_k - T_q, T_k, device=device(like))[:, None]
            cols = xp.arange(T_k, device=device(like))[None, :]
            bias = self._causal_cache[key] = xp.astype(cols > rows, like.dtype) * _mask_value(xp, like)
        if key_mask is not None:
            pad = (1.0 - xp.astype(key_mask, like.dtype)) * _mask_value(xp, like)  # (B, T_k)
            bias = bias + pad[:, None, None, :]
        return bias

    def _split_heads(self, xp: Any, qkv: Any, T: int) -> tuple[Any, Any, Any]:
        # qkv: (B*T, 3C) -> q, k, v: (B, H, T, D) each, views of one permuted array
        qkv = xp.permute_dims(xp.reshape(qkv, (-1, T, 3, self.n_heads, self.head_dim)), (2, 0, 3, 1, 4))
        return qkv[0, ...], qkv[1, ...], qkv[2, ...]

    @staticmethod
    def _softmax(xp: Any, s: Any) -> Any:
        # s: (..., T_k) -> probabilities over the last axis, max-subtracted for stability; `s` is overwritten
        # and becomes the result: every pass over the (B, H, T, T) scores runs in place
        s -= xp.max(s, axis=-1, keepdims=True)
        e = exp_(s)
        e *= 1.0 / sum_last(e)  # the row sum as a matmul with a ones column: faster than a last-axis reduction
        return e

    def _attend(self, xp: Any, q: Any, k: Any, v: Any, bias: Any) -> tuple[Any, Any]:
        # q: (B, H, T_q, D) already scaled by 1/sqrt(D) (a pass over q, T/D times cheaper than one over the scores),
        # k, v: (B, H, T_k, D) -> p: (B, H, T_q, T_k), y: (B, H, T_q, D)
        scores = q @ xp.matrix_transpose(k)
        fused = fast_path("softmax_rows", scores) if bias.ndim == 2 else None
        if fused is not None:  # the steps below as one kernel (backends.fused)
            p = fused(scores, bias, 1.0)
        else:
            scores += bias
            p = self._softmax(xp, scores)
        return p, p @ v

    def _attention(self, xp: Any, q: Any, k: Any, v: Any, key_mask: Any, like: Any) -> tuple[Any, Any, Any]:
        # q: (B, H, T_q, D) scaled, k, v: (B, H, T_k, D) -> p: (B, H, T_q, T_k) or None, y: (B, H, T_q, D),
        # lse: (B, H, T_q) or None; the explicit or the blocked path as `attention` and T_q say
        T_q, T_k = q.shape[2], k.shape[2]
        mode = checks.one_of(self.attention, ATTENTION_MODES, "attention")
        if mode == "blocked" or (mode == "auto" and T_q >= self.blocked_from):
            y, lse = blocked_forward(q, k, v, key_mask, self.block_q, self.block_k)
            return None, y, lse
        p, y = self._attend(xp, q, k, v, self._mask_bias(xp, T_q, T_k, key_mask, like))
        return p, y, None

    def _merge_heads(self, xp: Any, y: Any) -> Any:
        # y: (B, H, T, D) -> (B*T, C)
        return xp.reshape(xp.permute_dims(y, (0, 2, 1, 3)), (-1, self.d_model))

    def forward(self, x: Any, T: int, key_mask: Any = None) -> tuple[Any, AttentionCache]:
        # x: (B*T, C) rows of B sequences of length T; key_mask: (B, T) bool, True for real tokens, or None
        # -> y: (B*T, C), cache: AttentionCache; q and k rotated when rope, q scaled by 1/sqrt(D) (the scores'
        # backward needs exactly those)
        xp = array_namespace(x)
        qkv, _ = self.qkv.forward(x)
        q, k, v = self._split_heads(xp, qkv, T)
        if self.rope:
            cos, sin = self._rope(xp, 0, T, x)
            q, k = rope_rotate(xp, q, cos, sin), rope_rotate(xp, k, cos, sin)
        q = q * self.scale
        p, y, lse = self._attention(xp, q, k, v, key_mask, x)
        merged = self._merge_heads(xp, y)
        out, _ = self.proj.forward(merged)
        return out, AttentionCache(x, q, k, v, p, y, merged, lse, None if lse is None else key_mask)

    def backward(self, dout: Any, cache: AttentionCache) -> Any:
        # dout: (B*T, C) -> dx: (B*T, C)
        xp = array_namespace(dout)
        q, k, v, p, y = cache.q, cache.k, cache.v, cache.probs, cache.heads
        B, H, T, D = q.shape
        dy = xp.permute_dims(xp.reshape(self.proj.backward(dout, cache.merged), (B, T, H, D)), (0, 2, 1, 3))
        if p is None:  # the blocked path: probabilities recomputed block by block from q, k and the log-sum-exp
            dq, dk, dv = blocked_backward(dy, q, k, v, y, cache.lse, cache.key_mask, self.block_q, self.block_k)
        else:
            dq, dk, dv = self._explicit_backward(xp, dy, q, k, v, p, y)
        dq *= self.scale
        if self.rope:  # gradients of the rotated q and k -> of the projected ones: the inverse rotation
            cos, sin = self._rope(xp, 0, T, dout)
            dq, dk = rope_unrotate(xp, dq, cos, sin), rope_unrotate(xp, dk, cos, sin)
        # (B, T, 3, H, D) laid out as the QKV projection's output: each gradient written once into its slot
        dqkv = xp.empty((B, T, 3, H, D), dtype=dq.dtype, device=device(dq))
        for i, g in enumerate((dq, dk, dv)):
            dqkv[:, :, i, ...] = xp.permute_dims(g, (0, 2, 1, 3))
        return self.qkv.backward(xp.reshape(dqkv, (B * T, 3 * self.d_model)), cache.x)

    @staticmethod
    def _explicit_backward(xp: Any, dy: Any, q: Any, k: Any, v: Any, p: Any, y: Any) -> tuple[Any, Any, Any]:
        # dy, y: (B, H, T, D), p: (B, H, T, T) -> dq (the scaled q's, before the scale), dk, dv: (B, H, T, D)
        dv = xp.matrix_transpose(p) @ dy  # (B, H, T, D)
        ds = dy @ xp.matrix_transpose(v)  # dp: (B, H, T, T)
        # Softmax backward: ds = p * (dp - sum_j p*dp). That row sum equals sum_d dy*y, which is T/D times cheaper.
        fused = fast_path("softmax_backward", ds)
        if fused is not None:
            fused(ds, p, sum_last(dy * y))
        else:
            ds -= sum_last(dy * y)
            ds *= p
        dq = ds @ k
        dk = xp.matrix_transpose(ds) @ q  # q is the scaled one: the scale is already in
        return dq, dk, dv

    def forward_cached(self, x: Any, T: int, kv: KVCache) -> Any:
        # x: (B*T_new, C), kv: keys and values (B, H, T_past, D), or none yet -> (B*T_new, C). Inference only: no
        # cache for backward; the new keys and values are appended to `kv`, so each new token costs one position.
        xp = array_namespace(x)
        q, k, v = self._split_heads(xp, self.qkv.forward(x)[0], T)
        if self.rope:  # the new queries and keys at their absolute positions; the cache holds rotated keys
            cos, sin = self._rope(xp, kv.length, T, x)
            q, k = rope_rotate(xp, q, cos, sin), rope_rotate(xp, k, cos, sin)
        q = q * self.scale
        if kv.keys is not None:
            k = xp.concat((kv.keys, k), axis=2)
            v = xp.concat((kv.values, v), axis=2)
        kv.keys, kv.values = k, v
        _, y, _ = self._attention(xp, q, k, v, None, x)  # long prompts take the blocked path under "auto"
        return self.proj.forward(self._merge_heads(xp, y))[0]
