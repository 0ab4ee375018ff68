"""Model hyper-parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from llm import checks
from llm.errors import ConfigError


POS_ENCODINGS = ("learned", "sinusoidal", "rope")
# The fields added after checkpoints were first written: to_dict() leaves them out at these values, so a model that
# does not use them saves exactly the config.json it saved before (and configs written before them load).
_LATER_DEFAULTS = {"qkv_bias": False, "head_bias": True}

# OpenAI's GPT-2 sizes (Radford et al. 2019, as published on the Hugging Face hub): layers, heads, width. Every one
# has the byte-level BPE vocabulary of 50257 tokens, 1024 learned positions, d_ff = 4 * d_model, the tanh GELU,
# pre-LN with a final norm, the output projection tied to the token embedding (and without a bias) and a QKV bias.
GPT2_PRESETS = {
    "gpt2": (12, 12, 768),  # 124M parameters
    "gpt2-medium": (24, 16, 1024),  # 355M
    "gpt2-large": (36, 20, 1280),  # 774M
    "gpt2-xl": (48, 25, 1600),  # 1558M
}


@dataclass(frozen=True)
class GPTConfig:
    """The size and shape of a GPT. Defaults are the reference configuration (the RustGPT seed's);
    :meth:`preset` gives GPT-2's (``GPTConfig.preset("gpt2")``)."""

    vocab_size: int
    d_model: int = 128
    n_heads: int = 8
    n_layers: int = 3
    d_ff: int = 256
    max_seq_len: int = 80
    activation: str = "relu"  # or "gelu"
    norm: str = "pre"  # "pre" (default, stabler) or "post" (the seed's arrangement)
    tie_weights: bool = False  # output projection reuses the token embedding table
    ln_eps: float = 1e-5
    init_std: float = 0.02
    # "learned" (a trained position table, the default), "sinusoidal" (a fixed sin/cos table added to the token
    # embeddings) or "rope" (rotary embeddings applied to queries and keys inside attention): see POS_ENCODINGS
    pos_encoding: str = "learned"
    # GPT-2's shape (see GPT2_PRESETS): a bias on the QKV projection (its query and value parts learn; without rope
    # its key part has an identically zero gradient, mathematically: a query's scores all shift by q . b_k, and
    # softmax ignores a shift; so off by default), and no bias on the output projection (a tied lm_head has none)
    qkv_bias: bool = False
    head_bias: bool = True

    def __post_init__(self) -> None:
        # NumPy scalars are numbers too; what is stored is a plain int / float / bool (to_dict() must be JSON).
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_seq_len"):
            object.__setattr__(self, name, checks.positive_int(getattr(self, name), name))
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}: "
                              "pick n_heads dividing it")
        checks.one_of(self.activation, ("relu", "gelu"), "activation")
        checks.one_of(self.norm, ("pre", "post"), "norm")
        for name in ("tie_weights", "qkv_bias", "head_bias"):
            object.__setattr__(self, name, checks.boolean(getattr(self, name), name))
        checks.one_of(self.pos_encoding, POS_ENCODINGS, "pos_encoding")
        if self.pos_encoding == "rope" and (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"pos_encoding rope rotates pairs of channels, so the head size d_model / n_heads "
                              f"must be even, got {self.d_model} / {self.n_heads} = {self.d_model // self.n_heads}")
        for name in ("ln_eps", "init_std"):
            object.__setattr__(self, name, checks.positive_number(getattr(self, name), name))

    def num_parameters(self) -> int:
        """The parameter count this configuration gives (the same as ``GPT.num_parameters()``)."""
        C, F, V, T, L = self.d_model, self.d_ff, self.vocab_size, self.max_seq_len, self.n_layers
        block = 2 * 2 * C + C * 3 * C + (3 * C if self.qkv_bias else 0) + (C * C + C) + (C * F + F) + (F * C + C)
        head = (0 if self.tie_weights else V * C) + (V if self.head_bias else 0)
        position = T * C if self.pos_encoding == "learned" else 0  # the other two have no parameters
        return V * C + position + L * block + (2 * C if self.norm == "pre" else 0) + head

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict; qkv_bias and head_bias only where they differ from their defaults."""
        return {k: v for k, v in asdict(self).items() if k not in _LATER_DEFAULTS or v != _LATER_DEFAULTS[k]}

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A GPT-2 shape by name (a key of GPT2_PRESETS: gpt2, gpt2-medium, gpt2-large, gpt2-xl); `overrides`
        replace any field (``GPTConfig.preset("gpt2", n_layers=2, max_seq_len=64)``)."""
        checks.one_of(name, tuple(GPT2_PRESETS), "preset")
        n_layers, n_heads, d_model = GPT2_PRESETS[name]
        shape = dict(vocab_size=50257, d_model=d_model, n_heads=n_heads, n_layers=n_layers, d_ff=4 * d_model,
                     max_seq_len=1024, activation="gelu", norm="pre", tie_weights=True, ln_eps=1e-5,
                     init_std=0.02, pos_encoding="learned", qkv_bias=True, head_bias=False)
        return cls.from_dict({**shape, **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}")
        return cls(**d)
