"""Transformer block: attention and feed-forward, each with a residual connection and a layer norm."""

from __future__ import annotations

from typing import Any, NamedTuple

from llm.nn.layers.attention import AttentionCache, CausalSelfAttention, KVCache
from llm.nn.layers.base import Layer
from llm.nn.layers.feedforward import FeedForward
from llm.nn.layers.layernorm import LayerNorm


class BlockCache(NamedTuple):
    """What :meth:`TransformerBlock.forward` keeps for its backward pass: each sub-layer's own cache."""

    ln1: Any
    attn: AttentionCache
    ln2: Any
    ff: Any


class TransformerBlock(Layer):
    """Pre-LN by default: ``h = x + attn(ln1(x)); out = h + ff(ln2(h))``.

    Pre-LN keeps an identity path from the loss to the embeddings, so it trains stably at the higher learning
    rates the batched recipe uses. ``norm="post"`` gives the seed's post-LN arrangement,
    ``h = ln1(x + attn(x)); out = ln2(h + ff(h))``, for fidelity comparisons.
    """

    def __init__(self, backend: Any, rng: Any, d_model: int, n_heads: int, d_ff: int, activation: str = "relu",
                 norm: str = "pre", ln_eps: float = 1e-5, out_std: float = 0.02, rope: bool = False,
                 max_seq_len: int | None = None, qkv_bias: bool = False) -> None:
        super().__init__()
        self.norm = norm
        self.ln1 = LayerNorm(backend, d_model, ln_eps)
        self.attn = CausalSelfAttention(backend, rng, d_model, n_heads, out_std=out_std, rope=rope,
                                        max_seq_len=max_seq_len, qkv_bias=qkv_bias)
        self.ln2 = LayerNorm(backend, d_model, ln_eps)
        self.ff = FeedForward(backend, rng, d_model, d_ff, activation, out_std=out_std)
        self.children = {"ln1": self.ln1, "attn": self.attn, "ln2": self.ln2, "ff": self.ff}

    def forward(self, x: Any, T: int, key_mask: Any = None) -> tuple[Any, BlockCache]:
        # x: (B*T, C) -> y: (B*T, C), cache: the four sub-layers' caches
        if self.norm == "pre":
            a, c_ln1 = self.ln1.forward(x)
            h, c_attn = self.attn.forward(a, T, key_mask)
            h += x
            f, c_ln2 = self.ln2.forward(h)
            y, c_ff = self.ff.forward(f)
            y += h
        else:
            s, c_attn = self.attn.forward(x, T, key_mask)
            s += x
            h, c_ln1 = self.ln1.forward(s)
            s, c_ff = self.ff.forward(h)
            s += h
            y, c_ln2 = self.ln2.forward(s)
        return y, BlockCache(c_ln1, c_attn, c_ln2, c_ff)

    def backward(self, dout: Any, cache: BlockCache) -> Any:
        # dout: (B*T, C) -> dx: (B*T, C)
        if self.norm == "pre":
            dh = self.ln2.backward(self.ff.backward(dout, cache.ff), cache.ln2)
            dh += dout
            dx = self.ln1.backward(self.attn.backward(dh, cache.attn), cache.ln1)
            dx += dh
            return dx
        dsum2 = self.ln2.backward(dout, cache.ln2)
        dh = self.ff.backward(dsum2, cache.ff)
        dh += dsum2
        dsum1 = self.ln1.backward(dh, cache.ln1)
        dx = self.attn.backward(dsum1, cache.attn)
        dx += dsum1
        return dx

    def backward_recompute(self, dout: Any, x: Any, T: int, key_mask: Any = None) -> Any:
        # dout, x (the block's input): (B*T, C) -> dx: (B*T, C); the forward pass again, then its backward
        cache = self.forward(x, T, key_mask)[1]  # the same operations on the same input: the same cache
        return self.backward(dout, cache)

    def forward_cached(self, x: Any, T: int, kv: KVCache) -> Any:
        # x: (B*T_new, C) -> (B*T_new, C); inference with the attention KV cache `kv`
        ln1, ln2 = self.ln1, self.ln2
        if self.norm == "pre":
            h = x + self.attn.forward_cached(ln1.forward(x)[0], T, kv)
            return h + self.ff.forward(ln2.forward(h)[0])[0]
        h = ln1.forward(x + self.attn.forward_cached(x, T, kv))[0]
        return ln2.forward(h + self.ff.forward(h)[0])[0]
