"""Recording a whole training step once and replaying it: CUDA graphs on ``torch:cuda``, a plain call elsewhere.

A small model's step is launch-bound: hundreds of tiny kernels, each costing more host time than device time. A
CUDA graph records them once per input shape and replays them with one launch. Replay is exact only for a step
whose every changing number lives in device memory (inputs are copied into static buffers; the learning rate and
Adam's step count are device scalars) and that never reads back to the host or allocates from Python objects.

CuPy is not offered: its stream capture refuses cuBLAS calls ("calling cuBLAS API during stream capture is
currently unsupported", CuPy issue 6290), and every step here is mostly matmuls.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple, Sequence

from .base_errors import BackendUnavailableError, ConfigError

__all__ = ["graphs_supported", "StepGraphs", "set_tf32"]

GRAPH_MODES = ("auto", "on", "off")


def graphs_supported(backend: Any) -> str | None:
    """None when `backend` can capture CUDA graphs, else the reason it cannot."""
    if backend.name != "torch:cuda":
        return f"CUDA graphs need the torch:cuda backend (this is {backend.name})"
    return None


def use_graphs(backend: Any, mode: str) -> bool:
    """Resolve a ``cuda_graphs`` setting (auto, on or off) for `backend`; "on" where unsupported is an error naming
    why. The errors name the setting by its parameter, ``cuda_graphs`` (``param``; a command line: its flag)."""
    if mode not in GRAPH_MODES:
        raise ConfigError(f"cuda_graphs must be one of {', '.join(GRAPH_MODES)}, got {mode!r}", param="cuda_graphs")
    reason = graphs_supported(backend)
    if mode == "on" and reason is not None:
        raise BackendUnavailableError(f"cuda_graphs on: {reason}; use the torch:cuda backend or cuda_graphs auto",
                                      param="cuda_graphs")
    return mode != "off" and reason is None


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 tensor-core matmuls for float32 on GPUs: ~10 mantissa bits instead of 23.

    PyTorch reads its flags at every matmul; CuPy reads ``CUPY_TF32`` from the environment, so call this before the
    first CuPy matmul (the command lines call it before choosing the backend). Off by default and in every test.
    """
    os.environ["CUPY_TF32"] = "1" if enabled else "0"
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
        torch.backends.cudnn.allow_tf32 = bool(enabled)


class Captured(NamedTuple):
    """One input shape's recording: the graph, the static input buffers it reads (None where the input was None)
    and the output buffer it writes."""

    graph: Any
    inputs: list
    output: Any


class StepGraphs:
    """Calls ``fn(*inputs)`` through a CUDA graph captured once per input shape, replayed afterwards.

    `fn` takes device arrays and returns one device array (the loss); it must be shape-static and sync-free.
    `state` lists every array `fn` mutates across calls (parameters, optimizer moments, device scalars): the
    warm-up runs that must precede a capture would otherwise take real steps, so they are snapshotted before and
    restored after. Captures share one memory pool; the returned array is a fresh copy, valid after later replays.
    """

    def __init__(self, fn: Callable[..., Any], state: Sequence[Any], warmup: int = 2) -> None:
        import torch

        self.fn, self.state, self.warmup = fn, list(state), warmup
        self.graphs: dict[tuple, Captured] = {}  # shape key -> its recording
        self._pool = torch.cuda.graph_pool_handle()
        self._stream = torch.cuda.Stream()

    @staticmethod
    def _key(inputs: Sequence[Any]) -> tuple:
        return tuple(None if a is None else (tuple(a.shape), str(a.dtype)) for a in inputs)

    def _capture(self, inputs: Sequence[Any]) -> Captured:
        import torch

        static = [None if a is None else a.clone() for a in inputs]
        saved = [s.clone() for s in self.state]
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on the capture stream: lazy library handles, cached constants
            for _ in range(self.warmup):
                self.fn(*static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=stream):
            out = self.fn(*static)
        for s, copy in zip(self.state, saved):  # undo the warm-up steps
            s.copy_(copy)
        return Captured(graph, static, out)

    def __call__(self, *inputs: Any) -> Any:
        key = self._key(inputs)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(inputs)
        for s, a in zip(entry.inputs, inputs):
            if s is not None:
                s.copy_(a, non_blocking=True)
        entry.graph.replay()
        return entry.output.clone()
