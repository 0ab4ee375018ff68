"""One training step as one call: forward, backward, clip and Adam, with no device -> host transfer.

    step = TrainStep(model, optimizer)            # cuda_graphs="auto": captured on torch:cuda, plain elsewhere
    loss = step(tokens, targets, mask, lr=1e-3)   # host ids in; a 0-d device loss out, read it when you log

The host checks the batch and chooses the rows that count (see :mod:`llm.batch`); the device runs the step. On
``torch:cuda`` the whole step is recorded as a CUDA graph once per batch shape and replayed; there, batches are
padded to a few fixed shapes (the length rounded up to a multiple of `pad_multiple`) with zero-weight positions,
which changes nothing in the result (padding is on the right and attention is causal).
"""

from __future__ import annotations

from typing import Any

from backends.capture import StepGraphs, set_tf32, use_graphs

from .batch import batch_shape, prepare_batch, prepare_padded_batch
from .errors import ConfigError


class TrainStep:
    """A model and its optimizer, stepped together; ``cuda_graphs`` is "auto" (on where supported), "on" or "off".

    ``tf32=True`` allows TF32 matmuls on GPUs (off by default). ``pad_multiple`` (graphs only, default 16) rounds
    the sequence length up so that a corpus of varied lengths needs only a few graphs. ``last_grad_norm`` is the
    optimizer's device scalar: the global gradient norm before clipping, of the last step.
    """

    def __init__(self, model: Any, optimizer: Any, cuda_graphs: str = "auto", tf32: bool = False,
                 pad_multiple: int = 16) -> None:
        if optimizer.flat is not model.flat:
            raise ConfigError("the optimizer was built for another model: Adam(model) with this model")
        if isinstance(pad_multiple, bool) or not isinstance(pad_multiple, int) or pad_multiple < 1:
            raise ConfigError(f"pad_multiple must be an integer >= 1, got {pad_multiple!r}")
        self.model, self.optimizer, self.pad_multiple = model, optimizer, pad_multiple
        if tf32:
            set_tf32(True)
        self.graphed = use_graphs(model.backend, cuda_graphs)
        self._graphs = None
        if self.graphed:
            opt = optimizer
            self._graphs = StepGraphs(self._device_step, [model.flat.param_buffer, opt.m_buffer, opt.v_buffer,
                                                          opt._t, opt._calls, opt.skipped, opt.first_skipped,
                                                          opt.last_grad_norm])

    @property
    def last_grad_norm(self) -> Any:
        return self.optimizer.last_grad_norm

    def _device_step(self, tokens: Any, targets: Any, rows: Any, weights: Any) -> Any:
        # Everything here runs on the device and reads nothing back: the unit a CUDA graph records.
        loss = self.model.loss_and_grads_device(tokens, targets, rows, weights)
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
            B, T = shape
            batch = prepare_padded_batch(model.backend, model.config, tokens, targets, mask, self.padded_shape(B, T))
            return self._graphs(*batch)
        batch = prepare_batch(model.backend, model.config, tokens, targets, mask)
        rows = batch[2]
        if rows is not None and rows.shape[0] == 0:  # no position counts: zero gradients, still one Adam step
            loss = model.loss_and_grads(tokens, targets, mask)
            self.optimizer.step_device()
            return loss
        return self._device_step(*batch)

