"""The layer contract shared by every layer.

A layer owns ``params`` and ``grads`` (same keys, same shapes), and its sub-layers in ``children``.
Activations are explicit: ``y, cache = layer.forward(x)`` returns the output and exactly what the backward pass
needs; ``dx = layer.backward(dy, cache)`` returns the input gradient and adds (``+=``) into ``self.grads``.
Nothing of a forward pass is kept on ``self``, so inference between a forward and its backward is harmless and
several batches can be in flight. Once the model is built, ``params`` and ``grads`` are views into the model's
flat buffers (see :mod:`llm.params`), updated in place and never rebound.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

from llm.nn.namespace import array_namespace


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

    def replicate(self, grads: dict[str, Any], prefix: str = "", memo: dict[int, "Layer"] | None = None) -> "Layer":
        """A twin of this layer tree that shares every parameter but adds its gradients into `grads`.

        `grads` maps dotted names (as :meth:`named_slots` spells them, under `prefix`) to arrays of the gradients'
        shapes, e.g. the views of a second flat gradient buffer. Each layer is copied shallowly: parameters and the
        constant caches (causal masks, transposed views) are the same objects; ``grads`` and ``children`` are the
        twin's own, and attributes that name a sub-layer (``self.qkv``, ``self.blocks[i]``, a tied head's
        ``tied_to``) name its twin. Twins let several threads run forward and backward on one set of weights,
        each accumulating into its own gradient buffer, since nothing of a pass is stored on a layer.
        """
        memo = {} if memo is None else memo
        twin = memo.get(id(self))
        if twin is not None:
            return twin
        twin = copy.copy(self)
        memo[id(self)] = twin
        twin.grads = {key: grads[prefix + key] for key in self.grads}
        twin.children = {name: child.replicate(grads, f"{prefix}{name}.", memo)
                         for name, child in self.children.items()}

        def relink(value: Any) -> Any:
            if isinstance(value, Layer):
                if id(value) not in memo:
                    raise ValueError(f"{type(self).__name__} refers to a {type(value).__name__} that is not among "
                                     "its children (or an earlier sibling's): cannot replicate it")
                return memo[id(value)]
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, Layer) for v in value):
                return type(value)(relink(v) for v in value)
            return value

        for attr, value in list(vars(twin).items()):
            if attr not in ("children", "grads"):
                setattr(twin, attr, relink(value))
        return twin

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
