"""Finite-difference gradient checking that works on any backend (perturbations go through the host)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

H = 1e-6  # central differences in float64: truncation ~H^2, round-off ~1e-16/H


def rel_error(numeric: np.ndarray, analytic: np.ndarray) -> float:
    """||numeric - analytic|| / max(||numeric||, ||analytic||), over the sampled entries."""
    denom = max(np.linalg.norm(numeric), np.linalg.norm(analytic), 1e-30)
    return float(np.linalg.norm(numeric - analytic) / denom)


def sample_indices(shape: tuple[int, ...], n: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    size = int(np.prod(shape))
    flat = rng.choice(size, size=min(n, size), replace=False)
    return [np.unravel_index(i, shape) for i in flat]


def check_array(be: Any, f: Callable[[], float], arr: Any, analytic: Any, rng: np.random.Generator,
                n: int = 12) -> float:
    """Perturb sampled entries of device array `arr` in place; compare d f / d arr with `analytic`."""
    host = be.to_numpy(arr).astype(np.float64)
    ana = be.to_numpy(analytic)
    num, got = [], []
    for idx in sample_indices(host.shape, n, rng):
        orig = host[idx]
        host[idx] = orig + H
        arr[...] = be.asarray(host)
        f_plus = f()
        host[idx] = orig - H
        arr[...] = be.asarray(host)
        f_minus = f()
        host[idx] = orig
        arr[...] = be.asarray(host)
        num.append((f_plus - f_minus) / (2 * H))
        got.append(ana[idx])
    return rel_error(np.array(num), np.array(got))
