"""The communicator every transport implements: ranks, sums across them, the fingerprint check and ending a job.

:class:`Communicator` holds what is the same for MPI, NCCL and gloo (the host-side helpers, ``check_same``, the
abort and the exit barrier); each transport module fills in the collectives.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from ..base_errors import ConfigError


def one_line(exc: BaseException) -> str:
    """`exc` as one line: its class name and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")




def say(comm: Communicator | None, message: str) -> None:
    """Print `message` as one `error:` line on stderr, tagged with the rank when there are several."""
    tag = f"[rank {comm.rank}/{comm.size}] " if comm is not None and comm.size > 1 else ""
    try:
        print(f"error: {tag}{message}", file=sys.stderr, flush=True)
    except Exception:
        pass



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
            say(self, f"rank {self.rank} is exiting but other ranks did not follow within {self.exit_timeout:g} s "
                       "(still training, or stuck): ending the job")
            self._aborting = True
            self._abort_engine(1)
        self._shutdown()

    def _shutdown(self) -> None:
        pass

