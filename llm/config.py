"""Model hyper-parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import ConfigError


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

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}: "
                              "pick n_heads dividing it")
        if self.activation not in ("relu", "gelu"):
            raise ConfigError(f"activation must be relu or gelu, got {self.activation!r}")
        if self.norm not in ("pre", "post"):
            raise ConfigError(f"norm must be pre or post, got {self.norm!r}")
        if not (self.ln_eps > 0 and self.init_std > 0):
            raise ConfigError("ln_eps and init_std must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}")
        return cls(**d)
