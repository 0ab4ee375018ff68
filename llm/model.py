"""GPT: embeddings, transformer blocks, final layer norm and the output projection."""

from __future__ import annotations

import math
from typing import Any


from .config import GPTConfig
from .errors import ConfigError
from .layers import Embedding, LayerNorm, OutputProjection, TransformerBlock
from .layers.base import Layer
from backends.ops import index_add
from .loss import cross_entropy


class GPT(Layer):
    """A decoder-only transformer with hand-written backward passes.

    ``params`` and ``grads`` are flat dicts keyed like a state dict (``blocks.0.attn.qkv.weight``); their arrays
    are the layers' own, updated in place by the optimizer. Weights are drawn on the host from ``seed``, so one
    seed gives the same model on every backend.
    """

    def __init__(self, config: GPTConfig, backend: Any, seed: int = 0) -> None:
        super().__init__()
        self.config, self.backend = config, backend
        c = config
        rng = backend.rng(seed)
        out_std = c.init_std / math.sqrt(2 * c.n_layers)  # residual projections: keep the residual stream's scale
        self.embed = Embedding(backend, rng, c.vocab_size, c.max_seq_len, c.d_model, std=c.init_std)
        self.blocks = [TransformerBlock(backend, rng, c.d_model, c.n_heads, c.d_ff, c.activation, c.norm,
                                        c.ln_eps, out_std) for _ in range(c.n_layers)]
        self.ln_f = LayerNorm(backend, c.d_model, c.ln_eps) if c.norm == "pre" else None
        self.head = OutputProjection(backend, rng, c.d_model, c.vocab_size,
                                     tied_to=self.embed if c.tie_weights else None, std=c.init_std)
        self.children = {"embed": self.embed, **{f"blocks.{i}": b for i, b in enumerate(self.blocks)}}
        if self.ln_f is not None:
            self.children["ln_f"] = self.ln_f
        self.children["head"] = self.head
        named = list(self.named_arrays())
        self.params: dict[str, Any] = {name: p for name, p, _ in named}
        self.grads: dict[str, Any] = {name: g for name, _, g in named}

    # -- inputs ---------------------------------------------------------------------------------------------------
    def _tokens(self, tokens: Any) -> Any:
        tokens = self.backend.asarray(tokens, dtype=self.backend.xp.int64)
        if tokens.ndim != 2:
            raise ConfigError(f"tokens must have shape (batch, time), got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.config.max_seq_len:
            raise ConfigError(f"sequence of {tokens.shape[1]} tokens exceeds max_seq_len "
                              f"{self.config.max_seq_len}: truncate or split it")
        return tokens

    # -- training path ---------------------------------------------------------------------------------------------
    def forward(self, tokens: Any, key_mask: Any = None) -> Any:
        """tokens: (B, T) int (host or device) -> logits (B, T, V). `key_mask` (B, T) bool hides padding keys."""
        if key_mask is not None:
            key_mask = self.backend.asarray(key_mask, dtype=self.backend.xp.bool)
        return self._head_forward(self._trunk_forward(self._tokens(tokens), key_mask))

    def backward(self, dlogits: Any) -> None:
        """dlogits: (B, T, V). Adds every parameter's gradient into ``grads``."""
        self._trunk_backward(self._head_backward(dlogits))

    # The two halves of the network: embeddings + blocks ("trunk"), then final norm + output projection ("head").
    def _trunk_forward(self, tokens: Any, key_mask: Any = None) -> Any:
        # tokens: (B, T) -> (B, T, C)
        x = self.embed.forward(tokens)
        for block in self.blocks:
            x = block.forward(x, key_mask)
        return x

    def _trunk_backward(self, dx: Any) -> None:
        # dx: (B, T, C)
        for block in reversed(self.blocks):
            dx = block.backward(dx)
        self.embed.backward(dx)

    def _head_forward(self, x: Any) -> Any:
        # x: (..., C) -> logits (..., V)
        if self.ln_f is not None:
            x = self.ln_f.forward(x)
        return self.head.forward(x)

    def _head_backward(self, dlogits: Any) -> Any:
        # dlogits: (..., V) -> dx (..., C)
        dx = self.head.backward(dlogits)
        return self.ln_f.backward(dx) if self.ln_f is not None else dx

    def zero_grads(self) -> None:
        for g in self.grads.values():
            g[...] = 0

    def loss_and_grads(self, tokens: Any, targets: Any, mask: Any = None) -> float:
        """Mean cross-entropy over positions where `mask` (B, T) is True (all when None); zeroes, then fills grads.

        Padding is on the right, so the causal mask alone keeps real tokens from seeing it: no key mask is needed.
        With a mask, the final norm, the output projection and the loss run only on the N positions that count
        (the vocabulary-wide part of the step shrinks from B*T rows to N), and their gradient is scattered back.
        """
        xp = self.backend.xp
        self.zero_grads()
        tokens = self._tokens(tokens)
        targets = xp.reshape(self.backend.asarray(targets, dtype=xp.int64), (-1,))
        x = self._trunk_forward(tokens)
        B, T, C = x.shape
        x = xp.reshape(x, (1, B * T, C))
        rows = None
        if mask is not None:
            mask = self.backend.asarray(mask, dtype=xp.bool)
            rows = xp.nonzero(xp.reshape(mask, (-1,)))[0]  # (N,) positions that count
            if rows.shape[0] == 0:
                return 0.0  # nothing to learn from: zero loss, zero gradients
            x = xp.take(x, rows, axis=1)  # (1, N, C)
            targets = xp.take(targets, rows, axis=0)
        loss, dlogits = cross_entropy(self._head_forward(x), targets[None, :])
        dx = self._head_backward(dlogits)
        if rows is not None:
            full = xp.zeros((B * T, C), dtype=dx.dtype, device=self.backend.device)
            index_add(full, rows, dx[0, ...])  # rows are distinct: a plain scatter
            dx = full
        self._trunk_backward(xp.reshape(dx, (B, T, C)))
        return float(loss)

    # -- inference path with a KV cache -----------------------------------------------------------------------------
    def new_kv_cache(self) -> list[dict]:
        """An empty cache: one ``{"k", "v"}`` dict per block, filled by :meth:`forward_cached`."""
        return [{} for _ in self.blocks]

    def forward_cached(self, tokens: Any, kv_cache: list[dict]) -> Any:
        """tokens: (B, T_new) following the cached positions -> logits (B, T_new, V). Appends to `kv_cache`."""
        tokens = self._tokens(tokens)
        past = kv_cache[0]["k"].shape[2] if kv_cache[0] else 0
        if past + tokens.shape[1] > self.config.max_seq_len:
            raise ConfigError(f"KV cache of {past} positions plus {tokens.shape[1]} new exceeds max_seq_len "
                              f"{self.config.max_seq_len}")
        x = self.embed.forward(tokens, start=past)
        for block, kv in zip(self.blocks, kv_cache):
            x = block.forward_cached(x, kv)
        logits = self._head_forward(x)
        self.head.x = None  # inference: nothing to keep for a backward pass
        return logits

    def num_parameters(self) -> int:
        return sum(math.prod(p.shape) for p in self.params.values())

    def __repr__(self) -> str:
        c = self.config
        return (f"GPT(vocab={c.vocab_size}, d_model={c.d_model}, heads={c.n_heads}, layers={c.n_layers}, "
                f"d_ff={c.d_ff}, max_seq_len={c.max_seq_len}, {c.norm}-LN, {c.activation}, "
                f"params={self.num_parameters():,}, backend={self.backend})")
