"""Data parallelism inside one process: each batch split across worker threads, one shard of sequences each.

    step = TrainStep(model, opt, workers=2)      # or workers="auto": as many as pay off here (CPU backends)

NumPy runs attention's stacked small matmuls (one matrix at a time) and every elementwise operation on one thread,
while BLAS splits only the large GEMMs. Here every worker runs the whole forward and backward pass on its own
sequences instead, with single-threaded BLAS (threadpoolctl): its own activations (layers return their caches and
store nothing), and its own gradient buffer. The first shard runs on the calling thread, on the model itself; the
others on persistent pool threads, on *twins* of the model (:meth:`llm.layers.base.Layer.replicate`) that share
every parameter and add their gradients into a flat buffer of their own (:meth:`FlatParameters.with_own_grads`).
NumPy releases the GIL inside its loops and BLAS calls, so the threads compute at the same time; Python itself
runs one op's dispatch at a time, a few microseconds each.

Every counted position is weighted 1 / (the number of counted positions in the whole batch), computed on the host
(:func:`llm.batch.prepare_shards`), so the shards' losses and gradients sum to the single-thread mean; the twins'
buffers are then added into the model's, and the optimizer steps once, as without workers. In float64 the result
equals ``workers=1`` up to the order of the sums (tests/test_parallel.py: within 1e-12).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llm import checks
from llm.training.accumulate import accumulate
from llm.training.batch import shard_bounds
from llm.errors import ConfigError

__all__ = ["DataParallel", "resolve_workers", "usable_cpus", "HOST_BACKENDS", "MAX_AUTO_WORKERS"]

# Backends whose arrays live in host memory, computed by the calling thread: the only ones a thread pool can split.
HOST_BACKENDS = ("numpy", "strict", "torch")
# "auto" uses at most this many workers: each adds the Python dispatch of a whole pass under one GIL.
MAX_AUTO_WORKERS = 4


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _threadpoolctl() -> Any:
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


def resolve_workers(backend: Any, workers: Any) -> int:
    """``workers`` (an int >= 1 or "auto") -> the number of worker threads for a step on `backend`.

    "auto" is one per usable CPU (at most :data:`MAX_AUTO_WORKERS`) on the NumPy backend, where it was measured to
    pay off, and 1 elsewhere (GPU backends, torch's own thread pool, the strict checker). More than one worker on a
    GPU backend, or without threadpoolctl, is a ConfigError.
    """
    if workers == "auto":
        if backend.name != "numpy" or _threadpoolctl() is None:
            return 1
        return max(1, min(usable_cpus(), MAX_AUTO_WORKERS))
    if not (checks.is_int(workers) and workers >= 1):
        raise ConfigError(f"workers must be an integer >= 1 or \"auto\", got {workers!r}", param="workers")
    workers = int(workers)
    if workers > 1:
        if backend.name not in HOST_BACKENDS:
            raise ConfigError(f"workers={workers} splits a batch across CPU threads, but backend {backend.name} "
                              "computes on a GPU: use workers=1 (or \"auto\", which is 1 there)")
        if _threadpoolctl() is None:
            raise ConfigError(f"workers={workers} needs threadpoolctl to keep each worker's BLAS on one thread: "
                              "pip install threadpoolctl")
    return workers


class DataParallel:
    """`n` workers over one model: ``loss_and_grads(shards)`` fills ``model.grads`` and returns the loss.

    Built once per :class:`llm.step.TrainStep`; its `n - 1` pool threads and twins live as long as it does.
    """

    def __init__(self, model: Any, n: int, recompute: bool = False) -> None:
        if n < 2:
            raise ConfigError(f"DataParallel needs at least 2 workers, got {n}")
        self.model, self.n, self.recompute = model, n, recompute
        self.twins = [self._twin(model) for _ in range(n - 1)]
        self._pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="arraygpt-worker")
        self._controller = _threadpoolctl().ThreadpoolController()
        self.blas_threads = max(1, usable_cpus() // n)  # per worker, while a step runs

    @staticmethod
    def _twin(model: Any) -> Any:
        flat = model.flat.with_own_grads()
        twin = model.replicate(flat.grads)
        twin.flat, twin._last_cache = flat, None
        return twin

    def limit_blas(self) -> Any:
        """A context in which BLAS (and OpenMP) use ``blas_threads`` threads per call; the old limits come back
        after it. The whole step runs inside, the optimizer too: a BLAS call with more threads between two
        steps would leave OpenBLAS's pool threads spinning into the next step's workers."""
        return self._controller.limit(limits=self.blas_threads)

    def _each(self, fn: Any, n: int) -> list:
        # fn(0) on this thread and fn(1) .. fn(n-1) on the pool's, at the same time; -> their results in order
        futures = [self._pool.submit(fn, i) for i in range(1, n)]
        try:
            first = fn(0)
        finally:
            rest = [f.result() for f in futures]  # wait for every worker, even when this thread failed
        return [first, *rest]

    def loss_and_grads(self, shards: list, norm: bool = False) -> Any:
        """Run the shards of :func:`llm.batch.prepare_shards` (at most `n`), one per worker; -> the summed loss,
        or ``(loss, global gradient norm)`` with ``norm=True`` (0-d device arrays). A shard may also be a list of
        DeviceBatches, its micro-batches (:func:`llm.training.accumulate.send_split`): its worker runs them in
        turn, adding into its own gradient buffer.

        The model's gradient buffer ends holding the sum of every shard's gradients, summed by all the workers
        at once, each over its own slice of the buffer. Call inside :meth:`limit_blas`.
        """
        if not 1 <= len(shards) <= self.n:
            raise ConfigError(f"{len(shards)} shards for {self.n} workers")
        models = [self.model, *self.twins]
        parts = [s if isinstance(s, list) else [s] for s in shards]
        losses = self._each(lambda i: accumulate(models[i], parts[i], self.recompute), len(shards))
        loss = losses[0]
        for part in losses[1:]:
            loss = loss + part
        used = self.twins[:len(shards) - 1]
        size = self.model.flat.size

        def reduce(i: int) -> Any:
            lo, hi = shard_bounds(size, i, self.n)
            grad = self.model.flat.grad_buffer[lo:hi]
            for twin in used:
                grad += twin.flat.grad_buffer[lo:hi]
            return grad @ grad if norm else None

        squares = self._each(reduce, self.n)
        if not norm:
            return loss
        total = squares[0]
        for part in squares[1:]:
            total = total + part
        return loss, self.model.backend.xp.sqrt(total)

    def step(self, shards: list, optimizer: Any) -> Any:
        """One training step on the shards: gradients as :meth:`loss_and_grads`, then the optimizer's update,
        every worker updating its own slice of the buffers (:meth:`llm.optim.Adam.update_slice`); -> the loss."""
        loss, norm = self.loss_and_grads(shards, norm=True)
        coeffs = optimizer.begin_step(norm)
        size = self.model.flat.size
        self._each(lambda i: optimizer.update_slice(coeffs, *shard_bounds(size, i, self.n)), self.n)
        return loss

    def close(self) -> None:
        """Stop the pool threads (they are idle between steps; an exiting interpreter stops them too)."""
        self._pool.shutdown(wait=True)
