"""Transformer block: attention and feed-forward, each with a residual connection and a layer norm."""

from __future__ import annotations

from typing import Any

from .attention import CausalSelfAttention
from .base import Layer
from .feedforward import FeedForward
from .layernorm import LayerNorm


class TransformerBlock(Layer):
    """Pre-LN by default: ``h = x + attn(ln1(x)); out = h + ff(ln2(h))``.

    Pre-LN keeps an identity path from the loss to the embeddings, so it trains stably at the higher learning
    rates the batched recipe uses. ``norm="post"`` gives the seed's post-LN arrangement,
    ``h = ln1(x + attn(x)); out = ln2(h + ff(h))``, for fidelity comparisons.
    """

    def __init__(self, backend: Any, rng: Any, d_model: int, n_heads: int, d_ff: int, activation: str = "relu",
                 norm: str = "pre", ln_eps: float = 1e-5, out_std: float = 0.02) -> None:
        super().__init__()
        self.norm = norm
        self.ln1 = LayerNorm(backend, d_model, ln_eps)
        self.attn = CausalSelfAttention(backend, rng, d_model, n_heads, out_std=out_std)
        self.ln2 = LayerNorm(backend, d_model, ln_eps)
        self.ff = FeedForward(backend, rng, d_model, d_ff, activation, out_std=out_std)
        self.children = {"ln1": self.ln1, "attn": self.attn, "ln2": self.ln2, "ff": self.ff}

    def forward(self, x: Any, key_mask: Any = None) -> Any:
        # x: (B, T, C) -> (B, T, C)
        if self.norm == "pre":
            h = x + self.attn.forward(self.ln1.forward(x), key_mask)
            return h + self.ff.forward(self.ln2.forward(h))
        h = self.ln1.forward(x + self.attn.forward(x, key_mask))
        return self.ln2.forward(h + self.ff.forward(h))

    def backward(self, dout: Any) -> Any:
        # dout: (B, T, C) -> dx: (B, T, C)
        if self.norm == "pre":
            dh = dout + self.ln2.backward(self.ff.backward(dout))
            return dh + self.ln1.backward(self.attn.backward(dh))
        dsum2 = self.ln2.backward(dout)
        dh = dsum2 + self.ff.backward(dsum2)
        dsum1 = self.ln1.backward(dh)
        return dsum1 + self.attn.backward(dsum1)

    def forward_cached(self, x: Any, kv: dict) -> Any:
        # x: (B, T_new, C) -> (B, T_new, C); inference with the attention KV cache `kv`
        ln1, ln2 = self.ln1, self.ln2
        if self.norm == "pre":
            h = x + self.attn.forward_cached(ln1.forward(x), kv)
            return h + self.ff.forward(ln2.forward(h))
        h = ln1.forward(x + self.attn.forward_cached(x, kv))
        return ln2.forward(h + self.ff.forward(h))
