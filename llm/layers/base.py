"""The layer contract shared by every layer.

A layer owns ``params`` and ``grads`` (same keys, same shapes), and its sub-layers in ``children``.
``forward`` keeps in ``self`` only what ``backward`` needs; ``backward(dout)`` returns the gradient with respect to
the input and adds (``+=``) into ``self.grads``. Arrays are updated in place and never rebound, so the model's flat
name -> array dicts stay valid for the optimizer and checkpoints.
"""

from __future__ import annotations

from typing import Any, Iterator


class Layer:
    """Base class: parameter bookkeeping only, no math."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.children: dict[str, Layer] = {}

    def add_param(self, name: str, value: Any) -> None:
        """Register a parameter and a zeroed gradient of the same shape, dtype and device."""
        self.params[name] = value
        self.grads[name] = value * 0

    def named_arrays(self, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
        """Yield ``(dotted name, param, grad)`` for this layer and its children, in a fixed order."""
        for key, value in self.params.items():
            yield prefix + key, value, self.grads[key]
        for child_name, child in self.children.items():
            yield from child.named_arrays(f"{prefix}{child_name}.")
