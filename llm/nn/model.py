"""GPT: embeddings, transformer blocks, final layer norm and the output projection."""

from __future__ import annotations

import math
from typing import Any, NamedTuple


from llm.nn.config import GPTConfig
from llm import checks
from llm.errors import ConfigError
from llm.nn.layers import Embedding, LayerNorm, OutputProjection, TransformerBlock
from llm.nn.layers.attention import KVCache
from llm.nn.layers.base import Layer
from llm.nn.layers.block import BlockCache
from llm.nn.layers.embedding import EmbeddingCache
from backends import get_backend
from backends.ops import index_add
from llm.nn.loss import softmax_cross_entropy
from llm.nn.params import FlatParameters
from llm.nn.batch_checks import batch_shape, check_ids, prepare_batch


class TrunkCache(NamedTuple):
    """The embeddings' and every block's caches (in order), for the trunk's backward pass."""

    embed: EmbeddingCache
    blocks: list[BlockCache]


class RecomputedTrunk(NamedTuple):
    """The trunk's forward pass with recomputation (``recompute=True``): the embeddings' cache, the last block's
    cache (`blocks`, a list of one) and the inputs (B*T, C) of the blocks before it, whose forward passes the
    backward pass runs again; `T` is the sequence length."""

    embed: EmbeddingCache
    blocks: list[BlockCache]
    inputs: list
    T: int


class HeadCache(NamedTuple):
    """The final layer norm's cache (None for post-LN, which has none) and the output projection's input."""

    ln_f: Any
    head: Any


class GPTCache(NamedTuple):
    """What ``GPT.forward(..., return_cache=True)`` returns beside the logits, for :meth:`GPT.backward`."""

    trunk: TrunkCache
    head: HeadCache


class GPT(Layer):
    """A decoder-only transformer with hand-written backward passes.

    ``params`` and ``grads`` are flat dicts keyed like a state dict (``blocks.0.attn.qkv.weight``); their arrays
    are the layers' own, updated in place by the optimizer. Weights are drawn on the host from ``seed``, so one
    seed gives the same model on every backend.
    """

    def __init__(self, config: GPTConfig, backend: Any, seed: int = 0) -> None:
        super().__init__()
        if isinstance(backend, str):  # a name, as llm.load takes: "cpu", "cuda", "torch"... in float32
            backend = get_backend(backend)
        if not hasattr(backend, "xp"):
            raise ConfigError(f"backend must be a Backend (backends.get_backend(\"cpu\")) or its name, got "
                              f"{type(backend).__name__}")
        checks.nonnegative_int(seed, "seed", allow_none=True)
        self.config, self.backend = config, backend
        c = config
        rng = backend.rng(seed)
        out_std = c.init_std / math.sqrt(2 * c.n_layers)  # residual projections: keep the residual stream's scale
        self.embed = Embedding(backend, rng, c.vocab_size, c.max_seq_len, c.d_model, std=c.init_std,
                               pos_encoding=c.pos_encoding)
        self.blocks = [TransformerBlock(backend, rng, c.d_model, c.n_heads, c.d_ff, c.activation, c.norm,
                                        c.ln_eps, out_std, rope=c.pos_encoding == "rope", max_seq_len=c.max_seq_len,
                                        qkv_bias=c.qkv_bias)
                       for _ in range(c.n_layers)]
        self.ln_f = LayerNorm(backend, c.d_model, c.ln_eps) if c.norm == "pre" else None
        self.head = OutputProjection(backend, rng, c.d_model, c.vocab_size,
                                     tied_to=self.embed if c.tie_weights else None, std=c.init_std,
                                     bias=c.head_bias)
        self.children = {"embed": self.embed, **{f"blocks.{i}": b for i, b in enumerate(self.blocks)}}
        if self.ln_f is not None:
            self.children["ln_f"] = self.ln_f
        self.children["head"] = self.head
        # Parameters and gradients move into two flat buffers; every layer's dicts are rebound to views of them.
        self.flat = FlatParameters(backend, [(name, p) for name, p, _ in self.named_arrays()])
        for name, layer, key in self.named_slots():
            layer.params[key], layer.grads[key] = self.flat.params[name], self.flat.grads[name]
        self.params: dict[str, Any] = {name: self.flat.params[name] for name, _, _ in self.named_slots()}
        self.grads: dict[str, Any] = {name: self.flat.grads[name] for name in self.params}
        self._last_cache = None  # what the classic forward(tokens) -> backward(dlogits) pair hands over

    # -- inputs: checked on the host, where they are cheap to check, then sent ---------------------------------------
    def _tokens(self, tokens: Any, what: str = "tokens") -> Any:
        """(B, T) token ids -> a device int64 array; ids given on the host are range-checked before they are sent."""
        return self.backend.asarray(check_ids(self.backend, tokens, self.config, what), dtype=self.backend.xp.int64)

    # -- training path ---------------------------------------------------------------------------------------------
    def forward(self, tokens: Any, key_mask: Any = None, return_cache: bool = False) -> Any:
        """tokens: (B, T) int (host or device) -> logits (B, T, V). `key_mask` (B, T) bool hides padding keys.

        With ``return_cache=True`` returns ``(logits, cache)`` for :meth:`backward`; otherwise the cache is kept for
        the next ``backward(dlogits)`` (only the last forward's: inference in between, such as ``generate``, does
        not disturb it).
        """
        tokens = self._tokens(tokens)
        if key_mask is not None:
            key_mask = self.backend.asarray(key_mask, dtype=self.backend.xp.bool)
        B, T = tokens.shape
        x, trunk = self._trunk_forward(tokens, key_mask)
        logits, head = self._head_forward(x)
        logits = self.backend.xp.reshape(logits, (B, T, self.config.vocab_size))
        cache = GPTCache(trunk, head)
        if return_cache:
            return logits, cache
        self._last_cache = cache
        return logits

    def predict(self, tokens: Any, key_mask: Any = None) -> Any:
        """Inference: tokens (B, T) -> logits (B, T, V), keeping nothing for a backward pass."""
        return self.forward(tokens, key_mask, return_cache=True)[0]

    def backward(self, dlogits: Any, cache: Any = None) -> None:
        """dlogits: (B, T, V). Adds every parameter's gradient into ``grads`` (call :meth:`zero_grads` first).

        `cache` is what ``forward(..., return_cache=True)`` returned; None uses the last plain ``forward``'s.
        """
        last = cache is None
        cache = self._last_cache if last else cache
        if cache is None:
            raise ConfigError("backward() needs a forward() first (or pass the cache forward returned)")
        embed = cache.trunk.embed  # the embedding's cache: (B*T,) ids and T
        want = (embed.flat_ids.shape[0] // embed.T, embed.T, self.config.vocab_size)
        shape = tuple(getattr(dlogits, "shape", ()))
        if shape not in (want, (want[0] * want[1], want[2])):
            raise ConfigError(f"backward: dlogits must have the shape of the logits forward returned, {want}; got "
                              f"{shape if hasattr(dlogits, 'shape') else type(dlogits).__name__}", param="dlogits")
        if last:
            self._last_cache = None
        xp = self.backend.xp
        dx = self._head_backward(xp.reshape(dlogits, (-1, self.config.vocab_size)), cache.head)
        self._trunk_backward(dx, cache.trunk)

    # The two halves of the network: embeddings + blocks ("trunk"), then final norm + output projection ("head").
    # The residual stream is 2-D, (B*T, C): every GEMM is one 2-D GEMM and no layer reshapes it.
    def _trunk_forward(self, tokens: Any, key_mask: Any = None, recompute: bool = False) -> tuple[Any, Any]:
        # tokens: (B, T) -> x: (B*T, C), cache. recompute: keep each block's input, not its cache (but the last's)
        T = tokens.shape[1]
        x, c_embed = self.embed.forward(tokens)
        caches, inputs = [], [] if recompute else None
        for i, block in enumerate(self.blocks):
            if recompute and i < len(self.blocks) - 1:
                inputs.append(x)
                x = block.forward(x, T, key_mask)[0]  # its cache is freed here; backward recomputes it
                continue
            x, c = block.forward(x, T, key_mask)
            caches.append(c)
        return x, (RecomputedTrunk(c_embed, caches, inputs, T) if recompute else TrunkCache(c_embed, caches))

    def _trunk_backward(self, dx: Any, cache: TrunkCache | RecomputedTrunk) -> None:
        # dx: (B*T, C)
        caches, inputs = cache.blocks, getattr(cache, "inputs", None)
        recomputed = 0 if inputs is None else len(inputs)  # blocks 0 .. recomputed-1 kept only their input
        for i in reversed(range(len(self.blocks))):
            # pop: a block's activations are freed as soon as its backward is done (a cache is used once)
            if i < recomputed:
                dx = self.blocks[i].backward_recompute(dx, inputs.pop(), cache.T)
            else:
                dx = self.blocks[i].backward(dx, caches.pop())
        self.embed.backward(dx, cache.embed)

    def _head_forward(self, x: Any) -> tuple[Any, HeadCache]:
        # x: (N, C) -> logits (N, V), cache
        c_ln = None
        if self.ln_f is not None:
            x, c_ln = self.ln_f.forward(x)
        logits, c_head = self.head.forward(x)
        return logits, HeadCache(c_ln, c_head)

    def _head_backward(self, dlogits: Any, cache: HeadCache) -> Any:
        # dlogits: (N, V) -> dx (N, C)
        dx = self.head.backward(dlogits, cache.head)
        return self.ln_f.backward(dx, cache.ln_f) if self.ln_f is not None else dx

    def zero_grads(self) -> None:
        """Zero every gradient: one write over the flat gradient buffer."""
        self.flat.zero_grads()

    def loss_and_grads(self, tokens: Any, targets: Any, mask: Any = None) -> Any:
        """Mean cross-entropy over positions where `mask` (B, T) is True (all when None); zeroes, then fills grads.

        Returns the loss as a 0-d device array (``float(loss)`` reads it; the step itself never reads back).
        Padding is on the right, so the causal mask alone keeps real tokens from seeing it: no key mask is needed.
        With a mask, the final norm, the output projection and the loss run only on the N positions that count
        (the vocabulary-wide part of the step shrinks from B*T rows to N); those rows are chosen on the host, where
        the mask is, so no device value decides a shape.
        """
        batch = prepare_batch(self.backend, self.config, tokens, targets, mask)
        if batch.rows is not None and batch.rows.shape[0] == 0:  # nothing to learn from: zero loss, zero gradients
            self.flat.zero_grads()
            return self.backend.xp.zeros((), dtype=self.backend.dtype, device=self.backend.device)
        return self.loss_and_grads_device(*batch)

    def loss_and_grads_device(self, tokens: Any, targets: Any, rows: Any = None, weights: Any = None,
                              grad_scale: Any = None, *, accumulate: bool = False, recompute: bool = False) -> Any:
        """The device half of :meth:`loss_and_grads`, on arrays already sent (``*batch``, a DeviceBatch).

        tokens: (B, T) int; targets: (N,) int, one per counted row; rows: (N,) int indices into the B*T positions,
        or None when every position counts (N = B*T); weights: (N,) float summing to 1, or None for the mean.
        Returns the 0-d loss; shapes depend only on the arguments' shapes, so a backend may capture and replay it.
        `grad_scale` (a 0-d device array, or None): the loss scale of mixed precision, multiplying every gradient.
        ``accumulate=True`` adds this batch's gradients into ``grads`` instead of zeroing them first (micro-batches:
        weights then sum to this slice's share of the whole batch). ``recompute=True`` keeps only each block's
        input during the forward pass and runs the block's forward again in the backward pass (activation
        recomputation: less memory, one more forward pass of the trunk; the same gradients, bit for bit).
        """
        xp = self.backend.xp
        if not accumulate:
            self.flat.zero_grads()
        x, trunk = self._trunk_forward(tokens, recompute=recompute)
        if rows is not None:
            x = xp.take(x, rows, axis=0)  # (N, C) the positions that count
        logits, head = self._head_forward(x)
        del x
        loss, dlogits = softmax_cross_entropy(logits, targets, weights, grad_scale)
        del logits
        dx = self._head_backward(dlogits, head)
        del dlogits, head  # the (N, V) arrays must not live on through the trunk's backward pass
        if rows is not None:  # back to every position; the others get zero
            full = xp.zeros((tokens.shape[0] * tokens.shape[1], dx.shape[1]), dtype=dx.dtype, device=self.backend.device)
            index_add(full, rows, dx)  # rows are distinct: a plain scatter
            dx = full
        self._trunk_backward(dx, trunk)
        return loss

    # -- inference path with a KV cache -----------------------------------------------------------------------------
    def new_kv_cache(self) -> list[KVCache]:
        """An empty cache: one :class:`KVCache` (keys and values) per block, filled by :meth:`forward_cached`."""
        return [KVCache() for _ in self.blocks]

    def forward_cached(self, tokens: Any, kv_cache: list[KVCache]) -> Any:
        """tokens: (B, T_new) following the cached positions -> logits (B, T_new, V). Appends to `kv_cache`."""
        tokens = self._tokens(tokens)
        past = kv_cache[0].length
        if past + tokens.shape[1] > self.config.max_seq_len:
            raise ConfigError(f"KV cache of {past} positions plus {tokens.shape[1]} new exceeds max_seq_len "
                              f"{self.config.max_seq_len}")
        B, T = tokens.shape
        x, _ = self.embed.forward(tokens, start=past)
        for block, kv in zip(self.blocks, kv_cache):
            x = block.forward_cached(x, T, kv)
        logits, _ = self._head_forward(x)
        return self.backend.xp.reshape(logits, (B, T, self.config.vocab_size))

    def attention_maps(self, tokens: Any) -> list:
        """The attention probabilities of one sequence: a list (one per layer) of (H, T, T) host NumPy arrays.

        `tokens`: T token ids, shape (T,) or (1, T), host or device. Runs the ordinary forward pass
        (``return_cache=True``) on the explicit attention path, whatever the layers are set to (the blocked path
        keeps no probabilities), and takes each block's probabilities from its cache: row t is query t's distribution over keys 0..t (zero above the diagonal, each row sums
        to 1). Everything stays on the device until one transfer at the end.
        """
        shape = batch_shape(tokens)
        if len(shape) == 1:
            tokens = tokens[None, ...] if hasattr(tokens, "shape") else [list(tokens)]
        elif len(shape) != 2 or shape[0] != 1:
            raise ConfigError(f"attention_maps takes one sequence, shape (T,) or (1, T); got {shape}")
        if shape[-1] == 0:
            raise ConfigError("attention_maps needs at least one token")
        layers = [block.attn for block in self.blocks]
        modes = [layer.attention for layer in layers]
        try:  # the explicit path, whatever the layers are set to: the blocked one keeps no probabilities
            for layer in layers:
                layer.attention = "explicit"
            _, cache = self.forward(tokens, return_cache=True)
        finally:
            for layer, mode in zip(layers, modes):
                layer.attention = mode
        xp = self.backend.xp
        probs = xp.stack([block.attn.probs[0, ...] for block in cache.trunk.blocks])  # (L, H, T, T)
        host = self.backend.to_numpy(probs)  # a fresh stack: the host copy shares nothing with the model
        return [host[i] for i in range(host.shape[0])]

    def num_parameters(self) -> int:
        return sum(math.prod(p.shape) for p in self.params.values())

    def __repr__(self) -> str:
        c = self.config
        return (f"GPT(vocab={c.vocab_size}, d_model={c.d_model}, heads={c.n_heads}, layers={c.n_layers}, "
                f"d_ff={c.d_ff}, max_seq_len={c.max_seq_len}, {c.norm}-LN, {c.activation}, {c.pos_encoding} positions, "
                f"params={self.num_parameters():,}, backend={self.backend})")
