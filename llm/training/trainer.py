"""The facts-then-dialogues trainer: a Recipe's two phases (or any list of Phase) over shuffled epochs of examples.

A thin configuration of the one loop (:class:`llm.training.loop.Engine`): the texts of each phase are encoded into
examples, fed by :class:`llm.training.sources.ExampleEpochs`, evaluated at the end of every epoch. Everything the
loop promises holds here: nothing is read back between two reads, a diverged step raises
:class:`~llm.errors.TrainingDivergedError` at the next read, and the run's whole position is ``state``
(:class:`~llm.training.loop.TrainState`), so a run saved at any step boundary resumes to the same numbers.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, replace
from typing import Any, Callable

from llm.data.corpora import Example, encode_corpus
from llm.errors import ConfigError, SaveRefusedError
from llm.training.loop import Engine, PhaseSummary, build_step
from llm.training.schedule import PHASES, RECIPES, Phase, Recipe
from llm.training.sources import ExampleEpochs


class Trainer:
    """Runs a list of phases over a model; usable from the library on any backend.

    ``Trainer(model, tokenizer, pretrain_texts, chat_texts, recipe)`` runs the recipe's two phases (what the CLI
    does); ``Trainer(model, tokenizer, phases=[Phase(...), ...], recipe=...)`` runs any list of :class:`Phase`, the
    recipe then giving only the run-wide settings (batch size, clipping, weight decay, reset_optimizer).

    `step` is the built step to train with (see :func:`llm.training.loop.build_step`: threads, CUDA graphs, ranks);
    by default ``build_step(model, recipe.adam(model))``. `on_epoch(trainer)` is called after every epoch and
    `on_phase_end(trainer, summary)` after each phase (the CLI saves checkpoints there); `log(event: dict)` receives
    the loop's records. Losses stay on the device until :meth:`read` (every `log_every` steps, at every epoch end,
    before anything is saved); each step is recorded in ``state.steps`` when it is read. ``log_grad_norms=True``
    also records every tensor's gradient norm (before clipping) at each step that ends a log window, brought back
    with the same read.
    """

    def __init__(self, model: Any, tokenizer: Any, pretrain_texts: list[str] | None = None,
                 chat_texts: list[str] | None = None, recipe: Recipe = RECIPES["default"], seed: int = 0,
                 progress: bool = True, log: Callable[[dict], None] | None = None,
                 on_epoch: Callable[["Trainer"], None] | None = None,
                 on_phase_end: Callable[["Trainer", PhaseSummary], None] | None = None, log_every: int = 25,
                 log_grad_norms: bool = False, phases: list[Phase] | None = None, step: Any = None,
                 stop_signals: tuple[int, ...] = (signal.SIGINT,)) -> None:
        self.model, self.tokenizer, self.recipe, self.seed = model, tokenizer, recipe, seed
        self.on_epoch, self.on_phase_end = on_epoch, on_phase_end
        self.custom_phases = phases is not None
        self.phases = self._phases(phases, pretrain_texts, chat_texts)
        max_len = model.config.max_seq_len

        def encode(texts: tuple[str, ...], loss_on: str) -> list[Example]:
            return encode_corpus(list(texts), tokenizer, max_len, loss_on) if texts else []

        self.examples: dict[str, list[Example]] = {p.name: encode(p.texts, p.loss_on) for p in self.phases}
        self.val_examples: dict[str, list[Example]] = {p.name: encode(p.val_texts, p.loss_on) for p in self.phases}
        step = build_step(model, recipe.adam(model)) if step is None else step
        if getattr(step, "comm", None) is not None:
            self._check_ranks(step.comm)
        source = ExampleEpochs(self.examples, self.val_examples, recipe.batch_size, tokenizer.pad_id)
        lr_params = {} if self.custom_phases else {"pretrain": "lr_pretrain", "chat": "lr_chat"}
        self.engine = Engine(model, step, source, self.phases, seed=seed, log_every=log_every, lr_params=lr_params,
                             log=log, progress=progress, log_grad_norms=log_grad_norms, stop_signals=stop_signals,
                             reset_between_phases=recipe.reset_optimizer)
        self.engine.on_epoch = lambda engine: self.on_epoch(self) if self.on_epoch is not None else None
        self.engine.on_phase_end = lambda engine, summary: (self.on_phase_end(self, summary)
                                                            if self.on_phase_end is not None else None)
        if self.comm is not None:
            step.check_in_sync()  # the same weights on every rank (a resumed run: the same checkpoint)

    def _phases(self, phases: list[Phase] | None, pretrain_texts: Any, chat_texts: Any) -> list[Phase]:
        if phases is None:
            phases = self.recipe.phases(pretrain_texts or [], chat_texts or [], self.seed)
        elif pretrain_texts or chat_texts:
            raise ConfigError("give the corpora (pretrain_texts, chat_texts) or phases=, not both", param="phases")
        phases = list(phases)
        if not all(isinstance(p, Phase) for p in phases):
            raise ConfigError("phases must be a list of llm.training.Phase", param="phases")
        names = [p.name for p in phases]
        if len(set(names)) != len(names):
            raise ConfigError(f"phase names must differ, got {names}", param="phases")
        return phases

    def _check_ranks(self, comm: Any) -> None:
        """Every rank must train the same run: say which part differs, on every rank."""
        from llm.training.ranks import check_run

        check_run(comm, {"the model configuration": self.model.config.to_dict(),
                         "the tokenizer": self.tokenizer.to_dict(), "the recipe": self.recipe.to_dict(),
                         "the seed": self.seed,
                         "the corpora": {n: [e.ids for e in ex] for n, ex in self.examples.items()},
                         "the phases": [{k: v for k, v in asdict(p).items() if k not in ("texts", "val_texts")}
                                        for p in self.phases]})

    # -- the loop's state, seen through the trainer ------------------------------------------------------------------
    # What the loop keeps, seen through the trainer (the engine owns it all).
    state = property(lambda self: self.engine.state, lambda self, st: setattr(self.engine, "state", st),
                     doc="Where training stands (a TrainState); set it to continue a saved run.")
    step_fn = property(lambda self: self.engine.step_fn, doc="The built step the run takes.")
    optimizer = property(lambda self: self.engine.optimizer, doc="The step's optimizer (Adam).")
    comm = property(lambda self: self.engine.comm, doc="The communicator of a data-parallel run, or None.")
    stop = property(lambda self: self.engine.stop, doc="The stop requests (StopSignals): stop.request() stops.")
    summaries = property(lambda self: self.engine.summaries, doc="A PhaseSummary per phase run.")
    last_loss = property(lambda self: self.engine.last_loss, doc="The last loss read back.")
    finished = property(lambda self: self.engine.finished, doc="Whether every phase has run.")

    def phase_steps(self, phase: Phase) -> int:
        """The optimizer steps `phase` takes on this trainer's data."""
        return self.engine.phase_steps(phase)

    def read(self) -> float | None:
        """Bring the unread steps back (one transfer) and check them: :meth:`llm.training.loop.Engine.read`."""
        return self.engine.read()

    def train(self) -> list[PhaseSummary]:
        """Run (or continue) every phase. Ctrl-C stops at the next batch boundary and raises TrainingInterrupted."""
        return self.engine.run()

    def checkpoint_record(self) -> dict[str, Any]:
        """What a checkpoint's ``training.json`` holds of this run (:mod:`llm.checkpoint.state`); reads the pending
        steps first, so a diverged run raises instead of being saved."""
        from llm.checkpoint.state import corpus_fingerprints

        if self.custom_phases:
            raise SaveRefusedError("refusing to save the training state of a Trainer built from phases=: checkpoints "
                                  "resume the two phases of a Recipe; save the model alone (trainer=None)")
        self.read()
        return {"trainer": "recipe", "recipe": self.recipe.to_dict(), "seed": self.seed,
                "state": self.state.to_dict(), "corpora": corpus_fingerprints(self.examples, PHASES)}


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
