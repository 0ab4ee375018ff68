"""Adam with global L2 gradient-norm clipping, optional decoupled weight decay, and a device-side finite guard.

The update runs over the model's flat buffers (see :mod:`llm.params`): a few whole-buffer operations a step instead
of a dozen per tensor. Nothing is read back to the host: the gradient norm, the learning rate, the step count and
the record of skipped steps are 0-d device arrays, so a step can be queued, captured and replayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

from llm import checks
from llm.errors import ConfigError
from llm.nn.layers.reductions import constant

from backends.fused import fast_path
from llm.nn.params import FlatParameters


def _check_lr(lr: Any, allow_zero: bool = False) -> float:
    # allow_zero: a schedule's value (a cosine may end at 0); a base learning rate must be positive
    return (checks.nonnegative_number if allow_zero else checks.positive_number)(lr, "lr")


class AdamCoefficients(NamedTuple):
    """One step's coefficients, 0-d device arrays from :meth:`Adam.begin_step`, for :meth:`Adam.update_slice`.

    ok: 1.0 for a step taken, 0.0 for one skipped (a non-finite gradient norm); scale: what the gradient is
    multiplied by (the clipping, times ok); step_size and eps_hat: the learning rate and eps with the bias
    corrections folded in; keep_v, keep_m: what the moments are multiplied by (the betas, or 1 when skipped);
    keep_p: the decoupled weight decay's factor on the matrices, or None without weight decay.
    """

    ok: Any
    scale: Any
    step_size: Any
    eps_hat: Any
    keep_v: Any
    keep_m: Any
    keep_p: Any


@dataclass(frozen=True, eq=False)
class AdamState:
    """Everything an :class:`Adam` step reads and writes besides the parameters: the moment buffers and every
    device scalar. The arrays are updated in place and never rebound (a captured step replays on them).

    m, v: the first and second moments, flat buffers like the parameters'; t: the steps taken (Adam's bias
    correction counts these); calls: the steps asked for, taken or skipped; lr: the learning rate of the next step;
    skipped: how many steps had a non-finite gradient norm; first_skipped: the call number (1-based) of the first
    such step, -1 if none; last_grad_norm: the global gradient norm before clipping, at the last step.
    """

    m: Any
    v: Any
    t: Any
    calls: Any
    lr: Any
    skipped: Any
    first_skipped: Any
    last_grad_norm: Any

    def arrays(self) -> tuple:
        """Every array, in a fixed order: m, v, t, calls, lr, skipped, first_skipped, last_grad_norm."""
        return (self.m, self.v, self.t, self.calls, self.lr, self.skipped, self.first_skipped, self.last_grad_norm)


COUNTERS = ("t", "calls", "skipped")  # Adam.counters(): the integer state a resumed run must continue from


class Adam:
    """Adam (bias-corrected) over a model's flat parameter buffer, updated in place on the parameters' device.

    ``Adam(model)`` (or ``Adam(model.flat)``). Before each step the gradients are scaled so their global L2 norm is
    at most ``clip_norm`` (None disables). ``weight_decay`` is decoupled (AdamW) and applies to matrices only (the
    buffer's leading ``n_decay`` values), not biases or norm gains. A step whose gradient norm is not finite
    changes nothing (parameters, moments, step count) and is recorded in ``skipped`` / ``first_skipped``.

    ``state`` (an :class:`AdamState`) holds the moments and every device scalar; ``counters()`` /
    ``load_counters()`` read and write its integer counters, ``state_dict()`` / ``load_state_dict()`` the moments.
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, clip_norm: float | None = 5.0) -> None:
        flat = getattr(params, "flat", params)
        if not isinstance(flat, FlatParameters):
            raise ConfigError("Adam takes the model (or model.flat), whose parameters live in one flat buffer; "
                              f"got {type(params).__name__}")
        lr = _check_lr(lr)
        betas = (checks.fraction(betas[0], "betas"), checks.fraction(betas[1], "betas"))
        eps = checks.positive_number(eps, "eps")
        clip_norm = checks.positive_number(clip_norm, "clip_norm", allow_none=True)
        weight_decay = checks.nonnegative_number(weight_decay, "weight_decay")
        self.flat = flat
        self.params = flat.params
        self.lr, self.betas, self.eps = lr, betas, eps
        self.weight_decay, self.clip_norm = weight_decay, clip_norm
        be = flat.backend
        scalar = lambda value: be.xp.full((), value, dtype=be.dtype, device=be.device)  # noqa: E731
        self.state = AdamState(m=flat.new_buffer(), v=flat.new_buffer(), t=scalar(0.0), calls=scalar(0.0),
                               lr=scalar(lr), skipped=scalar(0.0), first_skipped=scalar(-1.0),
                               last_grad_norm=scalar(0.0))
        self.m, self.v = flat.views(self.state.m), flat.views(self.state.v)  # the moments by parameter name

    # The state's arrays under the names other modules have always read (the same objects, never copies).
    m_buffer = property(lambda self: self.state.m, doc="The first moments' flat buffer.")
    v_buffer = property(lambda self: self.state.v, doc="The second moments' flat buffer.")
    _t = property(lambda self: self.state.t, doc="The steps taken (a device scalar).")
    _calls = property(lambda self: self.state.calls, doc="The steps asked for (a device scalar).")
    _lr = property(lambda self: self.state.lr, doc="The learning rate of the next step (a device scalar).")
    skipped = property(lambda self: self.state.skipped, doc="The steps skipped (a device scalar).")
    first_skipped = property(lambda self: self.state.first_skipped,
                             doc="The call number of the first step skipped, -1 if none (a device scalar).")
    last_grad_norm = property(lambda self: self.state.last_grad_norm,
                              doc="The global gradient norm before clipping, at the last step (a device scalar).")

    @property
    def t(self) -> int:
        """Adam's step count (reads a device scalar: not for use inside a step)."""
        return int(float(self.state.t))

    def counters(self) -> dict[str, int]:
        """The counters ``{"t", "calls", "skipped"}`` as host ints, read back in one device -> host transfer."""
        s, be = self.state, self.flat.backend
        host = be.to_numpy(be.xp.stack([s.t, s.calls, s.skipped]))
        return {name: int(host[i]) for i, name in enumerate(COUNTERS)}

    def load_counters(self, counters: Mapping[str, int]) -> None:
        """Write saved counters (as :meth:`counters` gives them) into the device scalars in place; the record of
        the last step starts afresh (``first_skipped`` -1, ``last_grad_norm`` 0). ConfigError for a missing or
        non-integer or negative counter."""
        missing = [name for name in COUNTERS if name not in counters]
        if missing:
            raise ConfigError(f"Adam counters lack {', '.join(missing)}: give {', '.join(COUNTERS)}")
        for name in COUNTERS:
            checks.nonnegative_int(counters[name], name)
        s = self.state
        for name in COUNTERS:
            getattr(s, name)[...] = float(int(counters[name]))
        s.first_skipped[...] = -1.0
        s.last_grad_norm[...] = 0.0

    def set_lr(self, lr: float) -> None:
        """Write the learning rate of the next step into its device scalar (no device -> host transfer).

        0 is accepted (a schedule's value: a cosine ending at min lr 0); a negative or non-finite lr is not."""
        self.state.lr[...] = _check_lr(lr, allow_zero=True)  # a schedule may reach 0 (a cosine to min lr 0)

    def step(self, grads: Any = None, lr: float | None = None) -> None:
        """Clip the flat gradient by global norm, then update every parameter in place.

        `lr` (a host number) is written into the device learning rate first; None keeps the last one. `grads` is
        accepted for compatibility and must be None or the model's own gradients (the flat buffer is used).
        Reads nothing back: a non-finite gradient norm turns this step into a no-op, recorded on the device.
        """
        if grads is not None and grads is not self.flat.grads and (
                not isinstance(grads, dict) or any(grads.get(k) is not g for k, g in self.flat.grads.items())):
            raise ConfigError("Adam.step updates from the model's flat gradient buffer; pass no grads")
        if lr is not None:
            self.set_lr(_check_lr(lr))  # a learning rate given by hand must be positive; a schedule may reach 0
        self.step_device()

    def step_device(self) -> None:
        """The update itself: whole-buffer array operations only, every changing number a device scalar."""
        xp = self.flat.backend.xp
        g = self.flat.grad_buffer
        norm = xp.sqrt(g @ g)  # 0-d
        fused = fast_path("adam_update", g)
        if fused is not None:  # everything below as one kernel (backends.fused), from the same device scalars
            self._record(norm)
            b1, b2 = self.betas
            s = self.state
            fused(self.flat.param_buffer, g, s.m, s.v, norm, s.lr, s.t,
                  clip=self.clip_norm, b1=b1, b2=b2, eps=self.eps, weight_decay=self.weight_decay,
                  n_decay=self.flat.n_decay)
            return
        self.update_slice(self.begin_step(norm), 0, self.flat.size)

    def _record(self, norm: Any) -> Any:
        # the step's bookkeeping on the device: -> ok, 1.0 for a step taken, 0.0 for one skipped
        xp = self.flat.backend.xp
        s = self.state
        s.last_grad_norm[...] = norm
        ok = xp.astype(xp.isfinite(norm), norm.dtype)  # 1.0, or 0.0 for a step to skip
        calls, skipped, t = s.calls, s.skipped, s.t  # in place: the state's arrays are never rebound
        calls += 1.0
        skipped += 1.0 - ok
        s.first_skipped[...] = xp.where((s.first_skipped < 0) & (ok == 0), s.calls, s.first_skipped)
        t += ok
        return ok

    def begin_step(self, norm: Any) -> AdamCoefficients:
        """Record a step whose global gradient norm (a 0-d device array) is `norm`; -> the step's coefficients.

        Then :meth:`update_slice` applies the update to any partition of the buffers, in any order or at the same
        time from several threads (llm.parallel does); ``step_device`` is the two on the whole buffer.
        """
        xp = self.flat.backend.xp
        b1, b2 = self.betas
        g = self.flat.grad_buffer
        ok = self._record(norm)
        # Only operators and `where` on device arrays here: xp.clip of array-api-compat masks with a boolean index
        # on NumPy and CuPy (a data-dependent shape, so a device sync) and builds arrays from Python floats.
        scale = ok
        if self.clip_norm is not None:
            raw = self.clip_norm / (norm + 1e-6)
            scale = ok * xp.where(raw < 1.0, raw, constant(xp, "one", (), 1.0, g))
        state = self.state
        t = state.t + (1.0 - ok)  # the bias correction of a skipped step (t may be 0): any finite value will do
        bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
        # lr * m_hat / (sqrt(v_hat) + eps) == (lr * sqrt(bc2) / bc1) * m / (sqrt(v) + eps * sqrt(bc2)):
        # the same update with the bias corrections folded into two scalars.
        step_size = state.lr * ok * xp.sqrt(bc2) / bc1
        eps_hat = self.eps * xp.sqrt(bc2)
        keep_v = 1.0 - (1.0 - b2) * ok  # b2 for a real step, 1 (unchanged) for a skipped one
        keep_m = 1.0 - (1.0 - b1) * ok
        keep_p = 1.0 - state.lr * ok * self.weight_decay if self.weight_decay else None
        return AdamCoefficients(ok, scale, step_size, eps_hat, keep_v, keep_m, keep_p)

    def update_slice(self, coeffs: AdamCoefficients, lo: int, hi: int) -> None:
        """Update values ``[lo, hi)`` of the parameters and moments with the coefficients of :meth:`begin_step`."""
        xp = self.flat.backend.xp
        b1, b2 = self.betas
        c = coeffs
        whole = lo == 0 and hi == self.flat.size
        g, p, m, v = ((b if whole else b[lo:hi]) for b in (self.flat.grad_buffer, self.flat.param_buffer,
                                                            self.state.m, self.state.v))
        # A skipped step must not let NaN into the moments: zero the gradient where the norm is not finite.
        g = xp.where(c.ok > 0, g * c.scale, constant(xp, "zero", (), 0.0, g))
        # In place where it can be: at GPT-2's size every temporary here is a 650 MB buffer.
        v *= c.keep_v
        sq = g * g
        sq *= 1.0 - b2
        v += sq
        del sq
        m *= c.keep_m
        g *= 1.0 - b1
        m += g
        del g
        if c.keep_p is not None and lo < self.flat.n_decay:  # decoupled weight decay: matrices only
            decay = p[:min(hi, self.flat.n_decay) - lo]
            decay *= c.keep_p
        update = xp.sqrt(v)
        update += c.eps_hat
        update = m / update
        update *= c.step_size
        p -= update

    def state_dict(self) -> dict[str, Any]:
        """Moments (named device views) and the step count, for checkpoints."""
        return {"t": self.t, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy saved moments into this optimizer's buffers in place (they may come from another backend)."""
        for key in ("m", "v"):
            for name, arr in getattr(self, key).items():
                arr[...] = state[key][name]
        self.state.t[...] = float(int(state["t"]))
