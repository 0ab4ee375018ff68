"""Adam with global L2 gradient-norm clipping and optional decoupled weight decay."""

from __future__ import annotations

import math
from typing import Any

from .namespace import array_namespace

from .errors import ConfigError, TrainingDivergedError


class Adam:
    """Adam (bias-corrected) over a dict of parameters, updated in place; state lives on the parameters' device.

    Before each step the gradients are scaled so their global L2 norm is at most ``clip_norm`` (None disables).
    ``weight_decay`` is decoupled (AdamW) and applies to matrices only (ndim >= 2), not biases or norm gains.
    """

    def __init__(self, params: dict[str, Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, clip_norm: float | None = 5.0) -> None:
        if not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"learning rate must be a positive number, got {lr!r}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ConfigError(f"Adam betas must lie in [0, 1), got {betas!r}")
        if clip_norm is not None and not clip_norm > 0:
            raise ConfigError(f"clip_norm must be positive or None, got {clip_norm!r}")
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.params = params
        self.lr, self.betas, self.eps = lr, betas, eps
        self.weight_decay, self.clip_norm = weight_decay, clip_norm
        self.t = 0
        self.m = {k: p * 0 for k, p in params.items()}
        self.v = {k: p * 0 for k, p in params.items()}
        self.last_grad_norm: float | None = None  # the norm before clipping, at the last step

    def step(self, grads: dict[str, Any], lr: float | None = None) -> None:
        """Clip `grads` by global norm, then update every parameter in place.

        Raises TrainingDivergedError, before touching any parameter, when the gradients are not finite.
        """
        lr = self.lr if lr is None else lr
        xp = array_namespace(*self.params.values())
        b1, b2 = self.betas
        squares = {name: g * g for name, g in grads.items()}  # shared by the norm and the second moment
        norm = math.sqrt(float(sum(xp.sum(sq) for sq in squares.values())))  # one device -> host float a step
        if not math.isfinite(norm):
            raise TrainingDivergedError(f"gradient norm is {norm} at optimizer step {self.t + 1}; "
                                        "lower the learning rate")
        self.last_grad_norm = norm
        scale = 1.0
        if self.clip_norm is not None and norm > self.clip_norm:
            scale = self.clip_norm / (norm + 1e-6)
        self.t += 1
        bc1, bc2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t
        # lr * m_hat / (sqrt(v_hat) + eps) == (lr * sqrt(bc2) / bc1) * m / (sqrt(v) + eps * sqrt(bc2)):
        # the same update with the bias corrections folded into two scalars, three passes fewer per tensor.
        step_size = lr * math.sqrt(bc2) / bc1
        eps_hat = self.eps * math.sqrt(bc2)
        c1, c2 = (1.0 - b1) * scale, (1.0 - b2) * scale * scale  # clipping folded in as well
        for name, p in self.params.items():
            m, v = self.m[name], self.v[name]
            m *= b1
            m += c1 * grads[name]
            v *= b2
            v += c2 * squares[name]
            if self.weight_decay and p.ndim >= 2:
                p -= (lr * self.weight_decay) * p
            denom = xp.sqrt(v)
            denom += eps_hat
            p -= (step_size * m) / denom

    def state_dict(self) -> dict[str, Any]:
        """Moments (device arrays) and the step count, for checkpoints."""
        return {"t": self.t, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy saved moments into this optimizer's arrays in place (they may come from another backend)."""
        for key in ("m", "v"):
            for name, arr in self.__dict__[key].items():
                arr[...] = state[key][name]
        self.t = int(state["t"])
