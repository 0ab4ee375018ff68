"""The one training loop: phases of steps fed by a batch source, with nothing read back between two reads.

    step = build_step(model, Adam(model))                 # TrainStep, or DistributedStep with comm=
    engine = Engine(model, step, source, phases)          # a source: ExampleEpochs or TokenWindows
    engine.run()                                          # every phase, from wherever engine.state stands

Every step sends one batch of token ids to the device and brings nothing back: the loss and the gradient norm stay
on the device in the queue of unread steps until :meth:`Engine.read`, every ``log_every`` steps, at every
evaluation and before anything is saved, brings them all back in one transfer and checks them. A step with
non-finite gradients changes nothing on the device; the next read raises :class:`TrainingDivergedError` naming
it. Each step read is recorded in ``state.steps``. The ranks of a data-parallel run agree on stopping at the steps
where they read anyway. Evaluation comes at the end of every epoch (a source with epochs) or every
``eval_every`` steps and at the end of the phase; the hooks (``on_epoch``, ``on_eval``, ``on_phase_end``) are
where a caller saves. The whole position of the run is :class:`TrainState`, so a run saved at any step boundary
resumes to the same numbers.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from llm import checks
from llm.errors import ConfigError, TrainingDivergedError
from llm.infer.evaluation import perplexity
from llm.training.schedule import Phase
from llm.training.sources import new_shuffle_state
from llm.training.stopping import StopSignals


@dataclass
class TrainState:
    """Where training stands; JSON-serializable, saved in checkpoints."""

    phase: int = 0  # index into the run's phases
    epoch: int = 0  # epochs completed in the current phase (a source without epochs stays at 0)
    batch: int = 0  # batches completed in the current epoch
    step: int = 0  # optimizer steps in all
    phase_step: int = 0  # optimizer steps in the current phase (drives the schedule)
    rng_state: dict | None = None  # the source's generator: at the start of the epoch, or now (windows)
    epoch_loss_sum: float = 0.0  # loss weighted by counted tokens since the epoch (or the evaluation) began
    epoch_tokens: int = 0
    # one record per evaluation: {"phase", "epoch", "loss", "step"}, and "val_loss", "val_perplexity" where there
    # is a validation set
    history: list[dict] = field(default_factory=list)
    # One record per optimizer step: {"step", "phase", "epoch", "loss", "lr", "grad_norm", "tokens_per_s"}, and
    # "grad_norms" ({tensor name: norm}) at the steps that end a log window when the engine logs them.
    steps: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0  # host time spent in steps and in reading them back

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        return cls(**d)


@dataclass
class PhaseSummary:
    """What one phase did: wall time, throughput and its last evaluation's training loss."""

    phase: str
    epochs: int
    steps: int
    tokens: int
    seconds: float
    final_loss: float | None
    note: str = ""  # why a phase took no steps

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class PendingStep:
    """A step taken and not read back yet: its device numbers, and where it stands (for the records and errors)."""

    loss: Any  # 0-d device array
    grad_norm: Any  # 0-d device array: a copy of the optimizer's, which the next step overwrites
    tensor_norms: Any  # (n_tensors,) device array at the steps that end a log window with log_grad_norms, or None
    step: int  # the run's step number
    phase: str
    epoch: int
    call: int  # the optimizer's call number (how the device names a skipped step)
    lr: float
    n_tokens: int  # positions that count in the loss
    n_inputs: int  # real input tokens (tokens/s)


class TrainingInterrupted(KeyboardInterrupt):
    """A stop was asked for (Ctrl-C, SIGTERM); training stopped at a step boundary, consistent and resumable."""


def build_step(model: Any, optimizer: Any, *, comm: Any = None, workers: int | str = "auto",
               cuda_graphs: str = "auto", tf32: bool = False, pad_multiple: int = 16, micro_batch: int | None = None,
               recompute: bool = False, precision: Any = "fp32", growth_interval: int | None = None) -> Any:
    """The step a run takes: :class:`~llm.training.step.TrainStep`, or with `comm` (a communicator of
    :mod:`backends.comm`) a :class:`~llm.training.ranks.DistributedStep` over its ranks, one thread each.
    `micro_batch`, `recompute` and `precision` go to either (gradient accumulation, activation recomputation,
    mixed precision). `growth_interval` (fp16 only, None: the default 2000): clean steps before the loss scale
    doubles."""
    from llm.training.precision import MixedPrecision, check_growth_interval

    check_growth_interval(precision, growth_interval)
    if growth_interval is not None:
        precision = MixedPrecision(model, "fp16", growth_interval=growth_interval)
    if comm is not None:
        if workers not in ("auto", 1):
            raise ConfigError(f"workers={workers!r} splits a batch across threads, but a distributed run steps each "
                              "rank on one thread: launch more ranks instead, or leave workers out", param="workers")
        from llm.training.ranks import DistributedStep

        return DistributedStep(model, optimizer, comm, micro_batch=micro_batch, recompute=recompute,
                               precision=precision)
    from llm.training.step import TrainStep

    return TrainStep(model, optimizer, cuda_graphs=cuda_graphs, tf32=tf32, pad_multiple=pad_multiple,
                     workers=workers, micro_batch=micro_batch, recompute=recompute, precision=precision)


class Engine:
    """The one training loop over `phases`, taking `step` (a built step) on batches from `source`.

    `reset_between_phases` gives every phase after the first fresh optimizer moments. `lr_params` names, per phase, the library parameter its learning rate came from (a divergence error names it);
    `eval_every` (steps) evaluates inside a phase instead of at epoch ends. Hooks, each None or a callable taking
    the engine: ``on_epoch`` after every epoch's record, ``on_eval`` after every ``eval_every`` evaluation,
    ``on_phase_end(engine, summary)`` after each phase; `log(event)` receives every record as a dict with an
    ``"event"`` key ("steps", "epoch", "eval", "phase").
    """

    def __init__(self, model: Any, step: Any, source: Any, phases: list[Phase], *, seed: int | None = 0,
                 log_every: int = 25, eval_every: int | None = None, lr_params: dict[str, str] | None = None,
                 log: Callable[[dict], None] | None = None, progress: bool = False, log_grad_norms: bool = False,
                 stop_signals: tuple[int, ...] = (signal.SIGINT,), reset_between_phases: bool = False) -> None:
        log_every = checks.positive_int(log_every, "log_every")
        eval_every = checks.positive_int(eval_every, "eval_every", allow_none=True)
        log_grad_norms = checks.boolean(log_grad_norms, "log_grad_norms")
        if step.model is not model:
            raise ConfigError("the step given trains another model", param="step")
        self.model, self.step_fn, self.source, self.phases = model, step, source, list(phases)
        self.comm = getattr(step, "comm", None)
        self.log_every, self.eval_every, self.lr_params = log_every, eval_every, dict(lr_params or {})
        self.log, self.progress, self.log_grad_norms = log or (lambda event: None), progress, log_grad_norms
        self.reset_between_phases = reset_between_phases  # fresh Adam moments for every phase after the first
        self.on_epoch: Callable[[Any], Any] | None = None
        self.on_eval: Callable[[Any], Any] | None = None
        self.on_phase_end: Callable[[Any, PhaseSummary], Any] | None = None
        self.state = TrainState(rng_state=new_shuffle_state(seed))
        self.summaries: list[PhaseSummary] = []
        self.last_loss: float | None = None  # the last loss read back
        self.stop = StopSignals(stop_signals)  # Ctrl-C (and what else it names) stops at the next step boundary
        self._pending: list[PendingStep] = []  # steps taken and not read back yet
        self._window_seconds = 0.0  # state.train_seconds at the first step after a read (tokens/s)
        self.optimizer_calls = 0  # host count of the optimizer's calls since its counters were last set

    @property
    def optimizer(self) -> Any:
        return self.step_fn.optimizer

    @property
    def finished(self) -> bool:
        return self.state.phase >= len(self.phases)

    def phase_steps(self, phase: Phase) -> int:
        """The optimizer steps `phase` takes on this engine's data."""
        size = self.source.size(phase.name)
        if phase.steps is not None:
            return phase.steps if size else 0
        return phase.epochs * self.source.batches_per_epoch(phase.name)

    def reset_optimizer(self) -> None:
        """Fresh moments and counters (the same buffers, so a captured step stays valid)."""
        self.read()
        opt = self.optimizer
        opt.m_buffer[...] = 0
        opt.v_buffer[...] = 0
        opt.load_counters({"t": 0, "calls": 0, "skipped": 0})
        self.optimizer_calls = 0

    # -- the loop -----------------------------------------------------------------------------------------------------
    def run(self) -> list[PhaseSummary]:
        """Run (or continue) every phase; a stop request ends at the next step boundary with TrainingInterrupted."""
        with self.stop:
            while not self.finished:
                self._run_phase(self.phases[self.state.phase])
            if self.stop_now():  # a stop during the very last step: still report it
                raise TrainingInterrupted("interrupted after the last step")
        return self.summaries

    def stop_now(self) -> bool:
        """Whether to stop here. Ranks decide together (a tiny all-reduce): a rank that stopped alone would leave
        the others waiting in the next step's all-reduce."""
        if self.comm is None:
            return self.stop.requested
        if self.comm.any_true(self.stop.requested):
            self.stop.request()  # another rank was stopped: this one stops the same way
            return True
        return False

    def _stop_at_boundary(self) -> bool:
        # One process looks at every step boundary; ranks only where they read anyway (every log_every steps),
        # so that the agreement costs no extra sync in between.
        if self.comm is None:
            return self.stop.requested
        return self.state.step % self.log_every == 0 and self.stop_now()

    def _run_phase(self, phase: Phase) -> None:
        st, total = self.state, self.phase_steps(phase)
        if total == 0:
            why = ("no sequence of its corpus fits the context with a target to learn"
                   if not self.source.size(phase.name) else "0 epochs" if phase.epochs == 0 else "0 steps")
            self._end_phase(PhaseSummary(phase.name, 0, 0, 0, 0.0, None, why))
            return
        bar = self._progress_bar(phase.name, total, st.phase_step)
        t0, steps, tokens = time.perf_counter(), 0, 0
        try:
            while st.phase_step < total:
                batches, next_rng_state = self.source.epoch(phase.name, st)
                while st.phase_step < total:
                    if self.source.has_epochs and st.batch >= self.source.batches_per_epoch(phase.name):
                        break  # the epoch is done: it ends (and is recorded) before any stop
                    if self._stop_at_boundary():
                        self.read()  # before anything is saved: a diverged run must raise, not be saved
                        raise TrainingInterrupted(f"interrupted in phase {phase.name} at step {st.step}")
                    batch = next(batches)  # drawn only when it will be used: a window source's state follows
                    self.train_step(phase, total, batch)
                    steps, tokens = steps + 1, tokens + batch.n_inputs
                    self._after_step(phase, total, bar, tokens / max(time.perf_counter() - t0, 1e-9))
                if self.source.has_epochs:
                    self._end_epoch(phase, next_rng_state)
        finally:
            if bar is not None:
                bar.close()
        self.model.backend.synchronize()
        last = next((h["loss"] for h in reversed(st.history) if h["phase"] == phase.name), None)
        self._end_phase(PhaseSummary(phase.name, st.epoch, steps, tokens, time.perf_counter() - t0, last))

    def _after_step(self, phase: Phase, total: int, bar: Any, speed: float) -> None:
        st = self.state
        if st.step % self.log_every == 0:
            mean = self.read()
            self.log({"event": "steps", "phase": phase.name, "step": st.step, "phase_step": st.phase_step,
                      "total": total, "loss": mean, "lr": st.steps[-1]["lr"],
                      "tokens_per_s": st.steps[-1]["tokens_per_s"]})
        every = self.eval_every is not None and st.phase_step % self.eval_every == 0
        if every or (st.phase_step == total and (self.eval_every is not None or not self.source.has_epochs)):
            self._evaluate(phase)  # a source without epochs is evaluated at the end of its phase at least
        if bar is not None:
            bar.update(1)
            if not self._pending and self.last_loss is not None:  # just read: show the loss (never forces a read)
                bar.set_postfix(loss=f"{self.last_loss:.3f}", tok_s=f"{speed:,.0f}", refresh=False)

    def train_step(self, phase: Phase, total: int, batch: Any) -> None:
        """One optimizer step of `phase` (of `total` steps) on a host batch; reads nothing back."""
        st = self.state
        if not self._pending:
            self._window_seconds = st.train_seconds
        lr = phase.lr_at(st.phase_step, total)
        t0 = time.perf_counter()
        loss = self.step_fn(batch.tokens, batch.targets, batch.mask, lr=lr)
        # The optimizer overwrites last_grad_norm at the next step: keep a device copy (no read).
        norm = self.model.backend.xp.asarray(self.optimizer.last_grad_norm, copy=True)
        st.train_seconds += time.perf_counter() - t0
        st.step += 1
        self.optimizer_calls += 1
        per_tensor = self._tensor_grad_norms() if self.log_grad_norms and st.step % self.log_every == 0 else None
        self._pending.append(PendingStep(loss, norm, per_tensor, st.step, phase.name, st.epoch + 1,
                                         self.optimizer_calls, lr, batch.n_tokens, batch.n_inputs))
        st.batch += 1
        st.phase_step += 1

    def _end_epoch(self, phase: Phase, next_rng_state: dict) -> None:
        st = self.state
        self.read()
        epoch_loss = st.epoch_loss_sum / max(st.epoch_tokens, 1)
        st.epoch += 1
        st.batch = 0
        st.rng_state = next_rng_state
        st.epoch_loss_sum, st.epoch_tokens = 0.0, 0
        self._record("epoch", {"phase": phase.name, "epoch": st.epoch, "loss": epoch_loss, "step": st.step}, phase)
        if self.on_epoch is not None:
            self.on_epoch(self)

    def _evaluate(self, phase: Phase) -> None:
        st = self.state
        self.read()
        loss = st.epoch_loss_sum / st.epoch_tokens if st.epoch_tokens else None
        st.epoch_loss_sum, st.epoch_tokens = 0.0, 0
        self._record("eval", {"phase": phase.name, "epoch": st.epoch + 1, "loss": loss, "step": st.step}, phase)
        if self.on_eval is not None:
            self.on_eval(self)

    def _record(self, event: str, record: dict, phase: Phase) -> None:
        record.update(self.validate(phase))
        self.state.history.append(record)
        self.log({"event": event, **record, "total": self.phase_steps(phase)})

    def validate(self, phase: Phase) -> dict[str, float]:
        """``{"val_loss", "val_perplexity"}`` on `phase`'s validation set ({} without one); a forward pass only."""
        loss = self.source.validation_loss(self.model, phase.name)
        if loss is None:
            return {}
        if not math.isfinite(loss):
            raise self._diverged(f"the validation loss is {loss}", self.state.step, phase.name, self.state.epoch + 1)
        return {"val_loss": loss, "val_perplexity": perplexity(loss)}

    def _tensor_grad_norms(self) -> Any:
        """Each tensor's gradient norm, (n_tensors,) on the device, in ``model.grads`` order; reads nothing back.

        The optimizer clips a copy, never the gradient buffer, so these are the norms before clipping."""
        xp = self.model.backend.xp
        return xp.stack([xp.sqrt(xp.sum(g * g)) for g in self.model.grads.values()])

    # -- the one read -------------------------------------------------------------------------------------------------
    def read(self) -> float | None:
        """Bring the losses and gradient norms of the steps since the last read to the host (one transfer), check
        them and record them; -> their mean loss (None when no step was pending).

        Raises TrainingDivergedError naming the first step whose loss or gradient was not finite (that step changed
        nothing, but the run has diverged and must not be saved).
        """
        if not self._pending:
            return None
        xp, st = self.model.backend.xp, self.state
        pending, self._pending = self._pending, []
        n = len(pending)
        scalars = xp.stack([p.loss for p in pending] + [p.grad_norm for p in pending]
                           + [self.optimizer.first_skipped])
        vectors = [p.tensor_norms for p in pending if p.tensor_norms is not None]
        device = xp.concat([scalars, *[xp.astype(v, scalars.dtype) for v in vectors]]) if vectors else scalars
        t0 = time.perf_counter()
        host = self.model.backend.to_numpy(device).astype("float64")  # the one transfer
        st.train_seconds += time.perf_counter() - t0  # the wait for the device is training time
        losses, norms, first_skipped = host[:n], host[n:2 * n], int(host[2 * n])
        for value, p in zip(losses, pending):
            if not math.isfinite(float(value)):
                raise self._diverged(f"the loss is {float(value)}", p.step, p.phase, p.epoch)
            if p.call == first_skipped:
                raise self._diverged("the gradient is not finite", p.step, p.phase, p.epoch)
        seconds = st.train_seconds - self._window_seconds
        rate = sum(p.n_inputs for p in pending) / seconds if seconds > 0 else 0.0
        self._record_steps(pending, losses, norms, host[2 * n + 1:], rate)
        self.last_loss = float(losses[-1])
        return float(losses.mean())

    def _record_steps(self, pending: list[PendingStep], losses: Any, norms: Any, tensor_norms: Any,
                      rate: float) -> None:
        st, names, offset = self.state, list(self.model.grads), 0
        for value, norm, p in zip(losses, norms, pending):
            st.epoch_loss_sum += float(value) * p.n_tokens
            st.epoch_tokens += p.n_tokens
            record = {"step": p.step, "phase": p.phase, "epoch": p.epoch, "loss": float(value), "lr": float(p.lr),
                      "grad_norm": float(norm), "tokens_per_s": rate}
            if p.tensor_norms is not None:
                record["grad_norms"] = {name: float(v) for name, v in
                                        zip(names, tensor_norms[offset:offset + len(names)])}
                offset += len(names)
            st.steps.append(record)

    def _diverged(self, what: str, step_no: int, phase: str, epoch: int) -> TrainingDivergedError:
        base_lr = next(p.lr for p in self.phases if p.name == phase)
        param = self.lr_params.get(phase)
        where = f"{param}, now {base_lr:g}" if param else f"phase {phase!r}: lr {base_lr:g}"
        return TrainingDivergedError(f"training diverged: {what} at step {step_no} ({phase} epoch {epoch}); lower "
                                     f"the learning rate ({where})", param=param)

    def _end_phase(self, summary: PhaseSummary) -> None:
        st = self.state
        self.summaries.append(summary)
        self.log({"event": "phase", **asdict(summary), "tokens_per_second": summary.tokens_per_second})
        st.phase += 1
        st.epoch = st.batch = st.phase_step = 0
        if self.reset_between_phases and st.phase < len(self.phases):
            self.reset_optimizer()
        if self.on_phase_end is not None:
            self.on_phase_end(self, summary)

    def _progress_bar(self, phase: str, total: int, initial: int) -> Any:
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=f"{phase:>8}", unit="step", leave=True, dynamic_ncols=True)
