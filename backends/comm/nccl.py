"""The NCCL transport on CuPy: gradients reduced on the GPU by NCCL, everything else through MPI. UNMEASURED."""

from __future__ import annotations

from typing import Any

from ..base_errors import BackendUnavailableError, ConfigError
from .buffers import array_library
from .communicator import Request
from .mpi import MPICommunicator


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
                                          '(pip install -e ".[cuda]"), or the mpi engine') from None
        if not getattr(nccl, "available", True):
            raise BackendUnavailableError("CuPy was built without NCCL: pip install nvidia-nccl-cu12 (or cu13), or "
                                          "use the mpi engine")
        self.cupy, self.nccl = cupy, nccl
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self._coll.bcast(uid, root=0)  # bytes (CuPy >= 14) or a tuple of ints: either pickles
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._types = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}

    def iallreduce_sum_(self, a: Any) -> Request:
        if array_library(a) != "cupy":
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

