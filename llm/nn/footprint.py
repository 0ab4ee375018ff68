"""What a model needs in bytes, estimated from its configuration alone, before anything is allocated."""

from __future__ import annotations

from typing import Any

from llm.nn.layers.blocked_attention import BLOCK_K, BLOCKED_FROM


def largest_tensor(config: Any) -> int:
    """Elements of the largest parameter: the embedding, the learned positions, a feed-forward or QKV matrix."""
    c = config
    position = c.max_seq_len * c.d_model if c.pos_encoding == "learned" else 0
    return max(c.vocab_size * c.d_model, position, c.d_model * c.d_ff, 3 * c.d_model * c.d_model)


def build_memory(config: Any, dtype_bytes: int) -> int:
    """Bytes building the model takes at its peak: the parameters, plus the float64 draw of the largest one and
    its scaled copy (weights are drawn on the host in float64, then cast)."""
    return config.num_parameters() * dtype_bytes + largest_tensor(config) * 16


def training_memory(config: Any, batch: int, seq_len: int, dtype_bytes: int, attention: str = "auto") -> int:
    """Bytes a training run needs: the parameters, their gradients and Adam's two moments, the float64 draw of the
    largest parameter when the model is built, plus the activations of `batch` sequences of `seq_len` positions (the
    (B*T, V) logits and their gradient dominate a large vocabulary; attention's (T, T) scores per head and layer a
    long context, unless blocked attention serves it: then one log-sum-exp per head and layer is kept, and one
    block of keys per head is alive at a time). `attention`: the path the model's attention takes ("auto", the
    default: explicit below BLOCKED_FROM positions; "explicit"; "blocked")."""
    c = config
    explicit = attention == "explicit" or (attention == "auto" and seq_len < BLOCKED_FROM)
    if explicit:  # the explicit path keeps (T, T) probabilities per head and layer for backward
        attention = c.n_heads * seq_len * 3 * c.n_layers
    else:
        attention = c.n_heads * (c.n_layers + 4 * BLOCK_K)
    per_position = c.d_model * 16 * c.n_layers + attention + c.vocab_size * 2
    return (c.num_parameters() * 4 + batch * seq_len * per_position) * dtype_bytes + largest_tensor(c) * 16
