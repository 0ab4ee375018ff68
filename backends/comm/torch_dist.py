"""The ``torch.distributed`` transport: the nccl process group for ``torch:cuda`` (UNMEASURED), gloo for CPU arrays."""

from __future__ import annotations

import os
import socket
from typing import Any

import numpy as np

from ..base_errors import BackendUnavailableError
from .buffers import array_library, host_copy, host_view, write_back
from .communicator import Communicator, Request
from .mpi import MPICommunicator, mpi_world


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
            MPI, world = mpi_world(allow_singleton)
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
        lib = array_library(a)
        if lib in ("torch", "torch:cuda") and a.device.type == self.device.type:
            return a, None
        if self.engine == "gloo":
            host = host_view(a)
            if host is not None:
                return torch.from_numpy(host), None
        if lib == "cupy":  # nccl group, CuPy array: share the device memory through DLPack
            return torch.from_dlpack(a), None
        host = host_view(a)
        t = torch.as_tensor(host_copy(a, lib) if host is None else host).to(self.device)  # staged (UNMEASURED)
        return t, lambda: write_back(a, t)

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

