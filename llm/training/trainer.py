"""Training as a list of phases; a Recipe's two are pre-training on facts, then instruction tuning on dialogues.

The trainer keeps all of its progress in a :class:`TrainState` (phase, epoch, batch, step, the shuffling RNG's
state at the start of the epoch, running loss sums), so a run stopped anywhere at a batch boundary resumes to the
same numbers. Each step sends one batch of token ids to the device and brings nothing back: the losses stay on the
device until the trainer reads them, all at once, every `log_every` steps, at the end of each epoch and before
anything is saved. A step with non-finite gradients changes nothing on the device; the next read raises
:class:`TrainingDivergedError` naming the first such step.

Every step is recorded in ``state.steps`` (loss, learning rate, global gradient norm before clipping, tokens/s; with
``log_grad_norms`` also each tensor's gradient norm at the steps that end a log window). The per-step numbers are
gathered on the device and come back with the losses, in the same single transfer of :meth:`Trainer.read`.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

from llm.data.corpora import Example, encode_corpus, iterate_batches, new_shuffle_state, num_batches, shuffled_order
from llm.infer.evaluation import ExactMatch, evaluate_examples, exact_match  # noqa: F401  (exact_match: re-exported)
from llm.errors import ConfigError, TrainingDivergedError
from llm.training.schedule import PHASES, RECIPES, SCHEDULES, Phase, Recipe, check_fraction, check_schedule, scheduled_lr  # noqa: F401
from llm.data.corpora import split_validation  # noqa: F401  (re-exported)
from llm.training.optim import Adam
from llm.training.step import TrainStep
from llm.training.stopping import StopSignals


@dataclass
class TrainState:
    """Where training stands; JSON-serializable, saved in checkpoints."""

    phase: int = 0  # index into the trainer's phases
    epoch: int = 0  # epochs completed in the current phase
    batch: int = 0  # batches completed in the current epoch
    step: int = 0  # optimizer steps in all
    phase_step: int = 0  # optimizer steps in the current phase (drives the warmup)
    rng_state: dict | None = None  # the shuffling RNG's state at the start of the current epoch
    epoch_loss_sum: float = 0.0  # running sums of the current epoch (loss weighted by counted tokens)
    epoch_tokens: int = 0
    # {"phase", "epoch", "loss", "step"} per completed epoch, and "val_loss", "val_perplexity" where the phase has
    # validation texts
    history: list[dict] = field(default_factory=list)
    # One record per optimizer step: {"step", "phase", "epoch", "loss", "lr", "grad_norm", "tokens_per_s"}, and
    # "grad_norms" ({tensor name: norm}) at the steps that end a log window when the trainer logs them.
    steps: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        return cls(**d)


@dataclass
class PhaseSummary:
    """What one phase did: wall time, throughput and its last epoch's loss."""

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
    """A step taken and not read back yet: its device numbers, and where it stands (for the history and errors)."""

    loss: Any  # 0-d device array
    grad_norm: Any  # 0-d device array: a copy of the optimizer's, which the next step overwrites
    tensor_norms: Any  # (n_tensors,) device array at the steps that end a log window with log_grad_norms, or None
    step: int  # the trainer's step number
    phase: str
    epoch: int
    call: int  # the optimizer's call number (how the device names a skipped step)
    lr: float
    n_tokens: int  # positions that count in the loss
    n_inputs: int  # real input tokens (tokens/s)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C arrived; training stopped at the next batch boundary, so its state is consistent and resumable."""


class Trainer:
    """Runs a list of phases over a model; usable from the library on any backend.

    ``Trainer(model, tokenizer, pretrain_texts, chat_texts, recipe)`` runs the recipe's two phases (what the CLI
    does); ``Trainer(model, tokenizer, phases=[Phase(...), ...], recipe=...)`` runs any list of :class:`Phase`, the
    recipe then giving only the run-wide settings (batch size, clipping, weight decay, reset_optimizer).

    `on_epoch(trainer)` is called after every epoch and `on_phase_end(trainer, summary)` after each phase (the CLI
    saves checkpoints there); `log(event: dict)` receives epoch losses and phase summaries. Losses stay on the device
    until :meth:`read` (every `log_every` steps, at every epoch end, before anything is saved). `cuda_graphs`,
    `tf32`, `pad_multiple` and `workers` go to :class:`llm.TrainStep` (`workers="auto"`: the batch split across
    threads on the NumPy backend, one thread elsewhere). `comm` (a :mod:`backends.distributed` communicator) makes
    the run data-parallel across its ranks.

    Each step is recorded in ``state.steps`` when it is read (see :class:`TrainState`). tokens/s is measured over
    the steps between two reads (the device runs ahead of the host, so only a read tells when the steps are done):
    each step of a window carries that window's rate. ``log_grad_norms=True`` also records every tensor's gradient
    norm (before clipping) at each step that ends a log window: computed on the device right after that step and
    brought back with the same read, so it costs device work but no extra transfer.
    """

    def __init__(self, model: Any, tokenizer: Any, pretrain_texts: list[str] | None = None,
                 chat_texts: list[str] | None = None, recipe: Recipe = RECIPES["default"], seed: int = 0,
                 progress: bool = True,
                 log: Callable[[dict], None] | None = None, on_epoch: Callable[["Trainer"], None] | None = None,
                 on_phase_end: Callable[["Trainer", PhaseSummary], None] | None = None, log_every: int = 25,
                 cuda_graphs: str = "auto", tf32: bool = False, pad_multiple: int = 16,
                 log_grad_norms: bool = False, phases: list[Phase] | None = None, comm: Any = None,
                 workers: int | str = "auto", stop_signals: tuple[int, ...] = (signal.SIGINT,)) -> None:
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
            raise ConfigError(f"log_every must be an integer >= 1, got {log_every!r}")
        self.model, self.tokenizer, self.recipe, self.seed = model, tokenizer, recipe, seed
        self.progress, self.log = progress, log or (lambda event: None)
        self.log_every, self.cuda_graphs, self.tf32, self.pad_multiple = log_every, cuda_graphs, tf32, pad_multiple
        self.comm = comm  # a backends.distributed.Communicator: data-parallel over its ranks (None: one process)
        self.workers = workers  # threads per step on CPU backends (TrainStep's; "auto": what pays off here)
        if comm is not None and workers not in ("auto", 1):
            raise ConfigError(f"workers={workers!r} splits a batch across threads, but a distributed run steps each "
                              "rank on one thread: launch more ranks instead (mpiexec -n N), or leave workers out")
        if not isinstance(log_grad_norms, bool):
            raise ConfigError(f"log_grad_norms must be True or False, got {log_grad_norms!r}")
        self.log_grad_norms = log_grad_norms
        self._pending: list[PendingStep] = []  # steps taken and not read back yet
        self._window_start: float | None = None  # host clock at the first step after a read (tokens/s)
        self.on_epoch, self.on_phase_end = on_epoch, on_phase_end
        max_len = model.config.max_seq_len
        self.custom_phases = phases is not None
        if phases is None:
            phases = recipe.phases(pretrain_texts or [], chat_texts or [], seed)
        elif pretrain_texts or chat_texts:
            raise ConfigError("give the corpora (pretrain_texts, chat_texts) or phases=, not both")
        self.phases: list[Phase] = list(phases)
        if not all(isinstance(p, Phase) for p in self.phases):
            raise ConfigError("phases must be a list of llm.training.Phase")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ConfigError(f"phase names must differ, got {names}")

        def encode(texts: tuple[str, ...], loss_on: str) -> list[Example]:
            return encode_corpus(list(texts), tokenizer, max_len, loss_on) if texts else []

        self.examples: dict[str, list[Example]] = {p.name: encode(p.texts, p.loss_on) for p in self.phases}
        self.val_examples: dict[str, list[Example]] = {p.name: encode(p.val_texts, p.loss_on) for p in self.phases}
        if comm is not None:  # every rank must train the same run: say which part differs, on every rank
            from llm.training.ranks import check_run

            check_run(comm, {"the model configuration": model.config.to_dict(), "the tokenizer": tokenizer.to_dict(),
                             "the recipe": recipe.to_dict(), "the seed": seed,
                             "the corpora": {n: [e.ids for e in ex] for n, ex in self.examples.items()},
                             "the phases": [{k: v for k, v in asdict(p).items() if k not in ("texts", "val_texts")}
                                            for p in self.phases]})
        self.state = TrainState(rng_state=new_shuffle_state(seed))
        self.optimizer = self._new_optimizer()
        if comm is not None:
            self.step_fn.check_in_sync()  # the same weights on every rank (a resumed run: the same checkpoint)
        self.last_loss: float | None = None  # the last loss read back
        self.summaries: list[PhaseSummary] = []
        # Ctrl-C (and whatever else `stop_signals` names) stops at the next batch boundary; stop.request() too
        self.stop = StopSignals(stop_signals)

    @property
    def optimizer(self) -> Adam:
        return self._optimizer

    @optimizer.setter
    def optimizer(self, opt: Adam) -> None:
        # A new optimizer (a fresh run, reset_optimizer) gets its own step function; its device-side call counter
        # starts at 0, and the host counts the same calls, which is how a skipped step is named later.
        self.read()
        self._optimizer = opt
        if self.comm is not None:  # each rank steps on its shard of every global batch; one all-reduce joins them
            from llm.training.ranks import DistributedStep

            self.step_fn = DistributedStep(self.model, opt, self.comm)
        else:
            self.step_fn = TrainStep(self.model, opt, cuda_graphs=self.cuda_graphs, tf32=self.tf32,
                                     pad_multiple=self.pad_multiple, workers=self.workers)
        self._optimizer_calls = 0

    def _new_optimizer(self) -> Adam:
        r = self.recipe
        lr = self.phases[0].lr if self.phases else r.lr_pretrain
        return Adam(self.model, lr=lr, clip_norm=r.clip_norm, weight_decay=r.weight_decay)

    def phase_steps(self, phase: Phase) -> int:
        """The optimizer steps `phase` takes on this trainer's data."""
        return phase.total_steps(len(self.examples[phase.name]), self.recipe.batch_size)

    @property
    def finished(self) -> bool:
        return self.state.phase >= len(self.phases)

    # -- the loop -----------------------------------------------------------------------------------------------------
    def train(self) -> list[PhaseSummary]:
        """Run (or continue) both phases. Ctrl-C stops at the next batch boundary and raises TrainingInterrupted."""
        with self.stop:
            while not self.finished:
                self._run_phase(self.phases[self.state.phase])
            if self._stop_now():  # Ctrl-C during the very last step: still report it
                raise TrainingInterrupted("interrupted after the last step")
        return self.summaries

    def _stop_now(self) -> bool:
        """Whether to stop here. Ranks decide together (a tiny all-reduce): a rank that stopped alone would leave
        the others waiting in the next step's all-reduce."""
        if self.comm is None:
            return self.stop.requested
        if self.comm.any_true(self.stop.requested):
            self.stop.request()  # another rank was stopped: this one stops the same way
            return True
        return False

    def _stop_requested_at_boundary(self) -> bool:
        # One process looks at every batch boundary; ranks only where they read anyway (every log_every steps),
        # so that the agreement costs no extra sync in between.
        if self.comm is None:
            return self.stop.requested
        return self.state.step % self.log_every == 0 and self._stop_now()

    def _run_phase(self, phase: Phase) -> None:
        st, model, r = self.state, self.model, self.recipe
        examples = self.examples[phase.name]
        total = self.phase_steps(phase)
        if total == 0 or not examples:
            why = ("no sequence of its corpus fits the context with a target to learn" if not examples
                   else "0 epochs" if phase.epochs == 0 else "0 steps")
            self._end_phase(PhaseSummary(phase.name, 0, 0, 0, 0.0, None, why))
            return
        bar = self._progress_bar(phase.name, total, st.phase_step)
        t0, steps, tokens = time.perf_counter(), 0, 0
        try:
            while st.phase_step < total:
                order, next_rng_state = shuffled_order(st.rng_state, len(examples))
                for batch in iterate_batches(examples, r.batch_size, self.tokenizer.pad_id, order, start=st.batch):
                    if st.phase_step >= total:  # a budget in steps can end inside an epoch
                        break
                    if self._stop_requested_at_boundary():
                        self.read()  # before anything is saved: a diverged run must raise, not be saved
                        raise TrainingInterrupted(f"interrupted in phase {phase.name}, epoch {st.epoch + 1}")
                    if not self._pending:
                        self._window_start = time.perf_counter()
                    lr = phase.lr_at(st.phase_step, total)
                    loss = self.step_fn(batch.tokens, batch.targets, batch.mask, lr=lr)
                    st.step += 1
                    self._optimizer_calls += 1
                    # The optimizer overwrites last_grad_norm at the next step: keep a device copy (no read).
                    norm = model.backend.xp.asarray(self.optimizer.last_grad_norm, copy=True)
                    per_tensor = (self._tensor_grad_norms() if self.log_grad_norms
                                  and st.step % self.log_every == 0 else None)
                    self._pending.append(PendingStep(loss, norm, per_tensor, st.step, phase.name, st.epoch + 1,
                                                     self._optimizer_calls, lr, batch.n_tokens, batch.n_inputs))
                    st.batch += 1
                    st.phase_step += 1
                    steps += 1
                    tokens += batch.n_inputs
                    if st.step % self.log_every == 0:
                        self.read()
                    if bar is not None:
                        bar.update(1)
                        if not self._pending:  # just read: show the loss (the bar never forces a read itself)
                            bar.set_postfix(loss=f"{self.last_loss:.3f}",
                                            tok_s=f"{tokens / (time.perf_counter() - t0):,.0f}", refresh=False)
                self.read()
                epoch_loss = st.epoch_loss_sum / max(st.epoch_tokens, 1)
                st.epoch += 1
                st.batch = 0
                st.rng_state = next_rng_state
                st.epoch_loss_sum, st.epoch_tokens = 0.0, 0
                record = {"phase": phase.name, "epoch": st.epoch, "loss": epoch_loss, "step": st.step}
                record.update(self._validate(phase))
                st.history.append(record)
                self.log({"event": "epoch", **record})
                if self.on_epoch is not None:
                    self.on_epoch(self)
        finally:
            if bar is not None:
                bar.close()
        model.backend.synchronize()
        seconds = time.perf_counter() - t0
        last = next((h["loss"] for h in reversed(st.history) if h["phase"] == phase.name), None)
        self._end_phase(PhaseSummary(phase.name, st.epoch, steps, tokens, seconds, last))

    def _validate(self, phase: Phase) -> dict[str, float]:
        """The validation loss and perplexity of `phase`'s held-out texts ({} when it has none)."""
        val = self.val_examples[phase.name]
        if not val:
            return {}
        loss, _ = evaluate_examples(self.model, val, self.tokenizer.pad_id, self.recipe.batch_size)
        if not math.isfinite(loss):
            raise self._diverged(f"the validation loss is {loss}", self.state.step, phase.name, self.state.epoch)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 700.0))}

    def _tensor_grad_norms(self) -> Any:
        """Each tensor's gradient norm, (n_tensors,) on the device, in ``model.grads`` order; reads nothing back.

        The optimizer clips a copy, never the gradient buffer, so these are the norms before clipping."""
        xp = self.model.backend.xp
        return xp.stack([xp.sqrt(xp.sum(g * g)) for g in self.model.grads.values()])

    def read(self) -> None:
        """Bring the losses and gradient norms of the steps since the last read to the host (one transfer) and
        check them.

        Adds the losses to the epoch's running sums and records each step in ``state.steps``; raises
        TrainingDivergedError naming the first step whose loss or gradient was not finite (that step changed
        nothing, but the run has diverged and must not be saved).
        """
        if not self._pending:
            return
        xp, opt = self.model.backend.xp, self.optimizer
        pending, self._pending = self._pending, []
        n = len(pending)
        scalars = xp.stack([p.loss for p in pending] + [p.grad_norm for p in pending] + [opt.first_skipped])
        vectors = [p.tensor_norms for p in pending if p.tensor_norms is not None]
        device = xp.concat([scalars, *[xp.astype(v, scalars.dtype) for v in vectors]]) if vectors else scalars
        host = self.model.backend.to_numpy(device)  # the one transfer
        seconds = time.perf_counter() - (self._window_start or time.perf_counter())
        losses, norms, first_skipped = host[:n], host[n:2 * n], int(host[2 * n])
        tensor_norms = host[2 * n + 1:]
        for value, p in zip(losses, pending):
            if not math.isfinite(float(value)):
                raise self._diverged(f"loss is {float(value)}", p.step, p.phase, p.epoch)
            if p.call == first_skipped:
                raise self._diverged("the gradient is not finite", p.step, p.phase, p.epoch)
        st = self.state
        rate = sum(p.n_inputs for p in pending) / seconds if seconds > 0 else 0.0
        names, offset = list(self.model.grads), 0
        for value, norm, p in zip(losses, norms, pending):
            st.epoch_loss_sum += float(value) * p.n_tokens
            st.epoch_tokens += p.n_tokens
            record = {"step": p.step, "phase": p.phase, "epoch": p.epoch, "loss": float(value), "lr": float(p.lr),
                      "grad_norm": float(norm), "tokens_per_s": rate}
            if p.tensor_norms is not None:
                values = tensor_norms[offset:offset + len(names)]
                offset += len(names)
                record["grad_norms"] = {name: float(v) for name, v in zip(names, values)}
            st.steps.append(record)
        self.last_loss = float(losses[-1])

    def _diverged(self, what: str, step_no: int, phase: str, epoch: int) -> TrainingDivergedError:
        base_lr = next(p.lr for p in self.phases if p.name == phase)
        where = (f"{'--lr-pretrain' if phase == 'pretrain' else '--lr-chat'}, now {base_lr:g}"
                 if not self.custom_phases and phase in PHASES else f"phase {phase!r}: lr {base_lr:g}")
        return TrainingDivergedError(f"training diverged: {what} at step {step_no} ({phase} epoch {epoch});"
                                     f" lower the learning rate ({where})")

    def _end_phase(self, summary: PhaseSummary) -> None:
        st = self.state
        self.summaries.append(summary)
        self.log({"event": "phase", **asdict(summary), "tokens_per_second": summary.tokens_per_second})
        st.phase += 1
        st.epoch = st.batch = st.phase_step = 0
        if self.recipe.reset_optimizer and st.phase < len(self.phases):  # fresh moments for every later phase
            self.optimizer = self._new_optimizer()
        if self.on_phase_end is not None:
            self.on_phase_end(self, summary)

    def _progress_bar(self, phase: str, total: int, initial: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=f"{phase:>8}", unit="step", leave=True, dynamic_ncols=True)


def train(model: Any, tokenizer: Any, pretrain_texts: list[str], chat_texts: list[str],
          recipe: Recipe | str = "default", seed: int = 0, progress: bool = True, **overrides: Any) -> Trainer:
    """Train `model` in two phases and return the :class:`Trainer` (its ``state.history`` and ``summaries``).

    `recipe` is a :class:`Recipe` or a name in ``RECIPES``; keyword `overrides` replace recipe fields
    (e.g. ``batch_size=8, chat_epochs=40``).
    """
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
        recipe = RECIPES[recipe]
    if overrides:
        recipe = replace(recipe, **overrides)
    trainer = Trainer(model, tokenizer, pretrain_texts, chat_texts, recipe, seed=seed, progress=progress)
    trainer.train()
    return trainer
