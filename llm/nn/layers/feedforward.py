"""Position-wise feed-forward network: Linear -> ReLU (or GELU) -> Linear."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from llm.nn.namespace import array_namespace

from llm.nn.layers.base import Layer
from llm.nn.layers.linear import Linear

_GELU_A = math.sqrt(2.0 / math.pi)
_GELU_B = 0.044715


class FeedForwardCache(NamedTuple):
    """What :meth:`FeedForward.forward` keeps: the input x (N, C); gelu, GELU's input h and tanh term t,
    (N, d_ff) each, or None for ReLU (it rebuilds its gate from a > 0); a, the activation's output (N, d_ff)."""

    x: Any
    gelu: tuple | None
    a: Any


class FeedForward(Layer):
    """``fc2(act(fc1(x)))`` with act ReLU (the seed's) or GELU (tanh approximation)."""

    def __init__(self, backend: Any, rng: Any, d_model: int, d_ff: int, activation: str = "relu",
                 out_std: float = 0.02) -> None:
        super().__init__()  # activation is relu or gelu: GPTConfig's rule
        self.activation = activation
        self.fc1 = Linear(backend, rng, d_model, d_ff)
        self.fc2 = Linear(backend, rng, d_ff, d_model, std=out_std)
        self.children = {"fc1": self.fc1, "fc2": self.fc2}

    def forward(self, x: Any) -> tuple[Any, FeedForwardCache]:
        # x: (N, C) -> y: (N, C); hidden h: (N, d_ff). cache: x for fc1, (h, t) for GELU, a for fc2
        xp = array_namespace(x)
        h, _ = self.fc1.forward(x)
        if self.activation == "relu":
            # In place: a = h * gate (multiplying by a float mask is cheaper than `where`). Backward rebuilds the
            # gate from a > 0, which is h > 0: one (N, d_ff) array less kept per layer.
            h *= xp.astype(h > 0, h.dtype)
            act, a = None, h
        else:
            t = xp.tanh(_GELU_A * (h + _GELU_B * h * h * h))
            act = (h, t)
            a = 0.5 * h * (1.0 + t)
        y, _ = self.fc2.forward(a)
        return y, FeedForwardCache(x, act, a)

    def backward(self, dout: Any, cache: FeedForwardCache) -> Any:
        # dout: (N, C) -> dx: (N, C)
        xp = array_namespace(dout)
        a = cache.a
        da = self.fc2.backward(dout, a)
        if self.activation == "relu":
            da *= xp.astype(a > 0, a.dtype)  # dh
        else:
            h, t = cache.gelu
            dtanh = (1.0 - t * t) * _GELU_A * (1.0 + 3.0 * _GELU_B * h * h)
            da *= 0.5 * (1.0 + t) + 0.5 * h * dtanh
        return self.fc1.backward(da, cache.x)
