"""Parameters and gradients as flat buffers, with a named view per tensor (llm.c's layout, in the array API).

    params  (P,)  one contiguous buffer: [ matrices ... | vectors ... ]
    grads   (P,)  the same layout; zeroing, the global norm, clipping and Adam are a few operations over it

Matrices come first so decoupled weight decay, which applies to matrices only, is one slice ``[:n_decay]``.
Every named tensor a layer uses (``blocks.0.attn.qkv.weight``) is a view created once, so writes through the view
(``grad += x.T @ dy``) land in the buffer; the names stay those of a state dict, so checkpoints do not change.
"""

from __future__ import annotations

import math
from typing import Any

from backends.ops import flat_views


class FlatParameters:
    """One flat parameter buffer and one flat gradient buffer, with named views into both.

    Built from ``(name, array)`` pairs in the model's order; the arrays' values are copied in. ``params`` and
    ``grads`` are dicts of views (name -> array of the tensor's shape); ``param_buffer`` and ``grad_buffer`` are
    the (P,) buffers themselves.
    """

    def __init__(self, backend: Any, named: list[tuple[str, Any]]) -> None:
        xp = backend.xp
        matrices = [(n, a) for n, a in named if a.ndim >= 2]
        vectors = [(n, a) for n, a in named if a.ndim < 2]
        ordered = matrices + vectors
        self.backend = backend
        self.names = [n for n, _ in ordered]
        self.shapes = [tuple(int(s) for s in a.shape) for _, a in ordered]
        self.size = sum(math.prod(s) for s in self.shapes)
        self.n_decay = sum(math.prod(tuple(a.shape)) for _, a in matrices)  # [:n_decay] are the matrices
        self.param_buffer = xp.zeros((self.size,), dtype=backend.dtype, device=backend.device)
        self.grad_buffer = xp.zeros((self.size,), dtype=backend.dtype, device=backend.device)
        self.params = self.views(self.param_buffer)
        self.grads = self.views(self.grad_buffer)
        for name, value in ordered:
            self.params[name][...] = value

    def views(self, buffer: Any) -> dict[str, Any]:
        """Named views into a (P,) buffer laid out like the parameters (Adam's moments use this too)."""
        return dict(zip(self.names, flat_views(buffer, self.shapes)))

    def new_buffer(self) -> Any:
        """A zeroed (P,) buffer on the parameters' device and dtype."""
        xp = self.backend.xp
        return xp.zeros((self.size,), dtype=self.backend.dtype, device=self.backend.device)

    def with_own_grads(self) -> "FlatParameters":
        """A twin that shares this one's parameter buffer (and its views) but has its own zeroed gradient buffer.

        A data-parallel worker adds its shard's gradients into the twin's buffer (see :mod:`llm.parallel`); the
        layout, names and ``n_decay`` are the same, so the buffers sum element by element.
        """
        twin = object.__new__(FlatParameters)
        twin.__dict__.update(self.__dict__)
        twin.grad_buffer = self.new_buffer()
        twin.grads = twin.views(twin.grad_buffer)
        return twin

    def zero_grads(self) -> None:
        self.grad_buffer[...] = 0

    def __repr__(self) -> str:
        return f"FlatParameters({len(self.names)} tensors, {self.size:,} values, {self.n_decay:,} in matrices)"
