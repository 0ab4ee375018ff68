"""The training loop of ``arraygpt text`` as a library: a character-level model on one long token stream (a book),
nanoGPT's way.

    run = TextRun(model, tokenizer, train_ids, val_ids, TextSettings(steps=2000))
    for _ in range(run.settings.steps):
        run.train_step()                 # random windows, one step; the loss stays on the device
    print(run.read(), run.evaluate())    # mean training loss since the last read; validation loss
    run.save("runs/book")                # resume: TextRun.load("runs/book", "cpu", train_ids, val_ids)

Its one phase is :func:`text_phase` (a :class:`llm.training.Phase`: a step budget, a warmup, a cosine); its batches
are windows at uniform random offsets into the training ids (a seeded NumPy generator), its validation windows are
spread evenly over the validation ids (the same every time). A checkpoint is an ordinary ArrayGPT checkpoint plus
``text_run.safetensors`` beside it: Adam's two moment buffers and, in its metadata, the settings, the step, the
generator's state, Adam's counters, the text's SHA-256, the history and the SHA-256 of the ``model.safetensors``
it goes with (a state that does not match the weights is refused on resume). ``llm/cli_text.py`` is the command
line around it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from llm.errors import CheckpointError, ConfigError, DataError, TrainingDivergedError
from llm.nn.loss import cross_entropy
from llm.nn.model import GPT
from llm.training.optim import Adam
from llm.training.step import TrainStep
from llm.data.corpora import random_windows, spread_offsets, windows_at
from llm.training.trainer import Phase

BETAS = (0.9, 0.99)  # nanoGPT's for character-level models
STATE_FILE = "text_run.safetensors"  # this loop's state, beside the checkpoint's files (see the docstring)
STATE_FORMAT = "arraygpt-text-run"


# -- the run's settings and schedule -------------------------------------------------------------------------------

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

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @property
    def warmup(self) -> int:
        return min(100, self.steps // 10) if self.warmup_steps is None else self.warmup_steps

    def check(self) -> None:
        if self.final_lr > self.lr:
            raise ConfigError(f"--min-lr {self.final_lr:g} is above --lr {self.lr:g}: the cosine decays from --lr "
                              "down to --min-lr; give a smaller --min-lr")
        if self.warmup > self.steps:
            raise ConfigError(f"--warmup-steps {self.warmup} is more than --steps {self.steps}: give fewer warmup "
                              "steps or more steps")

    @classmethod
    def from_dict(cls, d: dict) -> "TextSettings":
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) != names:
            raise CheckpointError(f"{STATE_FILE}: the settings are not those of this version (expected "
                                  f"{sorted(names)}); start a new run")
        return cls(**d)


def text_phase(s: TextSettings) -> Phase:
    """The book trainer's single phase, as the trainer's :class:`llm.training.Phase`: `s.steps` steps, warmup then
    a cosine from `s.lr` to `s.final_lr`. Its batches are random windows of one token stream (drawn by TextRun), so
    it holds no texts."""
    return Phase("text", (), s.lr, steps=s.steps, warmup_steps=s.warmup, schedule="cosine", min_lr=s.final_lr)


def cosine_lr(step: int, s: TextSettings) -> float:
    """The learning rate of step `step` (0-based): linear warmup over ``s.warmup`` steps to ``s.lr``, then a cosine
    from ``s.lr`` down to ``s.final_lr``, reached at the last step (``s.steps - 1``): :func:`text_phase`'s."""
    return text_phase(s).lr_at(step, s.steps)


# -- the data ------------------------------------------------------------------------------------------------------

def read_text(path: str, max_chars: int | None) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(max_chars) if max_chars is not None else f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; give a UTF-8 plain-text file") from None


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
                        "(or a smaller --max-seq-len" + (", or a larger --val-fraction)" if fraction else ")"))
    return train, val


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- the loop ------------------------------------------------------------------------------------------------------

class TextRun:
    """The training loop of ``arraygpt text``, usable from the library (the benchmark and the tests drive it).

    ``run.train_step()`` takes one step on random windows (the loss stays on the device); ``run.read()`` reads the
    losses since the last read (one transfer) and checks them; ``run.evaluate()`` is the validation loss on the
    fixed validation batches; ``run.save(dir)`` / ``TextRun.load(dir, ...)`` checkpoint and resume exactly.
    """

    def __init__(self, model: GPT, tokenizer: Any, train_ids: np.ndarray, val_ids: np.ndarray,
                 settings: TextSettings, cuda_graphs: str = "auto", tf32: bool = False, comm: Any = None,
                 workers: int | str = "auto") -> None:
        settings.check()
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.train_ids, self.val_ids = np.asarray(train_ids, np.int64), np.asarray(val_ids, np.int64)
        self.opt = Adam(model, lr=settings.lr, betas=BETAS, weight_decay=settings.weight_decay,
                        clip_norm=settings.grad_clip)
        if comm is not None:  # data-parallel: every rank draws the same windows and steps on its shard of them
            from llm.training.ranks import DistributedStep

            if workers not in ("auto", 1):
                raise ConfigError(f"workers={workers!r} splits a batch across threads, but a distributed run steps "
                                  "each rank on one thread: launch more ranks instead (mpiexec -n N)")

            self.step_fn = DistributedStep(model, self.opt, comm)
        else:
            self.step_fn = TrainStep(model, self.opt, cuda_graphs=cuda_graphs, tf32=tf32, workers=workers)
        self.comm = comm
        self.rng = np.random.default_rng(settings.seed)
        self.step = 0  # steps taken
        self.history: list[dict] = []  # {"step", "train_loss", "val_loss"} per evaluation
        # {"step", "phase", "epoch", "loss", "lr", "grad_norm", "tokens_per_s"} per step (llm.plotting draws them)
        self.steps: list[dict] = []
        self.train_seconds = 0.0
        self.text_info: dict | None = None  # {"sha256", "chars"} of the text trained on (the CLI's; saved)
        self._pending: list[Any] = []  # device losses not read yet
        self._pending_norms: list[Any] = []  # and the gradient norms (before clipping) of the same steps
        self._pending_lrs: list[float] = []
        self._window_seconds = 0.0  # train_seconds at the first step since the last read
        self._pending_from = 1  # the step number of the first of them
        T = model.config.max_seq_len
        self._eval_offsets = (spread_offsets(len(self.val_ids), settings.eval_batches * settings.batch_size, T)
                              if len(self.val_ids) > T else None)

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return cosine_lr(min(self.step, self.settings.steps - 1), self.settings)

    def train_step(self) -> None:
        s, T = self.settings, self.model.config.max_seq_len
        tokens, targets = random_windows(self.train_ids, s.batch_size, T, self.rng)
        t0 = time.perf_counter()
        lr = cosine_lr(self.step, s)
        seconds_before = self.train_seconds
        loss = self.step_fn(tokens, targets, lr=lr)
        # the optimizer overwrites last_grad_norm at the next step: keep a device copy (no read)
        norm = self.model.backend.xp.asarray(self.opt.last_grad_norm, copy=True)
        self.train_seconds += time.perf_counter() - t0
        if not self._pending:
            self._pending_from = self.step + 1
            self._window_seconds = seconds_before  # tokens/s is measured from here to the next read
        self._pending.append(loss)
        self._pending_norms.append(norm)
        self._pending_lrs.append(lr)
        self.step += 1

    def read(self) -> float | None:
        """The mean training loss of the steps since the last read (None if none); raises TrainingDivergedError
        naming the first step whose loss or gradient was not finite (such a step changed nothing)."""
        if not self._pending:
            return None
        be, opt = self.model.backend, self.opt
        t0 = time.perf_counter()
        n = len(self._pending)
        host = be.to_numpy(be.xp.stack(self._pending + self._pending_norms + [opt.first_skipped]))
        self.train_seconds += time.perf_counter() - t0  # the wait for the device is training time
        losses, norms, first_skipped = host[:n].astype(np.float64), host[n:2 * n], int(host[-1])
        first, lrs = self._pending_from, self._pending_lrs
        self._pending, self._pending_norms, self._pending_lrs = [], [], []
        for i, value in enumerate(losses):
            if not math.isfinite(value):
                raise self._diverged(f"the loss is {value}", first + i)
        if first_skipped >= 0:  # Adam counts its calls from 1, one per step
            raise self._diverged("the gradient is not finite", first_skipped)
        seconds = self.train_seconds - self._window_seconds
        tokens = n * self.settings.batch_size * self.model.config.max_seq_len
        rate = tokens / seconds if seconds > 0 else 0.0
        self.steps.extend({"step": first + i, "phase": "text", "epoch": 1, "loss": float(v), "lr": float(lr),
                           "grad_norm": float(g), "tokens_per_s": rate}
                          for i, (v, g, lr) in enumerate(zip(losses, norms, lrs)))
        return float(losses.mean())

    def _diverged(self, what: str, step: int) -> TrainingDivergedError:
        return TrainingDivergedError(f"training diverged: {what} at step {step}; lower the learning rate "
                                     f"(--lr, now {self.settings.lr:g})")

    def evaluate(self) -> float | None:
        """The mean validation loss over the fixed validation batches (None without a validation split).

        A plain forward (``model.predict``): no gradient, no optimizer state, no batch generator is touched."""
        if self._eval_offsets is None:
            return None
        be, T, B = self.model.backend, self.model.config.max_seq_len, self.settings.batch_size
        losses = []
        for i in range(0, len(self._eval_offsets), B):
            tokens, targets = windows_at(self.val_ids, self._eval_offsets[i:i + B], T)
            loss, _ = cross_entropy(self.model.predict(tokens), be.asarray(targets, dtype=be.xp.int64))
            losses.append(loss)
        return float(be.to_numpy(be.xp.stack(losses)).astype(np.float64).mean())

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        be, opt = self.model.backend, self.opt
        counters = be.to_numpy(be.xp.stack([opt._t, opt._calls, opt.skipped]))
        return {"format": STATE_FORMAT, "version": 1, "settings": asdict(self.settings), "step": self.step,
                "rng": self.rng.bit_generator.state, "text": self.text_info,
                "optimizer": {"t": float(counters[0]), "calls": float(counters[1]), "skipped": float(counters[2])},
                "history": self.history, "steps": self.steps, "train_seconds": self.train_seconds}

    def save(self, path: str | os.PathLike, run_id: str | None = None):
        """Save the model and tokenizer with :func:`llm.checkpoint.save_checkpoint` (atomic), then this loop's state
        beside them in ``text_run.safetensors`` (written to a temporary name, then renamed: atomic too). The state
        records the SHA-256 of the ``model.safetensors`` it belongs to, so that a state left by an earlier save (a
        crash between the two writes) is refused on resume instead of mixed with newer weights."""
        import safetensors.numpy

        from llm.checkpoint import MANIFEST_FILE, MODEL_FILE, save_checkpoint

        if self._pending:
            self.read()  # a diverged run must raise here, not be saved
        path = save_checkpoint(path, self.model, self.tokenizer, run_id=run_id)
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
        state = dict(self.state_dict(), model_sha256=manifest["files"][MODEL_FILE]["sha256"])
        be = self.model.backend
        data = safetensors.numpy.save({"m": np.ascontiguousarray(be.to_numpy(self.opt.m_buffer)),
                                       "v": np.ascontiguousarray(be.to_numpy(self.opt.v_buffer))},
                                      metadata={"format": STATE_FORMAT, "state": json.dumps(state)})
        tmp = path / f".{STATE_FILE}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path / STATE_FILE)
        except OSError as exc:
            raise CheckpointError(f"could not write {path / STATE_FILE}: {exc}; the model was saved but the run "
                                  "cannot be resumed from it: check the disk or choose another --out") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: Any, train_ids: np.ndarray | None = None,
             val_ids: np.ndarray | None = None, steps: int | None = None, **kwargs: Any) -> "TextRun":
        """The run saved in `path`, on `device` (a backend name: the checkpoint's dtype; or a Backend), ready to
        continue. Without `train_ids` / `val_ids` they are left empty (set them before training); `steps` extends
        the budget."""
        run, _ = _load_run(path, device, steps)
        if train_ids is not None:
            run.train_ids = np.asarray(train_ids, np.int64)
        if val_ids is not None:
            run.set_val(val_ids)
        return run

    def set_val(self, val_ids: np.ndarray) -> None:
        self.val_ids = np.asarray(val_ids, np.int64)
        T = self.model.config.max_seq_len
        self._eval_offsets = (spread_offsets(len(self.val_ids), self.settings.eval_batches * self.settings.batch_size,
                                             T) if len(self.val_ids) > T else None)


def _load_run(path: Any, device: Any, steps: int | None, cuda_graphs: str = "auto",
              tf32: bool = False, comm: Any = None, workers: int | str = "auto") -> tuple[TextRun, Any]:
    """(the TextRun saved in `path`, its Checkpoint); every file checked."""
    import safetensors

    from llm.checkpoint import MANIFEST_FILE, MODEL_FILE, load_checkpoint

    ckpt = load_checkpoint(path, device)
    state_path = ckpt.path / STATE_FILE
    if not state_path.exists():
        raise CheckpointError(f"checkpoint {ckpt.path} has no {STATE_FILE}: it was not saved by `arraygpt text`, so it "
                              "can be sampled from or chatted with, not resumed here; start a new run")
    try:
        with safetensors.safe_open(str(state_path), framework="numpy") as f:
            meta = f.metadata() or {}
            moments = {k: f.get_tensor(k) for k in f.keys()}
        state = json.loads(meta.get("state", "null"))
    except (OSError, ValueError, safetensors.SafetensorError) as exc:
        raise CheckpointError(f"cannot read {state_path}: {exc}; start a new run") from None
    if meta.get("format") != STATE_FORMAT or not isinstance(state, dict) or state.get("version") != 1:
        raise CheckpointError(f"{state_path} is not a training state this version reads; start a new run")
    manifest = json.loads((ckpt.path / MANIFEST_FILE).read_text(encoding="utf-8"))
    if state.get("model_sha256") != manifest["files"][MODEL_FILE]["sha256"]:
        raise CheckpointError(f"{state_path} belongs to another save of the model than {ckpt.path / MODEL_FILE} (a "
                              "save was interrupted between the two): the run cannot be resumed exactly; start a "
                              "new run (the model itself loads)")
    settings = TextSettings.from_dict(state["settings"])
    if steps is not None:
        if steps < state["step"]:
            raise ConfigError(f"--steps {steps} is fewer than the {state['step']} steps the checkpoint in {path} has "
                              "already taken; give more steps, or leave --steps out")
        settings.steps = steps
    model = ckpt.model
    run = TextRun(model, ckpt.tokenizer, np.zeros(0, np.int64), np.zeros(0, np.int64), settings,
                  cuda_graphs=cuda_graphs, tf32=tf32, comm=comm, workers=workers)
    n = model.flat.param_buffer.shape[0]
    for key in ("m", "v"):
        arr = moments.get(key)
        if arr is None or arr.shape != (n,) or not np.isfinite(arr).all():
            raise CheckpointError(f"{state_path}: moment {key!r} is missing, of the wrong shape or not finite; "
                                  "start a new run")
        getattr(run.opt, f"{key}_buffer")[...] = model.backend.asarray(arr)
    opt = state["optimizer"]
    run.opt._t[...] = float(opt["t"])
    run.opt._calls[...] = float(opt["calls"])
    run.opt.skipped[...] = float(opt["skipped"])
    run.rng.bit_generator.state = state["rng"]
    run.step, run.history = int(state["step"]), list(state["history"])
    run.steps = list(state.get("steps", []))  # absent in runs saved before per-step records
    run.train_seconds = float(state.get("train_seconds", 0.0))
    run.text_info = state.get("text")
    return run, ckpt
