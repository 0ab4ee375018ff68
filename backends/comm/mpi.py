"""The MPI transport (mpi4py): finding the job a launcher started, and reducing buffers through MPI.

Host buffers are reduced where they lie. A device buffer goes to MPI by its pointer when the MPI is CUDA-aware
(``MPIX_Query_cuda_support`` or the MPI 4.1 memory kinds say ``cuda``; ``ARRAYGPT_MPI_CUDA_AWARE=0|1`` overrides),
else through a host copy; both device paths are UNMEASURED. MPI has no timeout of its own: with ``timeout=`` every
wait polls a non-blocking operation against a deadline and ends the job when it passes.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from ..base_errors import BackendUnavailableError, ConfigError
from .buffers import array_library, copy_back, device_sync, host_copy, host_view
from .communicator import Communicator, Request, one_line, say

MPI_INSTALL_HINT = 'pip install -e ".[mpi]" (mpi4py and the MPICH wheel, whose mpiexec lands next to python)'
# Variables a launcher sets in every rank's environment: (variable that holds the world size, launcher).
LAUNCHER_ENV = (("PMI_SIZE", "MPICH / Intel MPI mpiexec"), ("OMPI_COMM_WORLD_SIZE", "Open MPI mpirun"),
                ("PMIX_SIZE", "a PMIx launcher"), ("MV2_COMM_WORLD_SIZE", "MVAPICH mpirun"),
                ("WORLD_SIZE", "torchrun"))


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


def launch_hint() -> str:
    """How to start a data-parallel run under MPI (said when MPI is missing or misused)."""
    return ("start one process per rank with an MPI launcher, e.g. mpiexec -n 2 python -m llm train ... "
            "(-n 1 is allowed)")


def _import_mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        if getattr(exc, "name", None) in ("mpi4py", "mpi4py.MPI") and "lib" not in str(exc):
            raise BackendUnavailableError(f"distributed training needs mpi4py and an MPI: {MPI_INSTALL_HINT}") \
                from None
        raise BackendUnavailableError(f"mpi4py is installed but cannot load its MPI library ({one_line(exc)}): "
                                      f"{MPI_INSTALL_HINT}") from None
    except Exception as exc:  # an MPI that fails to initialize (MPI_Init errors surface here)
        raise BackendUnavailableError(f"MPI failed to start ({one_line(exc)}); {launch_hint()}") from None
    return MPI


def mpi_world(allow_singleton: bool) -> Any:
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
                              f"{launch_hint()}")
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
        host = host_view(a)
        if host is not None:
            return Request(self, self._coll.Iallreduce(MPI.IN_PLACE, host, op=MPI.SUM), what="an all-reduce")
        lib = array_library(a)
        if self.cuda_aware and lib in ("cupy", "torch:cuda"):  # UNMEASURED: the MPI reads the device buffer; the
            # stream must be idle first (a CUDA-aware MPI reads CUDA memory only: mps, xpu, ... are staged)
            device_sync(lib)
            return Request(self, self._coll.Iallreduce(MPI.IN_PLACE, a, op=MPI.SUM), what="an all-reduce")
        staged = host_copy(a, lib)  # UNMEASURED: device -> host, reduce, host -> device
        return Request(self, self._coll.Iallreduce(MPI.IN_PLACE, staged, op=MPI.SUM),
                       finish=lambda: copy_back(a, staged, lib), what="an all-reduce")

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
                say(self, f"{what} waited more than {self.timeout:g} s (the timeout): another rank died or is stuck; "
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

