"""One training step as one call: forward, backward, clip and Adam, with no device -> host transfer.

    step = TrainStep(model, optimizer)            # cuda_graphs="auto": captured on torch:cuda, plain elsewhere
    loss = step(tokens, targets, mask, lr=1e-3)   # host ids in; a 0-d device loss out, read it when you log
    step = TrainStep(model, optimizer, workers="auto")   # CPU: the batch split across threads (llm.parallel)
    step = TrainStep(model, optimizer, micro_batch=8)    # 8 sequences at a time, one update (llm.training.accumulate)
    step = TrainStep(model, optimizer, recompute=True)   # blocks' activations recomputed in the backward pass

The host checks the batch and chooses the rows that count (see :mod:`llm.batch`); the device runs the step. On
``torch:cuda`` the whole step is recorded as a CUDA graph once per batch shape and replayed; there, batches are
padded to a few fixed shapes (the length rounded up to a multiple of `pad_multiple`) with zero-weight positions,
which changes nothing in the result (padding is on the right and attention is causal). On CPU backends
``workers=N`` splits each batch into N shards of sequences run by N threads (:mod:`llm.parallel`), the same
result up to the order of the sums.
"""

from __future__ import annotations

from typing import Any

from backends.capture import StepGraphs, set_tf32, use_graphs

from llm import checks
from llm.training.accumulate import MicroBatches, accumulate, send_split, zero_step
from llm.training.batch import batch_shape, host_shards, prepare_batch, prepare_padded_batch
from llm.errors import ConfigError
from llm.training.threads import DataParallel, resolve_workers
from llm.training.precision import PrecisionOfStep


class TrainStep(PrecisionOfStep):
    """A model and its optimizer, stepped together; ``cuda_graphs`` is "auto" (on where supported), "on" or "off".

    ``tf32=True`` allows TF32 matmuls on GPUs (off by default). ``pad_multiple`` (graphs only, default 16) rounds
    the sequence length up so that a corpus of varied lengths needs only a few graphs. ``last_grad_norm`` is the
    optimizer's device scalar: the global gradient norm before clipping, of the last step.

    ``workers`` (CPU backends): 1 (the default) runs the step on the calling thread, as it always did; N > 1
    splits every batch by sequences across N threads, each with single-threaded BLAS, its own activations and its
    own gradient buffer, summed before the optimizer step; "auto" picks what pays off (one per CPU, at most 4, on
    the NumPy backend; 1 on other backends). More than one worker on a GPU backend is a ConfigError. ``workers``
    is the resolved number.

    ``micro_batch`` (None: the whole batch at once): run a batch of more than M sequences as slices of M, their
    gradients summed, then one clip and one Adam step, equal to the whole batch at once (:mod:`llm.training.accumulate`);
    with workers, each worker's shard is cut into slices of M. ``recompute=True``: each block keeps only its input
    in the forward pass and runs its forward again in the backward pass (less memory, the same gradients).

    ``precision``: "fp32" (the default, the float32 step as it always was), "fp16" or "bf16": matmuls and
    activations in that dtype over float32 master weights, with dynamic loss scaling for fp16 (see
    :mod:`llm.training.precision`; ``loss_scale`` is its state, None without one), or a ``MixedPrecision`` built for
    the model (its growth interval, its initial scale). Composes with ``micro_batch``, ``recompute`` and CUDA
    graphs; needs one worker ("auto" gives 1).
    """

    def __init__(self, model: Any, optimizer: Any, cuda_graphs: str = "auto", tf32: bool = False,
                 pad_multiple: int = 16, workers: int | str = 1, micro_batch: int | None = None,
                 recompute: bool = False, precision: Any = "fp32") -> None:
        if optimizer.flat is not model.flat:
            raise ConfigError("the optimizer was built for another model: Adam(model) with this model")
        pad_multiple = checks.positive_int(pad_multiple, "pad_multiple")
        self.model, self.optimizer, self.pad_multiple = model, optimizer, pad_multiple
        self._set_precision(model, precision)
        if self._precision is not None:
            workers = 1 if workers == "auto" else workers
            if workers != 1:
                raise ConfigError(f"precision {self.precision} runs on one worker thread; got workers={workers!r}: "
                                  "leave workers out (or 1)", param="workers")
        self.workers = resolve_workers(model.backend, workers)
        self.micro_batch = checks.positive_int(micro_batch, "micro_batch", allow_none=True)
        self.recompute = checks.boolean(recompute, "recompute")
        if tf32:
            set_tf32(True)
        self.graphed = use_graphs(model.backend, cuda_graphs)
        self._parallel = None
        if self.workers > 1 and not self.graphed:
            self._parallel = DataParallel(model, self.workers, recompute=self.recompute)
        self._graphs = None
        if self.graphed:  # what a step mutates: the parameters and every array of the optimizer's state
            self._graphs = StepGraphs(self._device_step, [model.flat.param_buffer, *optimizer.state.arrays(),
                                                          *(self._precision.arrays() if self._precision else ())])
        self._micro = None if self.micro_batch is None else MicroBatches(self, self.micro_batch)

    @property
    def last_grad_norm(self) -> Any:
        return self.optimizer.last_grad_norm

    def _device_step(self, tokens: Any, targets: Any, rows: Any, weights: Any) -> Any:
        # Everything here runs on the device and reads nothing back: the unit a CUDA graph records.
        def forward_backward(grad_scale: Any = None) -> Any:
            return self.model.loss_and_grads_device(tokens, targets, rows, weights, grad_scale,
                                                    recompute=self.recompute)

        if self._precision is not None:  # the passes in the low precision, the update on the float32 masters
            return self._precision.step(self.optimizer, forward_backward)
        loss = forward_backward()
        self.optimizer.step_device()
        return loss

    def padded_shape(self, B: int, T: int) -> tuple[int, int]:
        """The captured shape a (B, T) batch is padded to: T rounded up to `pad_multiple`, at most max_seq_len."""
        m = self.pad_multiple
        return B, min(-(-T // m) * m, max(self.model.config.max_seq_len, T))

    def __call__(self, tokens: Any, targets: Any, mask: Any = None, lr: float | None = None) -> Any:
        """Take one step on a batch (host ids (B, T), targets (B, T), optional bool mask (B, T)); return the loss.

        The loss is a 0-d device array; ``float(loss)`` reads it (a device sync: do it when you log, not every
        step). `lr` sets the learning rate of this step (None keeps the optimizer's current one).
        """
        model = self.model
        if lr is not None:
            self.optimizer.set_lr(lr)
        if self.graphed:
            shape = batch_shape(tokens)
            if len(shape) != 2:
                raise ConfigError(f"tokens must have shape (batch, time), got {shape}")
            if self._micro is not None and self._micro.applies(tokens):
                return self._micro.graphed(tokens, targets, mask)
            B, T = shape
            batch = prepare_padded_batch(model.backend, model.config, tokens, targets, mask, self.padded_shape(B, T))
            return self._graphs(*batch)
        if self._parallel is not None:
            return self._parallel_step(tokens, targets, mask)
        if self._micro is not None and self._micro.applies(tokens):
            return self._micro.plain(tokens, targets, mask)
        batch = prepare_batch(model.backend, model.config, tokens, targets, mask)
        rows = batch.rows
        if rows is not None and rows.shape[0] == 0:  # no position counts: zero gradients, still one Adam step
            loss = model.loss_and_grads(tokens, targets, mask)
            self.optimizer.step_device()
            return loss
        return self._device_step(*batch)

    def _parallel_step(self, tokens: Any, targets: Any, mask: Any) -> Any:
        model = self.model
        split = host_shards(model.backend, model.config, tokens, targets, mask, self.workers)
        if not split.shards:  # no position counts: zero gradients, still one Adam step (as on one thread)
            return zero_step(model, self.optimizer)
        shards = send_split(model.backend, split.shards, self.micro_batch)  # each shard: its micro-batches
        if len(shards) == 1:  # one sequence counts: nothing to split, BLAS keeps its threads
            loss = accumulate(model, shards[0], self.recompute)
            self.optimizer.step_device()
            return loss
        with self._parallel.limit_blas():
            return self._parallel.step(shards, self.optimizer)
