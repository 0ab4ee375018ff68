"""The layer contract shared by every layer.

A layer owns ``params`` and ``grads`` (same keys, same shapes), and its sub-layers in ``children``.
Activations are explicit: ``y, cache = layer.forward(x)`` returns the output and exactly what the backward pass
needs; ``dx = layer.backward(dy, cache)`` returns the input gradient and adds (``+=``) into ``self.grads``.
Nothing of a forward pass is kept on ``self``, so inference between a forward and its backward is harmless and
several batches can be in flight. Once the model is built, ``params`` and ``grads`` are views into the model's
flat buffers (see :mod:`llm.params`), updated in place and never rebound.
"""

from __future__ import annotations

from typing import Any, Iterator

from ..namespace import array_namespace


class Layer:
    """Base class: parameter bookkeeping only, no math."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.children: dict[str, Layer] = {}
        self._transposed: dict[str, tuple[Any, Any]] = {}

    def add_param(self, name: str, value: Any) -> None:
        """Register a parameter and a zeroed gradient of the same shape, dtype and device."""
        self.params[name] = value
        self.grads[name] = value * 0

    def transposed(self, name: str) -> Any:
        """The parameter `name` transposed: a view, built once per bound array (the flat buffer's view)."""
        w = self.params[name]
        cached = self._transposed.get(name)
        if cached is None or cached[0] is not w:
            cached = self._transposed[name] = (w, array_namespace(w).matrix_transpose(w))
        return cached[1]

    def named_slots(self, prefix: str = "") -> Iterator[tuple[str, "Layer", str]]:
        """Yield ``(dotted name, owning layer, key)`` for this layer's parameters and its children's, in order."""
        for key in self.params:
            yield prefix + key, self, key
        for child_name, child in self.children.items():
            yield from child.named_slots(f"{prefix}{child_name}.")

    def named_arrays(self, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
        """Yield ``(dotted name, param, grad)`` for this layer and its children, in a fixed order."""
        for name, layer, key in self.named_slots(prefix):
            yield name, layer.params[key], layer.grads[key]
