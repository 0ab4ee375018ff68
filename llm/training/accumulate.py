"""Micro-batches (gradient accumulation): a step's batch run as slices of M sequences, their gradients summed into
the flat gradient buffer (zeroed once), then one clip and one Adam update on the sum.

    step = TrainStep(model, opt, micro_batch=8)     # a batch of 64: 8 forward and backward passes of 8 sequences

Only M sequences' activations live at once, so the activation memory of a step is that of M sequences whatever
the batch size. The result is the whole batch's: every position that counts is weighted ``1 / count``, `count`
being the positions that count in the *whole* batch (chosen on the host, :func:`llm.training.batch.host_shards`),
so the slices' losses and gradients sum to the mean over the whole batch, masks included; in float64 the step
equals the whole batch at once within 1e-12 (tests/test_micro_batch.py). The loss returned is the whole batch's.

With ``workers=N`` each worker's shard of sequences is cut into micro-batches (so M is what any one forward pass
holds, on a thread as on a rank of :class:`llm.training.ranks.DistributedStep`); on ``torch:cuda`` each
micro-batch shape is a CUDA graph of its own and the optimizer's update one more (with mixed precision: the slices
recorded on the low-precision weights, the update with the unscaling and the loss scale; unmeasured: no GPU was at
hand).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

from backends.capture import StepGraphs

from llm.nn.batch_checks import DeviceBatch, batch_shape
from llm.training.batch import host_shards, prepare_padded_micro_batches, send_shard, split_shard

__all__ = ["accumulate", "send_split", "zero_step", "MicroBatches"]


def accumulate(model: Any, batches: Sequence[DeviceBatch], recompute: bool = False, grad_scale: Any = None) -> Any:
    """Forward and backward passes over `batches` (DeviceBatches whose weights are shares of one batch), the
    gradient buffer zeroed before the first and added into by the others; -> the summed 0-d loss. `grad_scale`:
    mixed precision's loss scale (:mod:`llm.training.precision`), or None."""
    loss = None
    for i, batch in enumerate(batches):
        part = model.loss_and_grads_device(*batch, grad_scale, accumulate=i > 0, recompute=recompute)
        loss = part if loss is None else loss + part
    return loss


def send_split(backend: Any, shards: Sequence[Any], micro_batch: int | None) -> list[list[DeviceBatch]]:
    """Host shards (:func:`llm.training.batch.host_shards`) -> for each, its micro-batches on the device."""
    return [[send_shard(backend, part) for part in split_shard(shard, micro_batch)] for shard in shards]


def zero_step(model: Any, optimizer: Any) -> Any:
    """A batch where no position counts: zero gradients and a zero loss, still one optimizer step."""
    be = model.backend
    model.flat.zero_grads()
    optimizer.step_device()
    return be.xp.zeros((), dtype=be.dtype, device=be.device)


class MicroBatches:
    """The micro-batched path of a :class:`llm.training.step.TrainStep` (one thread, or CUDA graphs).

    ``applies(tokens)``: whether a batch holds more than `size` sequences (smaller ones take the step's usual
    path, bit for bit); ``plain(tokens, targets, mask)`` and ``graphed(...)`` take the step and return the loss.
    """

    def __init__(self, step: Any, size: int) -> None:
        self.step, self.size = step, size
        self._graphs = self._update = None
        if step.graphed:  # one recording per micro-batch shape (it adds into the gradients), one for the update
            model, opt, mixed = step.model, step.optimizer, step.mixed_precision
            self._graphs = StepGraphs(self._accumulate_device, [model.flat.grad_buffer])
            self._update = StepGraphs(self._update_device, [model.flat.param_buffer, model.flat.grad_buffer,
                                                            *opt.state.arrays(),
                                                            *(mixed.arrays() if mixed is not None else ())])

    def applies(self, tokens: Any) -> bool:
        shape = batch_shape(tokens)
        return len(shape) == 2 and shape[0] > self.size

    def _accumulate_device(self, tokens: Any, targets: Any, rows: Any, weights: Any) -> Any:
        # recorded while the weights bound are the ones the replays read: the low-precision shadow under mixed
        # precision (fp16 scales the loss gradient by the device scalar of its loss scale), the masters otherwise
        loss_scale = self.step.loss_scale
        scale = None if loss_scale is None else loss_scale.scale
        return self.step.model.loss_and_grads_device(tokens, targets, rows, weights, scale, accumulate=True,
                                                     recompute=self.step.recompute)

    def _update_device(self) -> Any:
        mixed = self.step.mixed_precision
        if mixed is not None:  # fp16: unscale, Adam, move the loss scale; bf16: Adam
            mixed.update(self.step.optimizer)
        else:
            self.step.optimizer.step_device()
        return self.step.optimizer.state.last_grad_norm

    def plain(self, tokens: Any, targets: Any, mask: Any) -> Any:
        """One step on the calling thread: the batch checked and cut on the host, its slices run in order."""
        step = self.step
        model = step.model
        split = host_shards(model.backend, model.config, tokens, targets, mask, 1)
        if not split.shards:
            return zero_step(model, step.optimizer)
        batches = send_split(model.backend, split.shards, self.size)[0]
        mixed = step.mixed_precision
        if mixed is not None:  # every slice on the low-precision weights, one update on the float32 masters
            return mixed.step(step.optimizer, lambda scale: accumulate(model, batches, step.recompute, scale))
        loss = accumulate(model, batches, step.recompute)
        step.optimizer.step_device()
        return loss

    def graphed(self, tokens: Any, targets: Any, mask: Any) -> Any:
        """One step through CUDA graphs: each slice padded to its captured shape, weighted by the whole batch."""
        step = self.step
        model = step.model
        batches = prepare_padded_micro_batches(model.backend, model.config, tokens, targets, mask, self.size,
                                               step.padded_shape)
        model.flat.zero_grads()
        mixed = step.mixed_precision
        loss = None
        with nullcontext() if mixed is None else mixed.low_weights():  # the cast to the shadow: one per step
            for batch in batches:
                part = self._graphs(*batch)
                loss = part if loss is None else loss + part
        self._update()
        return loss
