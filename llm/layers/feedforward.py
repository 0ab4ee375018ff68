"""Position-wise feed-forward network: Linear -> ReLU (or GELU) -> Linear."""

from __future__ import annotations

import math
from typing import Any

from ..namespace import array_namespace

from .base import Layer
from .linear import Linear

_GELU_A = math.sqrt(2.0 / math.pi)
_GELU_B = 0.044715


class FeedForward(Layer):
    """``fc2(act(fc1(x)))`` with act ReLU (the seed's) or GELU (tanh approximation)."""

    def __init__(self, backend: Any, rng: Any, d_model: int, d_ff: int, activation: str = "relu",
                 out_std: float = 0.02) -> None:
        super().__init__()
        if activation not in ("relu", "gelu"):
            from ..errors import ConfigError

            raise ConfigError(f"unknown activation {activation!r}: choose relu or gelu")
        self.activation = activation
        self.fc1 = Linear(backend, rng, d_model, d_ff)
        self.fc2 = Linear(backend, rng, d_ff, d_model, std=out_std)
        self.children = {"fc1": self.fc1, "fc2": self.fc2}
        self.cache = None

    def forward(self, x: Any) -> Any:
        # x: (B, T, C) -> (B, T, C); hidden (B, T, d_ff)
        xp = array_namespace(x)
        h = self.fc1.forward(x)
        if self.activation == "relu":
            gate = xp.astype(h > 0, h.dtype)  # multiplying by a float mask is cheaper than `where`
            self.cache = gate
            a = h * gate
        else:
            t = xp.tanh(_GELU_A * (h + _GELU_B * h * h * h))
            self.cache = (h, t)
            a = 0.5 * h * (1.0 + t)
        return self.fc2.forward(a)

    def backward(self, dout: Any) -> Any:
        # dout: (B, T, C) -> dx: (B, T, C)
        da = self.fc2.backward(dout)
        if self.activation == "relu":
            dh = da * self.cache
        else:
            h, t = self.cache
            dtanh = (1.0 - t * t) * _GELU_A * (1.0 + 3.0 * _GELU_B * h * h)
            dh = da * (0.5 * (1.0 + t) + 0.5 * h * dtanh)
        self.cache = None
        return self.fc1.backward(dh)
