"""Data-parallel training: every rank steps on its shard of the global batch, and one all-reduce joins them.

    comm = backends.comm.init_distributed("cpu")      # under mpiexec -n N
    step = DistributedStep(model, Adam(model, lr), comm)      # same call as TrainStep
    loss = step(tokens, targets, mask, lr=...)                # the GLOBAL batch, the same on every rank

Every rank is given the same global batch (the same shuffled order, the same seed) and cuts it the way the threads
of one process do (:func:`llm.batch.host_shards`): the sequences with a counted position, dealt out in contiguous
blocks balanced to within one sequence, rank r taking block r, so a batch of 3 on 2 ranks is 2 + 1 and a batch
smaller than N leaves some ranks empty (they add zero gradients and still take part). Each position
that counts is weighted 1 / (the number of counted positions in the whole global batch), computed on the host, so
the sum over ranks of the shards' losses and gradients is the single-process mean over the global batch, however
the real tokens fall between ranks. One all-reduce of the flat gradient buffer (and one of the loss) makes the
gradients identical on every rank; the optimizer step then keeps the parameters identical.

No overlap of the reduction with the backward pass: reducing block by block as the backward pass finished each
block (a non-blocking all-reduce of the block's two slices of the flat buffer, its matrices and its vectors) gave
identical results but was slower on the CPU in 20 of 24 paired rounds (benchmarks/distributed_bench.py, issue 12):
MPI moves host buffers with the same cores that compute, and progresses a non-blocking reduction only inside MPI
calls, so there is nothing to overlap with, and ten reductions cost more than one.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np

from backends.comm import fingerprint

from llm import checks
from llm.training.accumulate import accumulate, send_split
from llm.training.precision import PrecisionOfStep
from llm.training.batch import batch_shape, host_shards, send_shard, shard_bounds  # noqa: F401  (re-exported)
from llm.errors import ConfigError

__all__ = ["DistributedStep", "shard_bounds", "run_fingerprints", "check_run", "fingerprint"]


def run_fingerprints(**parts: Any) -> dict[str, str]:
    """One SHA-256 per named part (``config=model.config.to_dict(), corpus=texts, seed=0, ...``), for
    ``comm.check_same(run_fingerprints(...), "the run")``, whose error then names the parts that differ."""
    return {name: fingerprint(value) for name, value in parts.items()}


class DistributedStep(PrecisionOfStep):
    """TrainStep's call on N ranks: ``step(tokens, targets, mask=None, lr=None) -> 0-d device loss``.

    `tokens`, `targets` (B, T) and `mask` (B, T) bool are the global batch, on the host, identical on every rank;
    the loss returned is the global batch's (the same on every rank). ``last_grad_norm`` is the norm of the summed
    gradient before clipping (a device scalar), as TrainStep's. CUDA graphs are not used here.

    ``micro_batch`` and ``recompute`` as TrainStep's: each rank cuts its own shard into micro-batches of M
    sequences (M is what one rank's forward pass holds) and sums them before the one all-reduce.

    ``precision`` as TrainStep's ("fp32", "fp16", "bf16" or a MixedPrecision): each rank's passes run on the
    low-precision weights; the all-reduce sums the float32 gradient buffer (fp16: still multiplied by the loss
    scale, which is the same on every rank), and the update unscales it, so every rank sees the same summed
    gradient, skips the same overflowing steps and moves its loss scale alike.
    """

    def __init__(self, model: Any, optimizer: Any, comm: Any, micro_batch: int | None = None,
                 recompute: bool = False, precision: Any = "fp32") -> None:
        if optimizer.flat is not model.flat:
            raise ConfigError("the optimizer was built for another model: Adam(model) with this model")
        self.model, self.optimizer, self.comm = model, optimizer, comm
        self.micro_batch = checks.positive_int(micro_batch, "micro_batch", allow_none=True)
        self.recompute = checks.boolean(recompute, "recompute")
        self._set_precision(model, precision)

    @property
    def last_grad_norm(self) -> Any:
        return self.optimizer.last_grad_norm

    # -- the step --------------------------------------------------------------------------------------------
    def __call__(self, tokens: Any, targets: Any, mask: Any = None, lr: float | None = None) -> Any:
        """One step on the global batch; returns the global mean loss as a 0-d device array (nothing read back).

        Every rank checks and cuts the same global batch (llm.batch.host_shards, as the threads of one process
        do) and sends only its own shard to its device."""
        model, opt, comm = self.model, self.optimizer, self.comm
        be = model.backend
        xp = be.xp
        shape = batch_shape(tokens)
        if len(shape) != 2:
            raise ConfigError(f"tokens must have shape (batch, time), got {shape}")
        shards = host_shards(be, model.config, tokens, targets, mask, comm.size).shards
        if lr is not None:
            opt.set_lr(lr)
        mine = None if comm.rank >= len(shards) else send_split(be, shards[comm.rank:comm.rank + 1],
                                                                  self.micro_batch)[0]

        def passes_and_reduce(grad_scale: Any = None) -> Any:
            if mine is None:  # nothing counted here: zero gradients and loss, still in every reduction
                model.flat.zero_grads()
                loss = xp.zeros((), dtype=be.dtype, device=be.device)
            else:
                loss = accumulate(model, mine, self.recompute, grad_scale)
            total = xp.asarray(xp.reshape(loss, (1,)), copy=True)  # a buffer of its own for the in-place sum
            # both reductions in flight at once, then wait: every rank posts them in this order
            pending = [comm.iallreduce_sum_(model.flat.grad_buffer), comm.iallreduce_sum_(total)]
            for req in pending:
                req.wait()
            return xp.reshape(total, ())

        if self._precision is not None:  # the passes in the low precision, the update on the float32 masters
            return self._precision.step(opt, passes_and_reduce)
        loss = passes_and_reduce()
        opt.step_device()
        return loss

    # -- checks the trainer may run -----------------------------------------------------------------------------
    def parameters_fingerprint(self) -> str:
        """SHA-256 of this rank's parameter buffer (reads it back to the host)."""
        host = np.ascontiguousarray(self.model.backend.to_numpy(self.model.flat.param_buffer))
        return hashlib.sha256(host.tobytes()).hexdigest()

    def check_in_sync(self) -> None:
        """ConfigError on every rank unless every rank holds bit-identical parameters (a collective)."""
        self.comm.check_same(self.parameters_fingerprint(), "the parameters")


def check_run(comm: Any, parts: Mapping[str, Any], what: str = "the run") -> None:
    """Fingerprint each named part here and check every rank has the same: ``check_run(comm, {"config": ...})``."""
    comm.check_same(run_fingerprints(**parts), what)
