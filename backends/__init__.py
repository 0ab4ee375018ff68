"""Choosing the array library and device.

``get_backend(name, dtype)`` returns a :class:`Backend`: the array-api-compat namespace ``xp`` that the layers
compute with, the device arrays live on, the floating dtype, and the few host <-> device conversions the training
loop needs. Everything library-specific stays in this package; ``llm/`` only ever sees ``xp``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base_errors import BackendUnavailableError, ConfigError

from .ops import index_add, index_add_onehot

__all__ = [
    "Backend",
    "get_backend",
    "available_backends",
    "BACKEND_ALIASES",
    "index_add",
    "index_add_onehot",
    "LOW_PRECISION_BACKENDS",
    "has_dtype",
    "low_precision_dtype",
]

# User-facing names -> canonical backend names.
BACKEND_ALIASES = {
    "cpu": "numpy",
    "numpy": "numpy",
    "cuda": "cupy",
    "cupy": "cupy",
    "gpu": "cupy",
    "strict": "strict",
    "array_api_strict": "strict",
    "torch": "torch",
    "torch:cpu": "torch",
    "torch:cuda": "torch:cuda",
    "auto": "auto",
}

_DTYPES = ("float32", "float64")  # what parameters (and float32 master weights) may be stored in
# The compute dtypes of mixed precision (llm.training.precision), and the backends whose library has each. NumPy's
# float16 has no BLAS (a matmul ~900x slower than float32); NumPy has no bfloat16 (ml_dtypes adds one, ~10x slower
# than float32 in a matmul: not adopted); the array API standard, and so array-api-strict, has neither.
LOW_PRECISION_BACKENDS = {"float16": ("numpy", "cupy", "torch", "torch:cuda"), "bfloat16": ("torch", "torch:cuda")}


def has_dtype(xp: Any, name: str) -> bool:
    """Whether the namespace `xp` has the floating dtype called `name` ("float16", "bfloat16", ...)."""
    return getattr(xp, name, None) is not None


def low_precision_dtype(backend: "Backend", name: str) -> Any:
    """The low-precision dtype `name` ("float16" or "bfloat16") of `backend`'s namespace.

    ConfigError (param="precision") for another name, or where the backend's library lacks the dtype, naming the
    backends that have it.
    """
    have = LOW_PRECISION_BACKENDS.get(name)
    if have is None:
        raise ConfigError(f"unknown low-precision dtype {name!r}: choose float16 or bfloat16", param="precision")
    if backend.name not in have or not has_dtype(backend.xp, name):
        raise ConfigError(f"{name} is not available on backend {backend.name!r}: use one of {', '.join(have)}",
                          param="precision")
    return getattr(backend.xp, name)


@dataclass(frozen=True)
class Backend:
    """One array library on one device, with one floating dtype for parameters and activations."""

    name: str  # canonical: numpy, cupy, torch, torch:cuda, strict
    xp: Any  # the array-api-compat namespace
    device: Any
    dtype: Any  # an xp floating dtype (xp.float32 or xp.float64)
    dtype_name: str = "float32"
    _sync: Any = field(default=None, repr=False, compare=False)
    _to_host: Any = field(default=None, repr=False, compare=False)
    _from_host: Any = field(default=None, repr=False, compare=False)  # a faster host -> device copy, if any

    # -- host -> device ---------------------------------------------------------------------------------------
    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Move a host array (or list, or an array of this namespace) onto this backend's device.

        Like ``xp.asarray`` it may share memory with `x` on CPU backends when no conversion is needed.

        Floating data takes the backend dtype, integers become int64, booleans stay bool, unless `dtype` is given.
        """
        xp = self.xp
        if dtype is None:
            kind = _dtype_kind(x)
            dtype = self.dtype if kind == "f" else xp.int64 if kind in "iu" else xp.bool if kind == "b" else None
        if isinstance(x, (list, tuple, int, float, bool, np.generic, np.ndarray)):
            x = np.asarray(x)
            if self._from_host is not None:
                return self._from_host(x, dtype)
        return xp.asarray(x, dtype=dtype, device=self.device)

    def normal(self, rng: np.random.Generator, shape: tuple[int, ...], std: float) -> Any:
        """Draw N(0, std^2) on the host in float64 and move it here: one seed, the same weights on every backend.

        A shape too large to allocate is a MemoryError whatever the cause (NumPy says ValueError past its maximum
        dimension), so callers have one thing to catch.
        """
        try:
            host = rng.standard_normal(shape)
        except (ValueError, OverflowError) as exc:
            raise MemoryError(f"cannot allocate an array of shape {tuple(shape)} ({exc})") from None
        return self.asarray(host * std)

    @staticmethod
    def rng(seed: int | None) -> np.random.Generator:
        """The host random generator every random choice of the library is drawn from."""
        return np.random.default_rng(seed)

    # -- device -> host ---------------------------------------------------------------------------------------
    def to_numpy(self, a: Any) -> np.ndarray:
        """Copy an array of this backend to a NumPy array on the host."""
        return self._to_host(a)

    def synchronize(self) -> None:
        """Wait for queued device work to finish (a no-op on CPU backends); call before reading a timer."""
        if self._sync is not None:
            self._sync()

    def __str__(self) -> str:
        return f"{self.name} ({self.dtype_name}, device {self.device})"


def _dtype_kind(x: Any) -> str:
    dt = getattr(x, "dtype", None)
    if dt is None:
        return np.asarray(x).dtype.kind
    try:
        return np.dtype(dt).kind
    except TypeError:
        s = str(dt)
        return "f" if "float" in s else "b" if "bool" in s else "i" if "int" in s else "?"


def _tune_allocator() -> None:
    """Keep glibc from handing freed activation buffers back to the OS every step (see shared PERF-NOTES).

    Every array-API op allocates; without this, each training step page-faults its working set in again.
    """
    if getattr(_tune_allocator, "done", False):
        return
    _tune_allocator.done = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _numpy_to_host(a: Any) -> np.ndarray:
    return np.asarray(a)


def _dlpack_to_host(a: Any) -> np.ndarray:
    return np.array(np.from_dlpack(a), copy=True)


def _make_numpy(dtype: str) -> Backend:
    import array_api_compat.numpy as xp

    _tune_allocator()
    return Backend("numpy", xp, "cpu", getattr(xp, dtype), dtype, None, _numpy_to_host)


def _make_strict(dtype: str) -> Backend:
    try:
        import array_api_strict as xp
    except ImportError:
        raise BackendUnavailableError(
            'backend "strict" needs array-api-strict: pip install array-api-strict (or pip install -e ".[test]")'
        ) from None
    _tune_allocator()
    dev = xp.asarray(0.0).device
    return Backend("strict", xp, dev, getattr(xp, dtype), dtype, None, _dlpack_to_host)


def _make_cupy(dtype: str) -> Backend:
    try:
        import cupy
        import array_api_compat.cupy as xp
    except ImportError:
        raise BackendUnavailableError(
            'backend "cuda" needs CuPy: pip install -e ".[cuda]" (CUDA 12 driver) or ".[cuda13]" (CUDA 13 driver)'
        ) from None
    except Exception as exc:  # a broken CuPy install (mismatched CUDA libraries) fails at import
        raise BackendUnavailableError(f'backend "cuda": CuPy failed to import ({_one_line(exc)}); reinstall the '
                                      "cupy-cuda12x or cupy-cuda13x wheel that matches your driver") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise BackendUnavailableError(f'backend "cuda": no CUDA device visible ({_one_line(exc)}); '
                                      "check nvidia-smi, or use backend cpu", param="backend") from None
    if count < 1:
        raise BackendUnavailableError('backend "cuda": no CUDA device visible; check nvidia-smi, or use backend cpu',
                                      param="backend")
    try:
        float(cupy.arange(4, dtype=cupy.float32).sum())  # compiles a kernel: catches missing NVRTC / driver issues
    except Exception as exc:
        raise BackendUnavailableError(f'backend "cuda": CuPy cannot run on this GPU ({_one_line(exc)}); '
                                      "install the cupy wheel matching your CUDA driver") from None

    def to_host(a: Any) -> np.ndarray:
        return cupy.asnumpy(a)

    def sync() -> None:
        cupy.cuda.get_current_stream().synchronize()

    return Backend("cupy", xp, cupy.cuda.Device(), getattr(xp, dtype), dtype, sync, to_host)


def _torch_device(torch: Any, spec: str) -> Any:
    """The ``torch.device`` named by `spec` ("cpu", "cuda", "cuda:1", "mps", "xpu", ...), once PyTorch says it is there.

    PyTorch is asked, not guessed at: the name must parse, the device type's own module (``torch.cuda``,
    ``torch.mps``, ``torch.xpu``, ...) must say it is available when it has ``is_available``, an index must be below
    its ``device_count``, and one small tensor must be creatable on it.
    """
    what = f'backend "torch:{spec}"'
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise BackendUnavailableError(f"{what}: PyTorch does not know the device {spec!r} ({_one_line(exc)}); use a "
                                      "torch device string such as cpu, cuda, cuda:1, mps or xpu", param="backend") from None
    if dev.type == "meta":
        raise BackendUnavailableError(f"{what}: the meta device holds shapes, not numbers, so nothing can be trained or "
                                      "read there; use a real device", param="backend")
    module = getattr(torch, dev.type, None)
    available = getattr(module, "is_available", None)
    if dev.type != "cpu" and callable(available) and not available():
        raise BackendUnavailableError(f"{what}: PyTorch {torch.__version__} sees no {dev.type} device here (or was "
                                      f"built without {dev.type} support); use backend torch (CPU)", param="backend")
    count = getattr(module, "device_count", None)
    if dev.index is not None and callable(count) and dev.index >= count():
        raise BackendUnavailableError(f"{what}: PyTorch sees {count()} {dev.type} device(s), so index {dev.index} "
                                      "does not exist; count from 0", param="backend")
    try:
        torch.zeros(1, device=dev)
    except Exception as exc:  # a device type PyTorch parses but cannot reach (no driver, wrong build)
        raise BackendUnavailableError(f"{what}: PyTorch cannot create a tensor there ({_one_line(exc)}); check its "
                                      "install for that device, or use backend torch (CPU)", param="backend") from None
    return dev


def _make_torch(dtype: str, spec: str = "cpu") -> Backend:
    try:
        import torch
        import array_api_compat.torch as xp
    except ImportError:
        raise BackendUnavailableError(
            'backend "torch" needs PyTorch: pip install -e ".[torch]" (CPU only: pip install torch==2.13.0)'
        ) from None
    if spec == "cuda" and not torch.cuda.is_available():  # the common case's message names the fix
        raise BackendUnavailableError('backend "torch:cuda": no CUDA device visible to PyTorch; use backend torch',
                                      param="backend")
    dev = _torch_device(torch, spec)
    _tune_allocator()
    cuda = dev.type == "cuda"

    def to_host(a: Any) -> np.ndarray:
        return a.detach().cpu().numpy().copy()

    def from_host(a: np.ndarray, dt: Any) -> Any:
        # Through pinned memory, without blocking: a plain copy from pageable memory synchronizes the stream, so
        # every batch sent would wait for the previous step to finish. Pinned blocks are reused by PyTorch's
        # caching host allocator only after the copy that read them has completed.
        t = torch.from_numpy(np.ascontiguousarray(a))
        if dt is not None and t.dtype != dt:
            t = t.to(dt)
        return t.pin_memory().to(dev, non_blocking=True)

    # Waiting for queued work: the device type's own synchronize (torch.cuda, torch.mps, torch.xpu ...), if any.
    sync = None if dev.type == "cpu" else getattr(getattr(torch, dev.type, None), "synchronize", None)
    # The canonical name: "torch" on the CPU, "torch:cuda" on any CUDA (or ROCm) GPU, else "torch:<type>".
    name = "torch" if dev.type == "cpu" else f"torch:{dev.type}"
    return Backend(name, xp, dev, getattr(xp, dtype), dtype, sync, to_host, from_host if cuda else None)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


@functools.lru_cache(maxsize=None)
def get_backend(name: str = "auto", dtype: str = "float32") -> Backend:
    """Return the backend called `name` (cpu/numpy, cuda/cupy, strict, torch, torch:cuda, auto) in `dtype`.

    ``torch:DEVICE`` takes any device string PyTorch accepts (``torch:mps``, ``torch:xpu``, ``torch:cuda:1``);
    PyTorch is asked whether that device is there (see :func:`_torch_device`).

    Raises ConfigError for an unknown name or dtype, BackendUnavailableError when the library or device is missing.
    """
    text = str(name).strip().lower()
    key = BACKEND_ALIASES.get(text)
    if key is None and text.startswith("torch:") and text[6:]:
        key = text  # any other torch device string: torch:mps, torch:xpu, torch:cuda:1 ... (PyTorch is asked)
    if key is None:
        raise ConfigError(f"unknown backend {name!r}: choose one of cpu, cuda, auto, torch, torch:cuda, strict, or "
                          "torch:DEVICE for any device PyTorch has (torch:mps, torch:xpu, torch:cuda:1, ...)")
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: choose float32 or float64")
    if key == "numpy":
        return _make_numpy(dtype)
    if key == "strict":
        return _make_strict(dtype)
    if key == "cupy":
        return _make_cupy(dtype)
    if key == "torch" or key.startswith("torch:"):
        return _make_torch(dtype, "cpu" if key == "torch" else key[len("torch:"):])
    try:  # auto: the GPU when one is usable, else NumPy
        return _make_cupy(dtype)
    except BackendUnavailableError:
        return _make_numpy(dtype)


def available_backends(dtype: str = "float32") -> dict[str, str | None]:
    """Map each canonical backend name to None when usable here, else to the reason it is not."""
    out: dict[str, str | None] = {}
    for key in ("numpy", "strict", "torch", "cupy", "torch:cuda"):
        try:
            get_backend(key, dtype)
            out[key] = None
        except BackendUnavailableError as exc:
            out[key] = str(exc)
    return out
