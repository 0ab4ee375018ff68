import numpy as np
import pytest

import backends
from backends import get_backend, index_add, index_add_onehot
from backends.ops import add_at_columns
from llm.errors import BackendUnavailableError, ConfigError, LLMError
from tests.conftest import require_backend


def test_aliases_resolve_to_canonical_names():
    assert get_backend("cpu").name == "numpy"
    assert get_backend("numpy").name == "numpy"
    assert get_backend("auto").name in ("numpy", "cupy")


def test_unknown_backend_and_dtype_are_config_errors():
    with pytest.raises(ConfigError, match="unknown backend"):
        get_backend("tpu")
    with pytest.raises(ConfigError, match="float32 or float64"):
        get_backend("cpu", "float16")


def test_missing_library_names_the_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "cupy" or name.startswith("cupy.") or name == "torch":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(BackendUnavailableError, match=r'pip install -e "\.\[cuda\]"'):
        backends._make_cupy("float32")
    with pytest.raises(BackendUnavailableError, match=r"torch"):
        backends._make_torch("float32", "cpu")
    assert issubclass(BackendUnavailableError, LLMError)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_asarray_round_trip_and_dtypes(backend_name, dtype):
    be = require_backend(backend_name, dtype)
    host = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    a = be.asarray(host)
    assert a.dtype == be.dtype
    np.testing.assert_allclose(be.to_numpy(a), host, rtol=1e-6 if dtype == "float32" else 0)
    ids = be.asarray(np.array([[1, 2, 3]]))
    assert ids.dtype == be.xp.int64
    be.synchronize()


def test_same_seed_same_initial_draws_on_every_backend(backend_name):
    be = require_backend(backend_name, "float64")
    ref = get_backend("numpy", "float64")
    a = be.to_numpy(be.normal(be.rng(7), (5, 3), 0.02))
    b = ref.to_numpy(ref.normal(ref.rng(7), (5, 3), 0.02))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_index_add_accumulates_repeated_ids(backend_name, dtype):
    be = require_backend(backend_name, dtype)
    rng = np.random.default_rng(0)
    table = rng.standard_normal((6, 4))
    ids = np.array([1, 3, 1, 1, 5, 3, 0])  # 1 three times, 3 twice
    vals = rng.standard_normal((7, 4))
    expected = table.copy()
    for i, row in zip(ids, vals):
        expected[i] += row
    tol = 1e-6 if dtype == "float32" else 1e-14
    for fn in (index_add, index_add_onehot):
        target = be.asarray(table.copy())  # asarray may share memory with a host array on CPU
        fn(target, be.asarray(ids), be.asarray(vals))
        np.testing.assert_allclose(be.to_numpy(target), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_add_at_columns_touches_one_entry_per_row(backend_name, dtype):
    be = require_backend(backend_name, dtype)
    rng = np.random.default_rng(1)
    table = rng.standard_normal((5, 7))
    cols = np.array([3, 3, 0, 6, 3])  # repeated columns in different rows
    vals = rng.standard_normal(5)
    expected = table.copy()
    expected[np.arange(5), cols] += vals
    target = be.asarray(table.copy())
    add_at_columns(target, be.asarray(cols), be.asarray(vals))
    tol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(be.to_numpy(target), expected, rtol=tol, atol=tol)
