"""The book trainer: a character-level model on one long token stream (a book), nanoGPT's way, as a thin
configuration of the one loop (:class:`llm.training.loop.Engine`).

    run = TextRun(model, tokenizer, train_ids, val_ids, TextSettings(steps=2000), eval_every=250)
    run.run()                            # every step, with an evaluation every 250 steps and at the end
    run.save("runs/book")                # resume: TextRun.load("runs/book", "cpu", train_ids, val_ids)

    run.train_step(); run.read(); run.evaluate()     # or step by step: one step, one read, one validation loss

Its one phase is :func:`text_phase` (a step budget, a warmup, a cosine); its batches are windows at uniform random
offsets into the training ids, drawn by :class:`llm.training.sources.TokenWindows` (a seeded NumPy generator whose
state is part of the run's position), its validation windows are spread evenly over the validation ids (the same
every time). A checkpoint is the ordinary format (:mod:`llm.checkpoint.state`): one atomic save of the model and
the whole training state, checksummed in the manifest. ``llm/cli/cmd_text.py`` is the command line around it.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import numpy as np

from llm import checks
from llm.errors import CheckpointError, ConfigError, DataError
from llm.training.loop import Engine, build_step
from llm.training.schedule import Phase
from llm.training.sources import TokenWindows, token_stream

BETAS = (0.9, 0.99)  # nanoGPT's for character-level models
PHASE = "text"  # the name of the book trainer's one phase


@dataclass
class TextSettings:
    """What defines a run (saved in its checkpoint). ``min_lr`` / ``warmup_steps`` None: the defaults."""

    steps: int = 300
    batch_size: int = 12
    lr: float = 1e-3
    min_lr: float | None = None
    warmup_steps: int | None = None
    val_fraction: float = 0.1
    eval_batches: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    max_chars: int | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "seed"):
            checks.nonnegative_int(getattr(self, name), name)
        for name in ("batch_size", "eval_batches"):
            checks.positive_int(getattr(self, name), name)
        checks.nonnegative_int(self.warmup_steps, "warmup_steps", allow_none=True)
        checks.positive_int(self.max_chars, "max_chars", allow_none=True)
        for name in ("lr", "grad_clip"):
            checks.positive_number(getattr(self, name), name)
        checks.nonnegative_number(self.min_lr, "min_lr", allow_none=True)
        checks.nonnegative_number(self.weight_decay, "weight_decay")
        checks.fraction(self.val_fraction, "val_fraction")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @property
    def warmup(self) -> int:
        return min(100, self.steps // 10) if self.warmup_steps is None else self.warmup_steps

    def check(self) -> None:
        """The rules between fields: the cosine ends below where it starts, the warmup fits in the run."""
        if self.final_lr > self.lr:
            raise ConfigError(f"`min_lr` {self.final_lr:g} is above `lr` {self.lr:g}: the cosine decays from `lr` "
                              "down to `min_lr`; give a smaller `min_lr`", param="min_lr")
        if self.warmup > self.steps:
            raise ConfigError(f"`warmup_steps` {self.warmup} is more than `steps` {self.steps}: give fewer warmup "
                              "steps or more steps", param="warmup_steps")

    def adam(self, model: Any) -> Any:
        """The optimizer of this run: AdamW with nanoGPT's character-level betas and global-norm clipping."""
        from llm.training.optim import Adam

        return Adam(model, lr=self.lr, betas=BETAS, weight_decay=self.weight_decay, clip_norm=self.grad_clip)

    @classmethod
    def from_dict(cls, d: dict) -> "TextSettings":
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) != names:
            raise CheckpointError(f"the settings are not those of this version (expected {sorted(names)}); start a "
                                  "new run")
        return cls(**d)


def text_phase(s: TextSettings) -> Phase:
    """The book trainer's single phase: `s.steps` steps, warmup then a cosine from `s.lr` to `s.final_lr`. Its
    batches are random windows of one token stream (drawn by the source), so it holds no texts."""
    return Phase(PHASE, (), s.lr, steps=s.steps, warmup_steps=s.warmup, schedule="cosine", min_lr=s.final_lr)


def cosine_lr(step: int, s: TextSettings) -> float:
    """The learning rate of step `step` (0-based): :func:`text_phase`'s schedule."""
    return text_phase(s).lr_at(step, s.steps)


# -- the data ------------------------------------------------------------------------------------------------------

def read_text(path: str, max_chars: int | None) -> str:
    """The UTF-8 text of the file at `path` (its first `max_chars` characters when given), or DataError."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(max_chars) if max_chars is not None else f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; give a UTF-8 plain-text file", param="text") from None


def split_ids(ids: np.ndarray, fraction: float, seq_len: int, path: str = "the text") -> tuple[np.ndarray, np.ndarray]:
    """The first (1 - fraction) of the token ids for training, the last `fraction` for validation; each must hold
    at least one window of seq_len + 1 tokens (the validation part may be empty when fraction is 0)."""
    n_val = int(len(ids) * fraction)
    train, val = ids[:len(ids) - n_val], ids[len(ids) - n_val:]
    window = seq_len + 1
    if len(train) <= window or (fraction > 0 and len(val) < window):
        need = math.ceil(window / fraction) if fraction > 0 else window + 1
        need = max(need, math.ceil((window + 1) / (1 - fraction)))
        raise DataError(f"{path} has {len(ids)} characters: too few for windows of {window} in a "
                        f"{1 - fraction:.0%} training and {fraction:.0%} validation split; it needs at least {need} "
                        "(or a smaller `max_seq_len`" + (", or a larger `val_fraction`)" if fraction else ")"),
                        param="max_seq_len")
    return train, val


def encode_text(tokenizer: Any, text: str, path: str = "the text") -> np.ndarray:
    """The ids of `text` under a pretrained model's `tokenizer`; DataError when a character-level tokenizer lacks
    some of its characters (they would all become one unknown token), naming a few and where the first is."""
    vocab = set(tokenizer.vocab) if getattr(tokenizer, "_TYPE", None) == "char" else None
    if vocab is not None:
        missing = sorted({ch for ch in set(text) if ch not in vocab})
        if missing:
            first = min(text.index(ch) for ch in missing)
            shown = ", ".join(repr(ch) for ch in missing[:8]) + (", ..." if len(missing) > 8 else "")
            raise DataError(f"{path} has {len(missing)} character{'s' if len(missing) > 1 else ''} the model's "
                            f"character vocabulary lacks ({shown}; the first at character {first:,}): remove or "
                            "replace them, or train a new model on it", param="text")
    return np.asarray(tokenizer.encode(text), np.int64)


def text_sha256(text: str) -> str:
    """The SHA-256 of `text` as UTF-8, in hex: how a checkpoint recognizes its book."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- the trainer ---------------------------------------------------------------------------------------------------

class TextRun:
    """The book trainer, usable from the library (the CLI, the benchmark and the tests drive it).

    ``run.run()`` trains to ``settings.steps``, evaluating every `eval_every` steps and at the end (the engine's
    hooks ``run.engine.on_eval`` are where the CLI saves); ``run.train_step()`` takes one step on random windows
    (the loss stays on the device); ``run.read()`` reads the losses since the last read (one transfer) and checks
    them; ``run.evaluate()`` is the validation loss; ``run.save(dir)`` / ``TextRun.load(dir, ...)`` checkpoint and
    resume exactly. `step` is a built step (:func:`llm.training.loop.build_step`); by default one on
    ``settings.adam(model)``.
    """

    def __init__(self, model: Any, tokenizer: Any, train_ids: np.ndarray, val_ids: np.ndarray,
                 settings: TextSettings, *, step: Any = None, eval_every: int | None = None, log_every: int = 25,
                 log: Callable[[dict], None] | None = None,
                 stop_signals: tuple[int, ...] = (signal.SIGINT,)) -> None:
        settings.check()
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        step = build_step(model, settings.adam(model)) if step is None else step
        self.val_tokens_per_byte: float | None = None  # val tokens / val UTF-8 bytes: bits per byte (settable)
        if log is not None:
            log = self._with_bpb(log)
        self.source = TokenWindows(train_ids, val_ids, settings.batch_size, model.config.max_seq_len, settings.seed,
                                   settings.eval_batches * settings.batch_size)
        self.engine = Engine(model, step, self.source, [text_phase(settings)], seed=settings.seed,
                             log_every=log_every, eval_every=eval_every, lr_params={PHASE: "lr"}, log=log,
                             stop_signals=stop_signals)
        # what the run trains on (saved; the CLI's): a text's {"sha256", "chars"}, a dataset's {"dataset", "name",
        # "tokens"} (:attr:`llm.data.token_dataset.TokenDataset.info`)
        self.text_info: dict | None = None

    # -- the run's state, seen through the trainer (the engine and the source own it) --------------------------------
    state = property(lambda self: self.engine.state, doc="Where the run stands (a TrainState).")
    step = property(lambda self: self.engine.state.step, doc="Steps taken.")
    steps = property(lambda self: self.engine.state.steps, doc="One record per step read back (llm.plotting).")
    history = property(lambda self: self.engine.state.history, doc="One record per evaluation.")
    train_seconds = property(lambda self: self.engine.state.train_seconds, doc="Host time in steps and reads.")
    optimizer = opt = property(lambda self: self.engine.optimizer, doc="The step's optimizer (AdamW).")
    rng = property(lambda self: self.source.rng, doc="The window generator (NumPy), part of the run's state.")
    val_ids = property(lambda self: self.source.val_ids, doc="The validation part's token ids.")

    @property
    def train_ids(self) -> np.ndarray:
        """The training part's token ids (settable: a resumed run gets them from the text)."""
        return self.source.train_ids

    @train_ids.setter
    def train_ids(self, ids: np.ndarray) -> None:
        self.source.train_ids = token_stream(ids)

    def set_val(self, val_ids: np.ndarray) -> None:
        self.source.set_val(val_ids)

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return cosine_lr(min(self.step, self.settings.steps - 1), self.settings)

    # -- training ------------------------------------------------------------------------------------------------------
    def run(self) -> Any:
        """Train to ``settings.steps`` (from wherever the run stands); see :meth:`llm.training.loop.Engine.run`."""
        st = self.engine.state
        self.engine.phases = [text_phase(self.settings)]
        if st.phase >= 1 and st.step < self.settings.steps:  # a finished run given more steps: the phase goes on
            st.phase, st.phase_step = 0, st.step
        return self.engine.run()

    def train_step(self) -> None:
        """One step on random windows; the loss stays on the device until :meth:`read`."""
        self.engine.train_step(text_phase(self.settings), self.settings.steps, self.source.draw(self.engine.state))

    def read(self) -> float | None:
        """The mean training loss of the steps since the last read (None if none); raises TrainingDivergedError
        naming the first step whose loss or gradient was not finite (such a step changed nothing)."""
        return self.engine.read()

    def evaluate(self) -> float | None:
        """The mean validation loss over the fixed validation windows (None without a validation split)."""
        return self.source.validation_loss(self.model, PHASE)

    def bits_per_byte(self, loss: float | None) -> float | None:
        """A validation loss (nats per token) in bits per byte of the validation text, the measure two tokenizers
        share (None without a loss or without :attr:`val_tokens_per_byte`)."""
        if loss is None or self.val_tokens_per_byte is None:
            return None
        return loss * self.val_tokens_per_byte / math.log(2)

    def _with_bpb(self, log: Callable[[dict], None]) -> Callable[[dict], None]:
        """`log`, with ``val_bpb`` added to each evaluation's record that has a validation loss."""
        def log_bpb(event: dict) -> None:
            bpb = self.bits_per_byte(event.get("val_loss"))
            log(event if bpb is None else {**event, "val_bpb": bpb})

        return log_bpb

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def checkpoint_record(self) -> dict[str, Any]:
        """What a checkpoint's ``training.json`` holds of this run (:mod:`llm.checkpoint.state`); reads the pending
        steps first, so a diverged run raises instead of being saved."""
        self.read()
        return {"trainer": "text", "settings": asdict(self.settings), "seed": self.settings.seed,
                "state": self.engine.state.to_dict(), "text": self.text_info}

    def save(self, path: str | os.PathLike, run_id: str | None = None) -> Any:
        """The model, the tokenizer and this run's whole state in one atomic save (:func:`llm.checkpoint.save_checkpoint`)."""
        from llm.checkpoint import save_checkpoint

        return save_checkpoint(path, self.model, self.tokenizer, self, run_id=run_id)

    @classmethod
    def load(cls, path: str | os.PathLike, device: Any, train_ids: np.ndarray | None = None,
             val_ids: np.ndarray | None = None, steps: int | None = None, **kwargs: Any) -> "TextRun":
        """The run saved in `path`, on `device` (a backend name: the checkpoint's dtype; or a Backend), ready to
        continue. Without `train_ids` / `val_ids` they are left empty (set them before training); `steps` extends
        the budget; `kwargs` go to TextRun (step, eval_every, log_every, log)."""
        from llm.checkpoint import load_checkpoint

        return cls.from_checkpoint(load_checkpoint(path, device), train_ids, val_ids, steps, **kwargs)

    @classmethod
    def from_checkpoint(cls, ckpt: Any, train_ids: np.ndarray | None = None, val_ids: np.ndarray | None = None,
                        steps: int | None = None, **kwargs: Any) -> "TextRun":
        """:meth:`load` from a loaded :class:`~llm.checkpoint.Checkpoint`."""
        saved = ckpt.training
        if saved is None or saved.trainer != "text":
            raise CheckpointError(f"checkpoint {ckpt.path} has no book-trainer state: it was not saved by `arraygpt "
                                  "text`, so it can be sampled from or chatted with, not resumed here; start a new run")
        settings = saved.settings
        if steps is not None:
            if steps < saved.state.step:
                raise ConfigError(f"`steps` {steps} is fewer than the {saved.state.step} steps the checkpoint in "
                                  f"{ckpt.path} has already taken; give more steps", param="steps")
            settings.steps = steps
        empty = np.zeros(0, np.int64)
        run = cls(ckpt.model, ckpt.tokenizer, empty if train_ids is None else train_ids,
                  empty if val_ids is None else val_ids, settings, **kwargs)
        saved.load_into(run.engine)
        run.source.rng.bit_generator.state = saved.state.rng_state
        run.text_info = saved.fingerprints
        return run
