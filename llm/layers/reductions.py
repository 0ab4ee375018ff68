"""Sums written as matmuls with a ones vector.

On NumPy a reduction over a short last axis (or down the rows of a tall matrix) runs several times slower than
the same sum as a GEMV, which BLAS vectorizes and threads; on other libraries the matmul is at least as fast.
"""

from __future__ import annotations

from typing import Any

from ..namespace import array_namespace, device


def mean_last(x: Any) -> Any:
    """x: (..., C) -> (..., 1), the mean over the last axis."""
    xp = array_namespace(x)
    C = x.shape[-1]
    w = xp.full((C, 1), 1.0 / C, dtype=x.dtype, device=device(x))
    return xp.reshape(xp.reshape(x, (-1, C)) @ w, (*x.shape[:-1], 1))


def sum_rows(x: Any) -> Any:
    """x: (..., C) -> (C,), the sum over every leading axis (a bias or norm-gain gradient)."""
    xp = array_namespace(x)
    C = x.shape[-1]
    x2 = xp.reshape(x, (-1, C))
    ones = xp.ones((1, x2.shape[0]), dtype=x.dtype, device=device(x))
    return xp.reshape(ones @ x2, (C,))
