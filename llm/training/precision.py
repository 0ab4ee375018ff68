"""Mixed precision: float16 / bfloat16 compute over float32 master weights, with dynamic loss scaling for float16.

    step = TrainStep(model, Adam(model), precision="bf16")   # "fp16", or "fp32" (the default: the plain step)

One step (:meth:`MixedPrecision.step`), all on the device, nothing read back:

1. the float32 parameter buffer is cast once into a low-precision *shadow* buffer of the same layout;
2. every layer's ``params`` entries are pointed at the shadow's views for the forward and backward pass, and back
   at the float32 masters afterwards (so evaluation and generation between steps see the float32 weights);
3. matmuls and activations run in the low precision; the loss, its log-sum-exp and softmax (:mod:`llm.nn.loss`)
   and the LayerNorm statistics (:mod:`llm.nn.layers.layernorm`) in float32;
4. gradients land in the float32 gradient buffer: ``f32_view += f16_product`` casts in place on NumPy, CuPy and
   torch, and the embedding's scatter-add casts first (:func:`backends.ops.index_add`); array-api-strict has no
   float16 or bfloat16, so no mixed-dtype addition ever reaches it;
5. float16 only: the loss gradient is multiplied by the loss scale, the float32 gradient buffer divided by it;
   Adam's own finite guard then skips a step whose gradient is not finite (parameters, moments and Adam's ``t``
   untouched; ``calls`` and ``skipped`` count it, so a checkpoint's counters stay consistent), the scale is
   halved, and after `growth_interval` clean steps in a row it doubles; all with device-side ``where``. Such an
   overflow is expected, not a divergence: Adam's ``first_skipped`` (which the training loop reports as one) is
   left as it was, and :attr:`LossScale.overflows` counts it. Adam's float32 moments stay in their flat buffers.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from llm import checks
from llm.errors import ConfigError

from backends import low_precision_dtype

PRECISIONS = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}  # name -> compute dtype (None: float32 as is)
INIT_SCALE = 2.0 ** 16
GROWTH_INTERVAL = 2000  # clean steps in a row before the scale doubles (the usual default)


def check_precision(precision: Any) -> str:
    """`precision` if it is "fp32", "fp16" or "bf16"; ConfigError (param="precision") otherwise."""
    return checks.one_of(precision, tuple(PRECISIONS), "precision")


class LossScale:
    """The dynamic loss scale of float16 training: three 0-d float32 device arrays, updated in place.

    ``scale`` multiplies the loss gradient; ``good`` counts the clean steps since the last change; ``overflows``
    counts the steps skipped for a non-finite gradient. ``state_dict()`` / ``load_state_dict()`` read and write
    them as host numbers (the checkpoint's ``loss_scale``).
    """

    def __init__(self, backend: Any, init_scale: float = INIT_SCALE, growth_interval: int = GROWTH_INTERVAL) -> None:
        self.backend = backend
        self.growth_interval = checks.positive_int(growth_interval, "growth_interval")
        init_scale = checks.positive_number(init_scale, "init_scale")
        full = lambda v: backend.xp.full((), v, dtype=backend.xp.float32, device=backend.device)  # noqa: E731
        self.scale, self.good, self.overflows = full(init_scale), full(0.0), full(0.0)

    def arrays(self) -> tuple:
        """Every array a step writes: scale, good, overflows."""
        return self.scale, self.good, self.overflows

    def update(self, finite: Any) -> None:
        """After a step whose gradient was finite (`finite`, a 0-d bool device array) or not: halve the scale on an
        overflow, double it after `growth_interval` clean steps in a row. Device-side only."""
        xp = self.backend.xp
        good = self.good + 1.0
        grow = good >= float(self.growth_interval)
        self.scale[...] = xp.where(finite, xp.where(grow, self.scale * 2.0, self.scale), self.scale * 0.5)
        self.good[...] = xp.where(finite & ~grow, good, xp.zeros_like(good))
        self.overflows[...] = self.overflows + xp.astype(~finite, xp.float32)

    def state_dict(self) -> dict[str, Any]:
        """``{"scale": float, "good_steps": int, "overflows": int, "growth_interval": int}``, one host read."""
        host = self.backend.to_numpy(self.backend.xp.stack([self.scale, self.good, self.overflows]))
        return {"scale": float(host[0]), "good_steps": int(host[1]), "overflows": int(host[2]),
                "growth_interval": self.growth_interval}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Write a saved :meth:`state_dict` into the device scalars (the growth interval stays this one's)."""
        self.scale[...] = checks.positive_number(state["scale"], "scale")
        self.good[...] = float(checks.nonnegative_int(state["good_steps"], "good_steps"))
        self.overflows[...] = float(checks.nonnegative_int(state["overflows"], "overflows"))


class MixedPrecision:
    """The low-precision half of a :class:`~llm.training.step.TrainStep`: the shadow buffer, the swap of every
    layer's parameter views, and (fp16) the loss scale. ``MixedPrecision(model, "fp16" | "bf16")``.

    ConfigError when the model's parameters are not float32, or its backend lacks the dtype (the message names
    the backends that have it).
    """

    def __init__(self, model: Any, precision: str, growth_interval: int = GROWTH_INTERVAL,
                 init_scale: float = INIT_SCALE) -> None:
        precision = check_precision(precision)
        if PRECISIONS[precision] is None:
            raise ConfigError("MixedPrecision is for fp16 or bf16; fp32 needs none", param="precision")
        be, flat = model.backend, model.flat
        if be.dtype_name != "float32":
            raise ConfigError(f"precision {precision} keeps float32 master weights; this model's are "
                              f"{be.dtype_name}: build it in float32", param="precision")
        self.precision, self.model = precision, model
        self.dtype = low_precision_dtype(be, PRECISIONS[precision])
        self.shadow = be.xp.zeros((flat.size,), dtype=self.dtype, device=be.device)
        lows = flat.views(self.shadow)
        # (a layer's params dict, its key, the shadow's view, the master view), for every tensor of the model
        self._slots = [(layer.params, key, lows[name], flat.params[name])
                       for name, layer, key in model.named_slots()]
        self.loss_scale = LossScale(be, init_scale, growth_interval) if precision == "fp16" else None

    def arrays(self) -> list:
        """The arrays a step writes besides the model's and the optimizer's (a captured step replays on them)."""
        return [self.shadow, *(self.loss_scale.arrays() if self.loss_scale is not None else ())]

    def _bind(self, low: bool) -> None:
        for params, key, shadow, master in self._slots:
            params[key] = shadow if low else master

    @contextmanager
    def low_weights(self) -> Iterator[Any]:
        """A context in which every layer computes on the low-precision weights, cast from the float32 masters on
        entry (the one cast a step) and unbound on exit; it yields the loss scale to pass to the backward pass
        (fp16's device scalar, None for bf16)."""
        self.shadow[...] = self.model.flat.param_buffer
        self._bind(True)
        try:
            yield None if self.loss_scale is None else self.loss_scale.scale
        finally:
            self._bind(False)

    def update(self, optimizer: Any) -> None:
        """After the passes: Adam on the float32 masters; fp16 also unscales the gradient first and moves the
        loss scale after (an overflow skips the step, see the module's text). Device-side only."""
        ls = self.loss_scale
        if ls is None:
            optimizer.step_device()
            return
        xp = self.model.backend.xp
        g = self.model.flat.grad_buffer
        g *= 1.0 / ls.scale  # unscale: what Adam clips and steps on is the true gradient
        first = optimizer.first_skipped
        before = first + 0.0  # a copy: an overflow is not the divergence the loop reports
        optimizer.step_device()
        finite = xp.isfinite(optimizer.last_grad_norm)
        first[...] = xp.where(finite, first, before)
        ls.update(finite)

    def step(self, optimizer: Any, forward_backward: Callable[[Any], Any]) -> Any:
        """Forward and backward in the low precision, then Adam on the float32 masters; -> the 0-d float32 loss.

        ``forward_backward(grad_scale)`` fills the gradient buffer and returns the loss: one batch's passes,
        every micro-batch's (:mod:`llm.training.accumulate`), or a rank's followed by the all-reduce
        (:mod:`llm.training.ranks`), all on the low-precision weights.
        """
        with self.low_weights() as grad_scale:
            loss = forward_backward(grad_scale)
        self.update(optimizer)
        return loss


class PrecisionOfStep:
    """A step's precision (TrainStep and DistributedStep both): ``precision`` (its name), ``mixed_precision`` and
    ``loss_scale``, set once by :meth:`_set_precision`."""

    _precision: MixedPrecision | None = None
    precision: str = "fp32"

    def _set_precision(self, model: Any, precision: Any) -> None:
        self._precision = build_precision(model, precision)
        self.precision = "fp32" if self._precision is None else self._precision.precision

    @property
    def mixed_precision(self) -> MixedPrecision | None:
        """The :class:`MixedPrecision` of fp16 / bf16 steps, or None (fp32)."""
        return self._precision

    @property
    def loss_scale(self) -> LossScale | None:
        """fp16's :class:`LossScale`, or None (fp32, bf16)."""
        return None if self._precision is None else self._precision.loss_scale


def check_growth_interval(precision: Any, growth_interval: int | None) -> None:
    """ConfigError (param="growth_interval") when a growth interval is given for a precision other than fp16."""
    if growth_interval is not None and precision != "fp16":
        raise ConfigError(f"`growth_interval` sets fp16's loss scale, but `precision` is {precision}: use fp16 or "
                          "leave `growth_interval` out", param="growth_interval")


def build_precision(model: Any, precision: Any) -> MixedPrecision | None:
    """None for "fp32" (the plain float32 step), else a :class:`MixedPrecision` for `model`.

    `precision` may also be a MixedPrecision built for `model` (to choose its growth interval or initial scale).
    """
    if isinstance(precision, MixedPrecision):
        if precision.model is not model:
            raise ConfigError("the MixedPrecision given was built for another model: MixedPrecision(model, ...) "
                              "with this model", param="precision")
        return precision
    precision = check_precision(precision)
    return None if PRECISIONS[precision] is None else MixedPrecision(model, precision)
