"""Sums written as matmuls with a constant vector, whose constants are built once per shape.

On NumPy a reduction over a short last axis (or down the rows of a tall matrix) runs several times slower than
the same sum as a GEMV, which BLAS vectorizes and threads; on other libraries the matmul is at least as fast. The
ones / (1/C) vectors are cached per (library, length, dtype, device): building them on every call was one array
operation more per sum, dozens per training step.
"""

from __future__ import annotations

from typing import Any

from llm.nn.namespace import array_namespace, device

_CONSTANTS: dict[tuple, Any] = {}  # (kind, array type, shape, dtype, device) -> a constant array, never written


def array_key(like: Any) -> tuple:
    """A cheap hashable key for "arrays like `like`": its type, dtype and device.

    A device object may hash by identity and be made anew on every access (CuPy's Device): its ``id`` is used then.
    """
    dev = like.device
    return type(like), like.dtype, getattr(dev, "id", dev)


def constant(xp: Any, kind: str, shape: tuple[int, ...], value: float, like: Any) -> Any:
    """A cached array of `shape` filled with `value`, on `like`'s device and dtype (read-only by convention).

    The key uses the dtype and device objects themselves: formatting them as strings cost ~10 us a call, more than
    the sums these constants serve.
    """
    key = (kind, shape, *array_key(like))
    c = _CONSTANTS.get(key)
    if c is None:
        c = _CONSTANTS[key] = xp.full(shape, value, dtype=like.dtype, device=device(like))
    return c


def low_precision(xp: Any, a: Any) -> bool:
    """Whether `a` is in a compute dtype narrower than float32 (float16, bfloat16: mixed precision's)."""
    return a.dtype != xp.float32 and a.dtype != xp.float64


def mean_last(x: Any) -> Any:
    """x: (..., C) -> (..., 1), the mean over the last axis. 2-D inputs cost one matmul."""
    xp = array_namespace(x)
    C = x.shape[-1]
    w = constant(xp, "mean", (C, 1), 1.0 / C, x)
    if x.ndim == 2:
        return x @ w
    return xp.reshape(xp.reshape(x, (-1, C)) @ w, (*x.shape[:-1], 1))


def sum_last(x: Any) -> Any:
    """x: (..., D) -> (..., 1), the sum over the last axis, as one matmul."""
    xp = array_namespace(x)
    return x @ constant(xp, "ones", (x.shape[-1], 1), 1.0, x)


def sum_rows(x: Any) -> Any:
    """x: (N, C) -> (C,), the sum over the rows (a bias or norm-gain gradient), as one vector-matrix product."""
    xp = array_namespace(x)
    if x.ndim != 2:
        x = xp.reshape(x, (-1, x.shape[-1]))
    return constant(xp, "ones", (x.shape[0],), 1.0, x) @ x
