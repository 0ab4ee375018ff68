"""Model hyper-parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from llm import checks
from llm.errors import ConfigError


POS_ENCODINGS = ("learned", "sinusoidal", "rope")


@dataclass(frozen=True)
class GPTConfig:
    """The size and shape of a GPT. Defaults are the reference configuration (the RustGPT seed's)."""

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

    def __post_init__(self) -> None:
        # NumPy scalars are numbers too; what is stored is a plain int / float / bool (to_dict() must be JSON).
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_seq_len"):
            object.__setattr__(self, name, checks.positive_int(getattr(self, name), name))
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}: "
                              "pick n_heads dividing it")
        checks.one_of(self.activation, ("relu", "gelu"), "activation")
        checks.one_of(self.norm, ("pre", "post"), "norm")
        object.__setattr__(self, "tie_weights", checks.boolean(self.tie_weights, "tie_weights"))
        checks.one_of(self.pos_encoding, POS_ENCODINGS, "pos_encoding")
        if self.pos_encoding == "rope" and (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"pos_encoding rope rotates pairs of channels, so the head size d_model / n_heads "
                              f"must be even, got {self.d_model} / {self.n_heads} = {self.d_model // self.n_heads}")
        for name in ("ln_eps", "init_std"):
            object.__setattr__(self, name, checks.positive_number(getattr(self, name), name))

    def num_parameters(self) -> int:
        """The parameter count this configuration gives (the same as ``GPT.num_parameters()``)."""
        C, F, V, T, L = self.d_model, self.d_ff, self.vocab_size, self.max_seq_len, self.n_layers
        block = 2 * 2 * C + C * 3 * C + (C * C + C) + (C * F + F) + (F * C + C)
        head = V if self.tie_weights else V * C + V
        position = T * C if self.pos_encoding == "learned" else 0  # the other two have no parameters
        return V * C + position + L * block + (2 * C if self.norm == "pre" else 0) + head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}")
        return cls(**d)
