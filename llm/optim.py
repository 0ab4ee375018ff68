"""Adam with global L2 gradient-norm clipping and optional decoupled weight decay."""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace

from .errors import ConfigError


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
        self.last_grad_norm = None  # 0-d device array: the norm before clipping

    def global_norm(self, grads: dict[str, Any]) -> Any:
        """The L2 norm of all gradients together, as a 0-d device array (no host sync)."""
        xp = array_namespace(*grads.values())
        return xp.sqrt(sum(xp.sum(g * g) for g in grads.values()))

    def step(self, grads: dict[str, Any], lr: float | None = None) -> None:
        """Clip `grads` by global norm, then update every parameter in place."""
        lr = self.lr if lr is None else lr
        xp = array_namespace(*self.params.values())
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t
        scale = None
        if self.clip_norm is not None:
            norm = self.global_norm(grads)
            self.last_grad_norm = norm
            scale = xp.clip(self.clip_norm / (norm + 1e-6), max=1.0)  # 0-d, stays on the device
        step_size = lr / bc1
        inv_sqrt_bc2 = 1.0 / math.sqrt(bc2)
        for name, p in self.params.items():
            g = grads[name] if scale is None else grads[name] * scale
            m, v = self.m[name], self.v[name]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            if self.weight_decay and p.ndim >= 2:
                p -= (lr * self.weight_decay) * p
            # lr * m_hat / (sqrt(v_hat) + eps), written without materializing m_hat and v_hat
            p -= step_size * m / (xp.sqrt(v) * inv_sqrt_bc2 + self.eps)

    def state_dict(self) -> dict[str, Any]:
        """Moments (device arrays) and the step count, for checkpoints."""
        return {"t": self.t, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy saved moments into this optimizer's arrays in place (they may come from another backend)."""
        for key in ("m", "v"):
            for name, arr in self.__dict__[key].items():
                arr[...] = state[key][name]
        self.t = int(state["t"])
