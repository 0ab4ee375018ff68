"""Shared fixtures: every test that takes `backend_name` runs on each backend, skipped with the reason if missing."""

from __future__ import annotations

import os

# One BLAS / OpenMP thread per test process (and for the commands the tests start, which inherit it): the tests'
# arrays are small, where a second thread costs more in hand-offs than it gains (the suite ran 25% faster so on
# a 2-core machine). Set before NumPy or PyTorch is imported; a value already in the environment is kept.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from backends import available_backends, get_backend

ALL_BACKENDS = ("numpy", "strict", "torch", "cupy", "torch:cuda")
OTHER_BACKENDS = ALL_BACKENDS[1:]  # compared against NumPy by the parity tests


def _availability() -> dict[str, str | None]:
    if not hasattr(_availability, "cache"):
        _availability.cache = available_backends()
    return _availability.cache


def require_backend(name: str, dtype: str = "float32"):
    """The backend, or a pytest skip that prints why it is missing (and a failure if CI said it must exist)."""
    reason = _availability().get(name)
    if reason is not None:
        required = [b.strip() for b in os.environ.get("ARRAYGPT_REQUIRE_BACKENDS", "").split(",") if b.strip()]
        if name in required:
            pytest.fail(f"backend {name} is required here (ARRAYGPT_REQUIRE_BACKENDS) but unavailable: {reason}")
        pytest.skip(f"backend {name} unavailable: {reason}")
    return get_backend(name, dtype)


@pytest.fixture(params=ALL_BACKENDS)
def backend_name(request) -> str:
    require_backend(request.param)
    return request.param


@pytest.fixture(params=OTHER_BACKENDS)
def other_backend_name(request) -> str:
    require_backend(request.param)
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
