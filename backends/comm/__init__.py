"""The communicator for data-parallel training: which ranks exist, and summing arrays across them.

    comm = init_distributed("cpu")                # under `mpiexec -n 2 python ...`; engine "auto" picks MPI here
    comm.rank, comm.size, comm.is_root            # 0..size-1; rank 0 alone prints and saves
    comm.allreduce_sum_(model.flat.grad_buffer)   # in place: every rank ends with the sum over ranks
    comm.check_same(fingerprint, "corpus")        # ConfigError on every rank when one rank differs

One module per transport (engine), behind one :class:`Communicator` (``communicator.py``):

* ``mpi`` (``mpi.py``): mpi4py over whatever MPI it was built with (``pip install -e ".[mpi]"`` brings mpi4py and
  the MPICH wheel, with its ``mpiexec``). Host buffers are reduced where they lie (``buffers.py``: a NumPy array,
  the NumPy view of a CPU torch tensor or of an array-api-strict array, no copy). Device buffers go by pointer to a
  CUDA-aware MPI, else through a host copy; a tensor on another torch device (``torch:mps``, ``torch:xpu``, ...)
  always through a host copy. Measured here on CPU only; the device paths are UNMEASURED.
* ``nccl``: for the ``cuda`` (CuPy) and ``torch:cuda`` backends, one process per GPU. CuPy (``nccl.py``) uses
  ``cupy.cuda.nccl.NcclCommunicator`` (its id broadcast over MPI, so it runs under ``mpiexec``); ``torch:cuda``
  (``torch_dist.py``) uses ``torch.distributed`` with the ``nccl`` process group (under ``torchrun``, from its
  RANK / WORLD_SIZE / MASTER_ADDR variables, or under ``mpiexec``, with rank 0's address and a free port sent over
  MPI). UNMEASURED: written from the CuPy and PyTorch documentation, never run (no GPUs here).
* ``gloo`` (``torch_dist.py``): ``torch.distributed`` with the gloo process group on CPU arrays: the same code as
  the torch NCCL path, which lets the tests exercise it without a GPU (and gives a run without an MPI, under
  ``torchrun``).

``auto`` is ``nccl`` for the GPU backends and ``mpi`` otherwise.

Failures end the job instead of hanging it. An exception that reaches the top of a rank prints its line and calls
:meth:`Communicator.abort` (the launcher then kills every rank: MPICH's ``mpiexec`` does). A rank that exits while
the others still wait in a collective (a CLI that caught an error and returned its exit code) is caught at exit: it
waits ``exit_timeout`` seconds for the others to exit too, then aborts the job. Timeouts on collectives: MPI itself
has none, so ``timeout=`` makes the MPI transport wait on non-blocking operations with a deadline (and abort the
job when it passes); ``torch.distributed`` takes the timeout natively (its NCCL watchdog aborts the process);
CuPy's raw NCCL has none (a rank that dies still aborts the job through MPI).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import sys
from typing import Any

import numpy as np

from ..base_errors import ConfigError, LLMError
from .communicator import Communicator, Request, one_line, say
from .mpi import LAUNCHER_ENV, MPI_INSTALL_HINT, MPICommunicator, mpi_world
from .nccl import CupyNCCLCommunicator
from .torch_dist import TorchCommunicator

__all__ = ["Communicator", "Request", "init_distributed", "current", "fingerprint", "LAUNCHER_ENV",
           "MPI_INSTALL_HINT"]

ENGINES = ("auto", "mpi", "nccl", "gloo")

_CURRENT: "Communicator | None" = None


def fingerprint(obj: Any) -> str:
    """SHA-256 (hex) of a JSON rendering of `obj` (keys sorted; NumPy arrays and scalars as lists and numbers)."""

    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return {"dtype": str(o.dtype), "shape": list(o.shape), "data": o.tolist()}
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        if isinstance(o, bytes):
            return hashlib.sha256(o).hexdigest()
        to_dict = getattr(o, "to_dict", None)
        if callable(to_dict):
            return to_dict()
        raise TypeError(f"cannot fingerprint a {type(o).__name__}")

    text = json.dumps(obj, sort_keys=True, default=default, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _backend_name(backend: Any) -> str:
    name = getattr(backend, "name", backend)
    from .. import BACKEND_ALIASES

    text = str(name).strip().lower()
    key = BACKEND_ALIASES.get(text)
    if key is None and text.startswith("torch:") and text[6:]:
        key = text  # another torch device (torch:mps, torch:xpu, ...): its buffers are reduced through host copies
        if key.startswith("torch:cuda:"):
            raise ConfigError(f"backend {name!r} names one GPU, but each rank takes its own (local rank mod the GPU "
                              "count): use torch:cuda")
    if key is None:
        raise ConfigError(f"unknown backend {name!r}: choose one of cpu, cuda, torch, torch:cuda, strict, or "
                          "torch:DEVICE")
    if key == "auto":
        raise ConfigError('say which backend the ranks use ("cpu", "cuda", ...): "auto" could differ between ranks')
    return key


def _select_gpu(key: str, local_rank: int, backend: Any) -> None:
    """One GPU per process: local rank r takes GPU r (mod the count). UNMEASURED."""
    if key == "cupy":
        import cupy

        index = local_rank % cupy.cuda.runtime.getDeviceCount()
        cupy.cuda.Device(index).use()
        dev = getattr(backend, "device", None)
        if dev is not None and getattr(dev, "id", index) != index:
            raise ConfigError(f"the cuda backend was built on GPU {dev.id} before init_distributed chose GPU {index} "
                              "for this rank: call init_distributed before get_backend")
    elif key == "torch:cuda":
        import torch

        torch.cuda.set_device(local_rank % torch.cuda.device_count())


def _install_hooks(comm: Communicator) -> None:
    previous = sys.excepthook

    def excepthook(kind: type, exc: BaseException, tb: Any) -> None:
        if isinstance(exc, LLMError) or issubclass(kind, KeyboardInterrupt):
            say(comm, one_line(exc) if not isinstance(exc, LLMError) else str(exc))
        else:
            previous(kind, exc, tb)
            say(comm, f"{one_line(exc)} (traceback above): ending the job")
        comm.abort(130 if issubclass(kind, KeyboardInterrupt) else 1)

    sys.excepthook = excepthook
    atexit.register(comm.close)  # runs before mpi4py's MPI_Finalize (registered at the C level)


def init_distributed(backend: Any = "cpu", engine: str = "auto", *, timeout: float | None = None,
                     exit_timeout: float = 60.0, allow_singleton: bool = False,
                     abort_on_error: bool = True) -> Communicator:
    """Join the job this process was launched into; returns its :class:`Communicator` (the same one if called again).

    `backend`: the backend's name ("cpu", "cuda", "torch", "torch:cuda", "strict") or a Backend. For the GPU
    backends, call this before ``get_backend``: it gives each process its own GPU (local rank mod GPU count).
    `engine`: "auto" (nccl on GPU backends, else mpi), "mpi", "nccl" or "gloo" (torch.distributed on CPU).
    `timeout`: seconds any collective may wait before the job is ended (None: wait forever on MPI; PyTorch's
    default on torch.distributed). `exit_timeout`: seconds a rank that exits waits for the others before ending
    the job. `allow_singleton`: accept a process no launcher started (a job of one); otherwise that is an error
    naming ``mpiexec``. `abort_on_error`: an uncaught exception on any rank ends every rank (an excepthook).

    Raises BackendUnavailableError (mpi4py / NCCL missing: names the install) or ConfigError (no launcher, or a
    launcher of another MPI than mpi4py's).
    """
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    key = _backend_name(backend)
    engine = _check_engine(engine, key, timeout, exit_timeout)
    comm = _connect(engine, key, backend, timeout, exit_timeout, allow_singleton)
    if abort_on_error:
        _install_hooks(comm)
    _CURRENT = comm
    return comm


def _check_engine(engine: str, key: str, timeout: float | None, exit_timeout: float) -> str:
    """The engine to use ("auto" resolved) after checking it fits the backend and the timeouts are valid."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown distributed engine {engine!r}: choose one of {', '.join(ENGINES)}")
    for name, value in (("timeout", timeout), ("exit_timeout", exit_timeout)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    gpu = key in ("cupy", "torch:cuda")
    if engine == "auto":
        engine = "nccl" if gpu else "mpi"
    if engine == "nccl" and not gpu:
        raise ConfigError(f"the nccl engine runs on the GPU backends (cuda, torch:cuda), not {key}: use mpi")
    if engine == "gloo" and key in ("cupy", "torch:cuda"):
        raise ConfigError(f"the gloo engine reduces CPU arrays; backend {key} is on a GPU: use nccl or mpi")
    return engine


def _connect(engine: str, key: str, backend: Any, timeout: float | None, exit_timeout: float,
             allow_singleton: bool) -> Communicator:
    """Join the job through the transport of `engine`; on GPU backends each process also takes its own GPU."""
    if engine == "mpi":
        MPI, world = mpi_world(allow_singleton)
        comm: Communicator = MPICommunicator(MPI, world, timeout, exit_timeout)
        if key in ("cupy", "torch:cuda"):
            _select_gpu(key, comm.local_rank, backend)
        return comm
    if engine == "nccl" and key == "cupy":
        MPI, world = mpi_world(allow_singleton)
        local = world.Split_type(MPI.COMM_TYPE_SHARED)
        _select_gpu(key, local.Get_rank(), backend)  # before the NCCL communicator binds to the current GPU
        local.Free()
        return CupyNCCLCommunicator(MPI, world, timeout, exit_timeout)
    # torch.distributed: nccl on torch:cuda, gloo on CPU
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        mpi_world(allow_singleton)  # fail early, with the launcher message, before touching torch
    return TorchCommunicator(engine, timeout, exit_timeout, allow_singleton)


def current() -> Communicator | None:
    """The communicator :func:`init_distributed` made in this process, or None."""
    return _CURRENT
