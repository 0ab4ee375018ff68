"""The communicator for data-parallel training: which ranks exist, and summing arrays across them.

    comm = init_distributed("cpu")                # under `mpiexec -n 2 python ...`; engine "auto" picks MPI here
    comm.rank, comm.size, comm.is_root            # 0..size-1; rank 0 alone prints and saves
    comm.allreduce_sum_(model.flat.grad_buffer)   # in place: every rank ends with the sum over ranks
    comm.check_same(fingerprint, "corpus")        # ConfigError on every rank when one rank differs

Engines:

* ``mpi``: mpi4py over whatever MPI it was built with (``pip install -e ".[mpi]"`` brings mpi4py and the MPICH
  wheel, with its ``mpiexec``). Host buffers are reduced where they lie: a NumPy array, the NumPy view of a CPU
  torch tensor (``Tensor.numpy()``) or of an array-api-strict array (DLPack) is handed to MPI with no copy. A
  CuPy array or CUDA tensor goes to MPI by its device pointer when the MPI is CUDA-aware (``MPIX_Query_cuda_support``
  or the MPI 4.1 memory kinds say ``cuda``; ``ARRAYGPT_MPI_CUDA_AWARE=0|1`` overrides), else through a host copy.
  Measured here on CPU only; the CUDA-aware and staged device paths are UNMEASURED (no GPU with an MPI was at hand).
* ``nccl``: for the ``cuda`` (CuPy) and ``torch:cuda`` backends, one process per GPU. CuPy uses
  ``cupy.cuda.nccl.NcclCommunicator`` (its id broadcast over MPI, so it runs under ``mpiexec``); ``torch:cuda``
  uses ``torch.distributed`` with the ``nccl`` process group (under ``torchrun``, from its RANK / WORLD_SIZE /
  MASTER_ADDR variables, or under ``mpiexec``, with rank 0's address and a free port sent over MPI).
  UNMEASURED: written from the CuPy and PyTorch documentation, never run (no GPUs here).
* ``gloo``: ``torch.distributed`` with the gloo process group on CPU arrays: the same code as the torch NCCL path,
  which lets the tests exercise it without a GPU (and gives a run without an MPI, under ``torchrun``).

``auto`` is ``nccl`` for the GPU backends and ``mpi`` otherwise.

Failures end the job instead of hanging it. An exception that reaches the top of a rank prints its line and calls
:meth:`Communicator.abort` (the launcher then kills every rank: MPICH's ``mpiexec`` does). A rank that exits while
the others still wait in a collective (a CLI that caught an error and returned its exit code) is caught at exit: it
waits ``exit_timeout`` seconds for the others to exit too, then aborts the job. Timeouts on collectives: MPI itself
has none, so ``timeout=`` makes this module wait on non-blocking operations with a deadline (and abort the job when
it passes); ``torch.distributed`` takes the timeout natively (its NCCL watchdog aborts the process); CuPy's raw NCCL
has none (a rank that dies still aborts the job through MPI).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import socket
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import BackendUnavailableError, ConfigError, LLMError

__all__ = ["Communicator", "init_distributed", "current", "fingerprint", "LAUNCHER_ENV", "MPI_INSTALL_HINT"]

MPI_INSTALL_HINT = 'pip install -e ".[mpi]" (mpi4py and the MPICH wheel, whose mpiexec lands next to python)'
ENGINES = ("auto", "mpi", "nccl", "gloo")
# Variables a launcher sets in every rank's environment: (variable that holds the world size, launcher).
LAUNCHER_ENV = (("PMI_SIZE", "MPICH / Intel MPI mpiexec"), ("OMPI_COMM_WORLD_SIZE", "Open MPI mpirun"),
                ("PMIX_SIZE", "a PMIx launcher"), ("MV2_COMM_WORLD_SIZE", "MVAPICH mpirun"),
                ("WORLD_SIZE", "torchrun"))

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


def _launcher_size() -> tuple[int | None, str | None]:
    """(world size, launcher) from the environment a launcher gives every rank; (None, None) when none is set."""
    for var, who in LAUNCHER_ENV:
        value = os.environ.get(var)
        if value is not None:
            try:
                return int(value), who
            except ValueError:
                continue
    return None, None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _launch_hint() -> str:
    return ("start one process per rank with an MPI launcher, e.g. mpiexec -n 2 python examples/train.py "
            "--distributed ... (-n 1 is allowed)")


def _import_mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        if getattr(exc, "name", None) in ("mpi4py", "mpi4py.MPI") and "lib" not in str(exc):
            raise BackendUnavailableError(f"distributed training needs mpi4py and an MPI: {MPI_INSTALL_HINT}") \
                from None
        raise BackendUnavailableError(f"mpi4py is installed but cannot load its MPI library ({_one_line(exc)}): "
                                      f"{MPI_INSTALL_HINT}") from None
    except Exception as exc:  # an MPI that fails to initialize (MPI_Init errors surface here)
        raise BackendUnavailableError(f"MPI failed to start ({_one_line(exc)}); {_launch_hint()}") from None
    return MPI


def _mpi_world(allow_singleton: bool) -> Any:
    """COMM_WORLD, after checking that a launcher started this process and that MPI sees the ranks it started."""
    env_size, who = _launcher_size()
    MPI = _import_mpi()
    world = MPI.COMM_WORLD
    if world.Get_size() == 1:
        if env_size is not None and env_size > 1:
            lib = MPI.Get_library_version().strip().splitlines()[0]
            launcher = os.path.join(os.path.dirname(sys.executable), "mpiexec")
            raise ConfigError(f"started by {who} with {env_size} processes, but mpi4py's MPI ({lib}) sees only "
                              f"this one: the launcher belongs to another MPI; use the mpiexec of mpi4py's MPI "
                              f"({launcher} for the MPICH wheel)")
        if env_size is None and not allow_singleton:
            raise ConfigError(f"distributed training was asked for, but no MPI launcher started this process: "
                              f"{_launch_hint()}")
    return MPI, world


def _cuda_aware_mpi(MPI: Any) -> bool:
    """Can MPI read and write CUDA device memory? ARRAYGPT_MPI_CUDA_AWARE=0|1 overrides what the MPI says."""
    forced = os.environ.get("ARRAYGPT_MPI_CUDA_AWARE")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes", "on")
    try:  # MPI 4.1 memory allocation kinds ("mpi,system,cuda:...")
        kinds = MPI.COMM_WORLD.Get_info().Get("mpi_memory_alloc_kinds") or ""
        if "cuda" in kinds:
            return True
    except Exception:
        pass
    try:  # MPICH and Open MPI extension
        import ctypes

        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "libmpi" in line and "/" in line}
        for path in libs:
            query = getattr(ctypes.CDLL(path), "MPIX_Query_cuda_support", None)
            if query is not None and query() == 1:
                return True
    except Exception:
        pass
    return False


# ----------------------------------------------------------------------------------------------- array <-> buffers
def _library(a: Any) -> str:
    mod = type(a).__module__.split(".")[0]
    if mod == "numpy":
        return "numpy"
    if mod == "torch":
        return "torch:cuda" if a.device.type == "cuda" else "torch"
    if mod == "cupy":
        return "cupy"
    if mod == "array_api_strict":
        return "strict"
    raise ConfigError(f"cannot all-reduce a {type(a).__module__}.{type(a).__name__}: give a NumPy, CuPy, torch or "
                      "array-api-strict array")


def _host_view(a: Any) -> np.ndarray | None:
    """A NumPy array sharing `a`'s memory (CPU arrays), or None for a device array."""
    lib = _library(a)
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


class Request:
    """A reduction in flight; :meth:`wait` finishes it (and copies a staged result back)."""

    def __init__(self, comm: "Communicator", handle: Any = None, finish: Any = None, what: str = "an all-reduce"):
        self._comm, self._handle, self._finish, self._what = comm, handle, finish, what

    def wait(self) -> None:
        if self._handle is not None:
            self._comm._wait(self._handle, self._what)
            self._handle = None
        if self._finish is not None:
            finish, self._finish = self._finish, None
            finish()


# ----------------------------------------------------------------------------------------------------- the base
class Communicator:
    """The ranks of one job and the sums across them. Built by :func:`init_distributed`.

    ``rank``, ``size``, ``local_rank`` (the rank among this node's processes), ``is_root`` (rank 0),
    ``engine`` ("mpi", "nccl" or "gloo"), ``timeout`` (seconds a collective may wait, or None).
    """

    engine = "none"

    def __init__(self, rank: int, size: int, local_rank: int, timeout: float | None, exit_timeout: float) -> None:
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.timeout, self.exit_timeout = timeout, exit_timeout
        self._closed = False
        self._aborting = False

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Communicator({self.engine}, rank {self.rank} of {self.size})"

    # -- the operations every engine gives -------------------------------------------------------------------
    def allreduce_sum_(self, a: Any) -> Any:
        """Sum `a` over the ranks, in place (every rank ends with the sum); returns `a`. Blocks until done on the
        host for MPI and gloo; on NCCL the reduction is queued on the device stream, like any other operation."""
        self.iallreduce_sum_(a).wait()
        return a

    def iallreduce_sum_(self, a: Any) -> Request:
        """Start summing `a` in place; the sum is there after ``.wait()`` on the returned request."""
        raise NotImplementedError

    def allreduce_host(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """Sum a few host numbers over the ranks (float64): returns a new NumPy array."""
        buf = np.array(values, dtype=np.float64, copy=True).reshape(-1)
        self._allreduce_host_(buf)
        return buf

    def any_true(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on any rank (a stop request, a failure to report): a collective."""
        return bool(self.allreduce_host([1.0 if flag else 0.0])[0] > 0)

    def allgather_str(self, text: str) -> list[str]:
        """Every rank's string, in rank order."""
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def _allreduce_host_(self, buf: np.ndarray) -> None:
        raise NotImplementedError

    def _abort_engine(self, code: int) -> None:
        os._exit(code)

    def _exit_barrier(self, seconds: float) -> bool:
        """True when every rank reached this point within `seconds` (they are all leaving together)."""
        return True

    def _wait(self, handle: Any, what: str) -> None:
        handle.wait()

    # -- checks -------------------------------------------------------------------------------------------
    def check_same(self, fingerprint: str | Mapping[str, str], what: str = "the run") -> None:
        """Raise ConfigError on every rank unless every rank passed the same fingerprint.

        `fingerprint` is a string (a hash) or a dict of them (``{"config": ..., "corpus": ...}``): then the error
        names each entry that differs. Every rank must call this at the same point (it is a collective).
        """
        parts = dict(fingerprint) if isinstance(fingerprint, Mapping) else {what: str(fingerprint)}
        mine = json.dumps(parts, sort_keys=True)
        everyone = [json.loads(s) for s in self.allgather_str(mine)]
        differ = []
        for key in sorted({k for d in everyone for k in d}):
            values = [d.get(key, "(missing)") for d in everyone]
            if len(set(values)) > 1:
                odd = [r for r, v in enumerate(values) if v != values[0]]
                shown = ", ".join(f"rank {r} has {values[r][:12]}" for r in odd[:3])
                more = f" and {len(odd) - 3} more ranks" if len(odd) > 3 else ""
                differ.append(f"{key}: rank 0 has {values[0][:12]}, {shown}{more}")
        if differ:
            raise ConfigError(f"ranks disagree on {'; '.join(differ)} (every rank must be started with the same "
                              "flags and see the same files)")

    # -- ending ---------------------------------------------------------------------------------------------
    def abort(self, code: int = 1, grace: float = 2.0) -> None:
        """End the whole job now with exit `code` (never returns).

        Waits up to `grace` seconds for the other ranks to arrive here too (when all of them fail together, as on
        a fingerprint mismatch, each has printed its own line first); then the engine kills every rank.
        """
        self._aborting = True
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        if self.size > 1:
            try:
                self._exit_barrier(grace)
            except Exception:
                pass
        self._abort_engine(code)

    def close(self) -> None:
        """Leave cleanly: waits (up to ``exit_timeout`` s) for every rank to close too, else aborts the job.

        Called at interpreter exit when not called before. A rank that leaves while the others still wait in a
        collective would otherwise leave them waiting forever.
        """
        if self._closed or self._aborting:
            return
        self._closed = True
        if self.size > 1 and not self._exit_barrier(self.exit_timeout):
            _say(self, f"rank {self.rank} is exiting but other ranks did not follow within {self.exit_timeout:g} s "
                       "(still training, or stuck): ending the job")
            self._aborting = True
            self._abort_engine(1)
        self._shutdown()

    def _shutdown(self) -> None:
        pass


def _say(comm: Communicator | None, message: str) -> None:
    tag = f"[rank {comm.rank}/{comm.size}] " if comm is not None and comm.size > 1 else ""
    try:
        print(f"error: {tag}{message}", file=sys.stderr, flush=True)
    except Exception:
        pass


# ------------------------------------------------------------------------------------------------------ MPI
class MPICommunicator(Communicator):
    """mpi4py. Host buffers directly; device buffers by pointer when the MPI is CUDA-aware, else staged."""

    engine = "mpi"

    def __init__(self, MPI: Any, world: Any, timeout: float | None, exit_timeout: float) -> None:
        self.MPI, self.world = MPI, world
        world.Set_errhandler(MPI.ERRORS_RETURN)  # an MPI error becomes an exception (and then an abort), not a hang
        self._coll = world.Dup()  # the application's collectives; world itself only for aborts
        self._exit = world.Dup()  # the exit barrier never matches a collective of the run
        local = world.Split_type(MPI.COMM_TYPE_SHARED)
        super().__init__(world.Get_rank(), world.Get_size(), local.Get_rank(), timeout, exit_timeout)
        self.local_size = local.Get_size()
        local.Free()
        self.cuda_aware = _cuda_aware_mpi(MPI)

    def iallreduce_sum_(self, a: Any) -> Request:
        MPI = self.MPI
        host = _host_view(a)
        if host is not None:
            return Request(self, self._coll.Iallreduce(MPI.IN_PLACE, host, op=MPI.SUM), what="an all-reduce")
        lib = _library(a)
        if self.cuda_aware:  # UNMEASURED: the MPI reads the device buffer; the stream must be idle first
            _device_sync(lib)
            return Request(self, self._coll.Iallreduce(MPI.IN_PLACE, a, op=MPI.SUM), what="an all-reduce")
        staged = _to_host_copy(a, lib)  # UNMEASURED: device -> host, reduce, host -> device
        return Request(self, self._coll.Iallreduce(MPI.IN_PLACE, staged, op=MPI.SUM),
                       finish=lambda: _copy_back(a, staged, lib), what="an all-reduce")

    def _allreduce_host_(self, buf: np.ndarray) -> None:
        self._wait(self._coll.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), "an all-reduce")

    def allgather_str(self, text: str) -> list[str]:
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
        sizes = np.zeros(self.size, dtype=np.int64)
        self._wait(self._coll.Iallgather(np.array([data.size], dtype=np.int64), sizes), "an all-gather")
        out = np.zeros(int(sizes.sum()), dtype=np.uint8)
        self._wait(self._coll.Iallgatherv(data, [out, sizes.tolist()]), "an all-gather")
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        return [out[offsets[r]:offsets[r + 1]].tobytes().decode("utf-8") for r in range(self.size)]

    def barrier(self) -> None:
        self._wait(self._coll.Ibarrier(), "a barrier")

    def _wait(self, req: Any, what: str) -> None:
        if self.timeout is None:
            req.Wait()
            return
        deadline = time.monotonic() + self.timeout
        spins = 0
        while not req.Test():
            spins += 1
            if spins > 1000:  # a long wait: stop burning the core another rank may need
                time.sleep(0.0005)
            if time.monotonic() > deadline:
                _say(self, f"{what} waited more than {self.timeout:g} s (the timeout): another rank died or is stuck; "
                           "ending the job")
                self._aborting = True
                self._abort_engine(1)

    def _exit_barrier(self, seconds: float) -> bool:
        req = self._exit.Ibarrier()
        deadline = time.monotonic() + seconds
        while not req.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def _abort_engine(self, code: int) -> None:
        # MPI_Abort tears the job down at once, and the launcher may not yet have forwarded the error line this
        # rank just printed (seen: 2 runs in 8 lost it): give it a moment first.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        time.sleep(0.5)
        self.world.Abort(code)
        os._exit(code)  # not reached

    def _shutdown(self) -> None:
        for c in (self._coll, self._exit):
            try:
                c.Free()
            except Exception:
                pass


def _device_sync(lib: str) -> None:
    if lib == "cupy":
        import cupy

        cupy.cuda.get_current_stream().synchronize()
    elif lib == "torch:cuda":
        import torch

        torch.cuda.current_stream().synchronize()


def _to_host_copy(a: Any, lib: str) -> np.ndarray:
    if lib == "cupy":
        import cupy

        return cupy.asnumpy(a)  # waits for the stream
    return a.detach().cpu().numpy()  # torch:cuda: a synchronizing copy


def _copy_back(a: Any, host: np.ndarray, lib: str) -> None:
    if lib == "cupy":
        a.set(host)
    else:
        import torch

        a.copy_(torch.from_numpy(host))


# ----------------------------------------------------------------------------------------------- NCCL (CuPy)
class CupyNCCLCommunicator(MPICommunicator):
    """UNMEASURED (no GPU here). Gradients through NCCL on the device; host-side checks and exits through MPI.

    Each reduction is queued on the current stream, in order with the backward pass before it and the optimizer
    after it, so nothing waits on the host. CuPy's raw NCCL offers no timeout.
    """

    engine = "nccl"

    def __init__(self, MPI: Any, world: Any, timeout: float | None, exit_timeout: float) -> None:
        super().__init__(MPI, world, timeout, exit_timeout)
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError:
            raise BackendUnavailableError("the nccl engine on the cuda backend needs CuPy with NCCL "
                                          '(pip install -e ".[cuda]"); or use --distributed-engine mpi') from None
        if not getattr(nccl, "available", True):
            raise BackendUnavailableError("CuPy was built without NCCL: pip install nvidia-nccl-cu12 (or cu13), or "
                                          "use the mpi engine")
        self.cupy, self.nccl = cupy, nccl
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self._coll.bcast(uid, root=0)  # bytes (CuPy >= 14) or a tuple of ints: either pickles
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._types = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}

    def iallreduce_sum_(self, a: Any) -> Request:
        if _library(a) != "cupy":
            return super().iallreduce_sum_(a)
        dtype = self._types.get(str(a.dtype))
        if dtype is None:
            raise ConfigError(f"NCCL all-reduce of dtype {a.dtype}: only float32 and float64 here")
        stream = self.cupy.cuda.get_current_stream()
        self.comm.allReduce(a.data.ptr, a.data.ptr, a.size, dtype, self.nccl.NCCL_SUM, stream.ptr)  # in place
        return Request(self)  # queued on the stream: later work on it runs after the sum

    def _shutdown(self) -> None:
        try:
            self.comm.destroy()
        except Exception:
            pass
        super()._shutdown()

    def _abort_engine(self, code: int) -> None:
        try:
            self.comm.abort()
        except Exception:
            pass
        super()._abort_engine(code)


# ------------------------------------------------------------------------------------- torch.distributed (NCCL, gloo)
class TorchCommunicator(Communicator):
    """``torch.distributed``: the ``nccl`` group for ``torch:cuda`` (UNMEASURED) or ``gloo`` for CPU arrays.

    Started under ``torchrun`` (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or under ``mpiexec`` (rank 0's host
    name and a free port are broadcast over MPI, which then also ends the job on errors). ``timeout`` is passed to
    ``init_process_group`` and applies to every collective (default there: 10 minutes for NCCL, 30 for gloo).
    """

    def __init__(self, group_backend: str, timeout: float | None, exit_timeout: float, allow_singleton: bool,
                 device_index: int | None = None) -> None:
        import datetime

        try:
            import torch
            import torch.distributed as dist
        except ImportError:
            raise BackendUnavailableError('the gloo and nccl engines on torch need PyTorch with torch.distributed: '
                                          'pip install -e ".[torch]"') from None
        if not dist.is_available():
            raise BackendUnavailableError("this PyTorch build has no torch.distributed")
        if group_backend == "nccl" and not dist.is_nccl_available():
            raise BackendUnavailableError("this PyTorch build has no NCCL: use the mpi engine")
        if group_backend == "gloo" and not dist.is_gloo_available():
            raise BackendUnavailableError("this PyTorch build has no gloo: use the mpi engine")
        self.engine = group_backend
        self.torch, self.dist = torch, dist
        self.mpi: MPICommunicator | None = None
        env = os.environ
        if "RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env:  # torchrun
            rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
            local = int(env.get("LOCAL_RANK", rank))
            init = "env://"
        else:  # mpiexec: MPI gives ranks, the address and the port
            MPI, world = _mpi_world(allow_singleton)
            self.mpi = MPICommunicator(MPI, world, timeout, exit_timeout)
            rank, size, local = self.mpi.rank, self.mpi.size, self.mpi.local_rank
            addr = None
            if rank == 0:
                with socket.socket() as s:
                    s.bind(("", 0))
                    addr = (socket.gethostname(), s.getsockname()[1])
            addr = self.mpi._coll.bcast(addr, root=0)
            init = f"tcp://{addr[0]}:{addr[1]}"
        super().__init__(rank, size, local, timeout, exit_timeout)
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = datetime.timedelta(seconds=float(timeout))
        if group_backend == "nccl":
            count = torch.cuda.device_count()
            self.device = torch.device("cuda", local % count if device_index is None else device_index)
            torch.cuda.set_device(self.device)
            import inspect

            if "device_id" in inspect.signature(dist.init_process_group).parameters:
                kwargs["device_id"] = self.device  # binds the group to this GPU (PyTorch >= 2.3)
        else:
            self.device = torch.device("cpu")
        dist.init_process_group(group_backend, init_method=init, world_size=size, rank=rank, **kwargs)

    def _tensor(self, a: Any) -> tuple[Any, Any]:
        """(a torch tensor sharing a's memory on this group's device, or a staged copy; a copy-back or None)."""
        torch = self.torch
        lib = _library(a)
        if lib in ("torch", "torch:cuda") and a.device.type == self.device.type:
            return a, None
        if self.engine == "gloo":
            host = _host_view(a)
            if host is not None:
                return torch.from_numpy(host), None
        if lib == "cupy":  # nccl group, CuPy array: share the device memory through DLPack
            return torch.from_dlpack(a), None
        t = torch.as_tensor(np.asarray(a) if _host_view(a) is None else _host_view(a)).to(self.device)
        return t, lambda: _write_back(a, t)

    def iallreduce_sum_(self, a: Any) -> Request:
        t, back = self._tensor(a)
        work = self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM, async_op=True)
        return Request(self, work, finish=back, what="an all-reduce")

    def _allreduce_host_(self, buf: np.ndarray) -> None:
        t = self.torch.from_numpy(buf)
        if self.engine == "nccl":
            dev = t.to(self.device)
            self.dist.all_reduce(dev)
            buf[...] = dev.cpu().numpy()
        else:
            self.dist.all_reduce(t)

    def allgather_str(self, text: str) -> list[str]:
        out: list[Any] = [None] * self.size
        self.dist.all_gather_object(out, text)
        return [str(s) for s in out]

    def barrier(self) -> None:
        if self.engine == "nccl":
            self.dist.barrier(device_ids=[self.device.index])
        else:
            self.dist.barrier()

    def _wait(self, handle: Any, what: str) -> None:
        handle.wait()  # the group's timeout applies; NCCL's wait() makes the current stream wait, not the host

    def _exit_barrier(self, seconds: float) -> bool:
        if self.mpi is not None:
            return self.mpi._exit_barrier(seconds)
        return True  # under torchrun the agent ends the others when one rank exits with an error

    def _abort_engine(self, code: int) -> None:
        if self.mpi is not None:
            self.mpi._abort_engine(code)
        os._exit(code)

    def _shutdown(self) -> None:
        try:
            self.dist.destroy_process_group()
        except Exception:
            pass
        if self.mpi is not None:
            self.mpi._closed = True
            self.mpi._shutdown()


def _write_back(a: Any, t: Any) -> None:
    host = t.cpu().numpy()
    view = _host_view(a)
    if view is not None:
        view[...] = host
    else:
        _copy_back(a, host, _library(a))


# ----------------------------------------------------------------------------------------------------- set-up
def _backend_name(backend: Any) -> str:
    name = getattr(backend, "name", backend)
    from . import BACKEND_ALIASES

    key = BACKEND_ALIASES.get(str(name).strip().lower())
    if key is None:
        raise ConfigError(f"unknown backend {name!r}: choose one of cpu, cuda, torch, torch:cuda, strict")
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
            _say(comm, _one_line(exc) if not isinstance(exc, LLMError) else str(exc))
        else:
            previous(kind, exc, tb)
            _say(comm, f"{_one_line(exc)} (traceback above): ending the job")
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
    if engine not in ENGINES:
        raise ConfigError(f"unknown distributed engine {engine!r}: choose one of {', '.join(ENGINES)}")
    for name, value in (("timeout", timeout), ("exit_timeout", exit_timeout)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    key = _backend_name(backend)
    gpu = key in ("cupy", "torch:cuda")
    if engine == "auto":
        engine = "nccl" if gpu else "mpi"
    if engine == "nccl" and not gpu:
        raise ConfigError(f"the nccl engine runs on the GPU backends (cuda, torch:cuda), not {key}: use mpi")
    if engine == "gloo" and key not in ("numpy", "torch", "strict"):
        raise ConfigError(f"the gloo engine reduces CPU arrays; backend {key} is on a GPU: use nccl or mpi")
    if engine == "mpi":
        MPI, world = _mpi_world(allow_singleton)
        comm: Communicator = MPICommunicator(MPI, world, timeout, exit_timeout)
        if gpu:
            _select_gpu(key, comm.local_rank, backend)
    elif engine == "nccl" and key == "cupy":
        MPI, world = _mpi_world(allow_singleton)
        local = world.Split_type(MPI.COMM_TYPE_SHARED)
        _select_gpu(key, local.Get_rank(), backend)  # before the NCCL communicator binds to the current GPU
        local.Free()
        comm = CupyNCCLCommunicator(MPI, world, timeout, exit_timeout)
    else:  # torch.distributed: nccl on torch:cuda, gloo on CPU
        if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
            _mpi_world(allow_singleton)  # fail early, with the launcher message, before touching torch
        comm = TorchCommunicator(engine, timeout, exit_timeout, allow_singleton)
    if abort_on_error:
        _install_hooks(comm)
    _CURRENT = comm
    return comm


def current() -> Communicator | None:
    """The communicator :func:`init_distributed` made in this process, or None."""
    return _CURRENT
