"""Arrays as buffers a transport can read: which library an array is from, and host views or copies of it.

A NumPy array, a CPU torch tensor (``Tensor.numpy()``) and an array-api-strict array (DLPack) share their memory with
a NumPy view, so MPI and gloo reduce them where they lie. A CuPy array or a CUDA tensor has no host view: a transport
either reads its device pointer or reduces a host copy and writes it back (the staged path, UNMEASURED). A tensor on
any other torch device (mps, xpu, ...) is always staged: no MPI reads such memory (UNMEASURED too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..base_errors import ConfigError


def array_library(a: Any) -> str:
    """The array library that holds `a` ("numpy", "torch", "torch:cuda", "torch:DEVICE" for another torch device
    type such as "torch:mps", "cupy" or "strict"); ConfigError otherwise."""
    mod = type(a).__module__.split(".")[0]
    if mod == "numpy":
        return "numpy"
    if mod == "torch":
        return "torch" if a.device.type == "cpu" else f"torch:{a.device.type}"
    if mod == "cupy":
        return "cupy"
    if mod == "array_api_strict":
        return "strict"
    raise ConfigError(f"cannot all-reduce a {type(a).__module__}.{type(a).__name__}: give a NumPy, CuPy, torch or "
                      "array-api-strict array")


def host_view(a: Any) -> np.ndarray | None:
    """A NumPy array sharing `a`'s memory (CPU arrays), or None for a device array."""
    lib = array_library(a)
    if lib == "numpy":
        view = a
    elif lib == "torch":
        view = a.detach().numpy()
    elif lib == "strict":
        view = np.from_dlpack(a)
    else:
        return None
    if not (view.flags.c_contiguous and view.flags.writeable):
        raise ConfigError("all-reduce needs a contiguous, writable array (a slice of the flat gradient buffer)")
    return view




def device_sync(lib: str) -> None:
    """Wait for the device queue of `lib` to drain (CuPy, torch:cuda); nothing for host libraries."""
    if lib == "cupy":
        import cupy

        cupy.cuda.get_current_stream().synchronize()
    elif lib == "torch:cuda":
        import torch

        torch.cuda.current_stream().synchronize()


def host_copy(a: Any, lib: str) -> np.ndarray:
    """A NumPy copy of the device array `a` (after the device has finished writing it)."""
    if lib == "cupy":
        import cupy

        return cupy.asnumpy(a)  # waits for the stream
    return a.detach().cpu().numpy()  # a torch device: a synchronizing copy


def copy_back(a: Any, host: np.ndarray, lib: str) -> None:
    """Copy the host array `host` back into the device array `a`, in place."""
    if lib == "cupy":
        a.set(host)
    else:
        import torch

        a.copy_(torch.from_numpy(host))



def write_back(a: Any, t: Any) -> None:
    """Write the torch tensor `t` (the reduced result) back into `a`, in place."""
    host = t.cpu().numpy()
    view = host_view(a)
    if view is not None:
        view[...] = host
    else:
        copy_back(a, host, array_library(a))

