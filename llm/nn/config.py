"""Model hyper-parameters."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

from llm.errors import ConfigError


# NumPy's scalars register as numbers.Integral / numbers.Real (its bool_ as neither): no NumPy import needed here.
def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_bool(x: Any) -> bool:
    """True or False, or a 0-d boolean array scalar (NumPy's bool_)."""
    dtype = getattr(x, "dtype", None)
    return isinstance(x, bool) or (getattr(dtype, "kind", None) == "b" and getattr(x, "shape", None) == ())


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
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}: "
                              "pick n_heads dividing it")
        if self.activation not in ("relu", "gelu"):
            raise ConfigError(f"activation must be relu or gelu, got {self.activation!r}")
        if self.norm not in ("pre", "post"):
            raise ConfigError(f"norm must be pre or post, got {self.norm!r}")
        if not _is_bool(self.tie_weights):  # "no" or 0 from a hand-edited config.json: never guess
            raise ConfigError(f"tie_weights must be true or false, got {self.tie_weights!r}")
        object.__setattr__(self, "tie_weights", bool(self.tie_weights))
        if self.pos_encoding not in POS_ENCODINGS:
            raise ConfigError(f"pos_encoding must be one of {', '.join(POS_ENCODINGS)}, got {self.pos_encoding!r}")
        if self.pos_encoding == "rope" and (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"pos_encoding rope rotates pairs of channels, so the head size d_model / n_heads "
                              f"must be even, got {self.d_model} / {self.n_heads} = {self.d_model // self.n_heads}")
        for name in ("ln_eps", "init_std"):
            value = getattr(self, name)
            if not (_is_real(value) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite positive number, got {value!r}")
            object.__setattr__(self, name, float(value))

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
