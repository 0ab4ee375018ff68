"""Phases and schedules: what each phase of training trains on, for how long, at which learning rate.

A :class:`Phase` is data: a name, its texts, a budget (epochs or optimizer steps), a learning rate with an optional
linear warmup and a cosine decay, and which tokens the loss counts. A :class:`Recipe` is the run-wide settings of the
facts-then-dialogues run and builds its two phases; :func:`scheduled_lr` is the one learning-rate schedule every
trainer uses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from llm import checks
from llm.data.corpora import split_validation
from llm.training.sources import num_batches
from llm.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how the two-phase run goes (facts, then dialogues), apart from the model and the data.

    A phase's budget is a number of optimizer steps (``pretrain_steps``, ``chat_steps``) or, when its ``*_epochs``
    is given, a number of epochs. A budget in steps makes a small corpus train as long as a large one: it gets more
    epochs (see README, "A budget in steps"). :meth:`phases` turns the recipe into the list of :class:`Phase` the
    :class:`Trainer` runs.
    """

    batch_size: int = 16
    pretrain_epochs: int | None = None  # when given, the phase runs this many epochs (and its *_steps is ignored)
    chat_epochs: int | None = None
    lr_pretrain: float = 5e-3
    lr_chat: float = 5e-3
    warmup_steps: int = 40  # linear warmup at the start of each phase
    loss_on: str = "answer"  # phase 2: "answer" (only the assistant's tokens count) or "all"
    clip_norm: float = 5.0
    weight_decay: float = 0.0
    reset_optimizer: bool = False  # fresh Adam moments for phase 2
    pretrain_steps: int = 120  # the budget of each phase in optimizer steps (the built-in corpus: 15 and 20 epochs)
    chat_steps: int = 160
    schedule: str = "constant"  # after the warmup: "constant" or "cosine" (down to min_lr at the phase's last step)
    min_lr: float = 0.0
    val_fraction: float = 0.0  # held out of each corpus (chosen with the run's seed) for the validation loss

    def __post_init__(self) -> None:
        # NumPy scalars are numbers too; what is stored is a plain int / float (to_dict() must be JSON).
        object.__setattr__(self, "batch_size", checks.positive_int(self.batch_size, "batch_size"))
        for name in ("warmup_steps", "pretrain_steps", "chat_steps", "pretrain_epochs", "chat_epochs"):
            value = checks.nonnegative_int(getattr(self, name), name, allow_none=name.endswith("epochs"))
            object.__setattr__(self, name, value)
        for name in ("lr_pretrain", "lr_chat", "clip_norm"):
            object.__setattr__(self, name, checks.positive_number(getattr(self, name), name))
        for name in ("weight_decay", "min_lr"):
            object.__setattr__(self, name, checks.nonnegative_number(getattr(self, name), name))
        checks.one_of(self.loss_on, ("answer", "all"), "loss_on")
        check_schedule(self.schedule, self.min_lr, min(self.lr_pretrain, self.lr_chat))
        object.__setattr__(self, "val_fraction", check_fraction(self.val_fraction))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def adam(self, model: Any) -> Any:
        """The optimizer this recipe trains `model` with: Adam with its clipping and weight decay."""
        from llm.training.optim import Adam

        return Adam(model, lr=self.lr_pretrain, clip_norm=self.clip_norm, weight_decay=self.weight_decay)

    def phases(self, pretrain_texts: list[str], chat_texts: list[str], seed: int = 0) -> list["Phase"]:
        """The two phases of this recipe over these corpora; with ``val_fraction`` each corpus loses a part, chosen
        with `seed`, to its phase's validation texts."""
        out = []
        for name, texts, epochs, steps, lr, loss_on in (
                ("pretrain", pretrain_texts, self.pretrain_epochs, self.pretrain_steps, self.lr_pretrain, "all"),
                ("chat", chat_texts, self.chat_epochs, self.chat_steps, self.lr_chat, self.loss_on)):
            train_texts, val_texts = split_validation(list(texts), self.val_fraction, seed)
            out.append(Phase(name, tuple(train_texts), lr, epochs=epochs, steps=None if epochs is not None else steps,
                             loss_on=loss_on, warmup_steps=self.warmup_steps, schedule=self.schedule,
                             min_lr=self.min_lr, val_texts=tuple(val_texts)))
        return out


def check_schedule(schedule: str, min_lr: float, lr: float) -> None:
    """Raise ConfigError unless `schedule` is one of :data:`SCHEDULES` whose cosine can decay from `lr` to `min_lr`."""
    checks.one_of(schedule, SCHEDULES, "schedule")
    if schedule == "cosine" and min_lr > lr:
        raise ConfigError(f"min_lr {min_lr:g} is above the learning rate {lr:g}: the cosine decays from the learning "
                          "rate down to min_lr; give a smaller min_lr", param="min_lr")


def check_fraction(fraction: float) -> float:
    """`fraction` as a float, if it is a share of a corpus to hold out, in [0, 1)."""
    return checks.fraction(fraction, "val_fraction")


SCHEDULES = ("constant", "cosine")


def scheduled_lr(lr: float, step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "constant",
                 min_lr: float = 0.0) -> float:
    """The learning rate of step `step` (0-based) of `total_steps`: a linear warmup over `warmup_steps` up to `lr`,
    then constant, or (``"cosine"``) a half cosine from `lr` down to `min_lr`, reached at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    span = total_steps - 1 - warmup_steps
    ratio = min(1.0, (step - warmup_steps) / span) if span > 0 else 0.0  # one step after the warmup: at lr
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


@dataclass(frozen=True)
class Phase:
    """One phase of training: its texts, its budget (``epochs``, or ``steps`` when epochs is None), its learning
    rate schedule and which tokens the loss counts (``"all"``, or ``"answer"`` for dialogues). ``val_texts`` give
    a validation loss at the end of every epoch."""

    name: str
    texts: tuple[str, ...]
    lr: float
    epochs: int | None = None
    steps: int | None = None
    loss_on: str = "all"
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr: float = 0.0
    val_texts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a phase needs a name, got {self.name!r}")
        if (self.epochs is None) == (self.steps is None):
            raise ConfigError(f"phase {self.name!r}: give its budget as epochs or as steps (one of the two)")
        try:  # plain ints and floats stored (NumPy scalars are numbers too)
            for what in ("epochs", "steps", "warmup_steps"):
                value = checks.nonnegative_int(getattr(self, what), what, allow_none=what != "warmup_steps")
                object.__setattr__(self, what, value)
            object.__setattr__(self, "lr", checks.positive_number(self.lr, "lr"))
            object.__setattr__(self, "min_lr", checks.nonnegative_number(self.min_lr, "min_lr"))
            checks.one_of(self.loss_on, ("answer", "all"), "loss_on")
            check_schedule(self.schedule, self.min_lr, self.lr)
        except ConfigError as exc:  # which phase, then the rule and the parameter
            raise ConfigError(f"phase {self.name!r}: {exc}", param=exc.param) from None

    def total_steps(self, n_examples: int, batch_size: int) -> int:
        """Optimizer steps the phase takes over `n_examples` examples."""
        if self.steps is not None:
            return self.steps if n_examples else 0
        return self.epochs * num_batches(n_examples, batch_size)

    def lr_at(self, phase_step: int, total_steps: int) -> float:
        return scheduled_lr(self.lr, phase_step, total_steps, self.warmup_steps, self.schedule, self.min_lr)


RECIPES: dict[str, Recipe] = {
    # Batched, chosen by measurement (see README): answer-only loss and a warmed-up higher lr.
    "default": Recipe(),
    # RustGPT's schedule exactly: one sequence per step, 100 + 100 epochs, lr 5e-4 then 1e-4, every token counts.
    "seed": Recipe(batch_size=1, pretrain_epochs=100, chat_epochs=100, lr_pretrain=5e-4, lr_chat=1e-4,
                   warmup_steps=0, loss_on="all"),
}

PHASES = ("pretrain", "chat")  # the phases a Recipe builds (and the CLI and checkpoints know)
