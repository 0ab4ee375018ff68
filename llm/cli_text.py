"""Train a character-level ArrayGPT on a book (any UTF-8 plain-text file), then sample from it: ``arraygpt text``.

    python examples/train_text.py --text ../shared/data/tinyshakespeare.txt --steps 2000 --out runs/shakespeare
    python examples/train_text.py --text ../shared/data/tinyshakespeare.txt --resume runs/shakespeare --steps 3000
    python examples/train_text.py --text notes.txt --device torch --steps 1000 --sample-chars 400

nanoGPT's way, on the whole file (``--max-chars N`` keeps only its first N characters):

* every character is a token; the last ``--val-fraction`` of the text (default 0.1) is held out for validation;
* each step trains on ``--batch-size`` windows of ``--max-seq-len + 1`` characters at uniform random offsets into
  the training part (a NumPy generator seeded by ``--seed``), for ``--steps`` steps;
* the learning rate warms up linearly over ``--warmup-steps`` (default min(100, steps / 10)), then decays along a
  cosine from ``--lr`` to ``--min-lr`` (default lr / 10) at the last step; Adam with betas (0.9, 0.99), decoupled
  ``--weight-decay`` on matrices and global-norm clipping at ``--grad-clip``;
* every ``--log-every`` steps the training loss is read back (the mean since the last read); every
  ``--eval-every`` steps and at the end the validation loss and perplexity are measured on ``--eval-batches``
  fixed batches (windows spread evenly over the validation part: the same ones each time), with a forward pass
  that keeps nothing (the training state is untouched);
* the sample at the end continues the text's first 16 characters for ``--sample-chars`` characters, any number:
  the context window slides past ``--max-seq-len``; ``<pad>`` and ``<unk>`` are never sampled.

Checkpoints: ``--out DIR`` saves at every evaluation, at the end, and on Ctrl-C or SIGTERM (as ``arraygpt train``
does: a lock beside DIR, another run's checkpoint replaced only with ``--overwrite``). The directory is an ordinary
ArrayGPT checkpoint written by ``llm.checkpoint.save_checkpoint`` (``llm.load(DIR, backend)``, ``arraygpt chat
--checkpoint DIR``), plus one file of this loop's own beside its files, ``text_run.safetensors``: Adam's two moment
buffers ("m", "v", flat, in the model's dtype) and, in its metadata, the settings, the step reached, the batch
generator's state, Adam's step counters, the text's SHA-256, the evaluations so far and the SHA-256 of the
``model.safetensors`` it goes with (written after the checkpoint, atomically by a rename; a state that does not match
the weights, left by a save interrupted between the two writes, is refused on resume).

``--resume DIR`` continues that run exactly where it stopped (the same batches, learning rates and updates as an
uninterrupted run: tests/test_train_text_cli.py checks it bit for bit in float64). It keeps the checkpoint's model
size, dtype and training settings: a flag given with another value is refused, except ``--steps``, which may
extend the budget (the cosine then spans the new total). The text must be the same (its SHA-256 is checked).
Without ``--out``, a resumed run saves back into DIR.

Every flag, the file, the device, ``--out`` and ``--resume`` are checked before the first step; exit codes are
those of ``llm.cli`` (2: bad input, 1: failed or diverged, 130: Ctrl-C, 143: SIGTERM).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import secrets
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

# Absolute imports: examples/train_text.py runs this module's code as its own (see llm.cli.run_script).
from backends import get_backend  # noqa: E402
from backends.capture import set_tf32  # noqa: E402
from llm import GPT, Adam, CharTokenizer, GPTConfig, TrainStep, cross_entropy  # noqa: E402
from llm.cli import (EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, nonnegative_float, nonnegative_int,  # noqa: E402
                     flag_name, number, one_line_warnings, positive_float, positive_int, run_cli, WORKERS_HELP,
                     workers_flag)
from llm.data import random_windows, spread_offsets, windows_at  # noqa: E402
from llm.errors import CheckpointError, ConfigError, DataError, TrainingDivergedError  # noqa: E402
from llm.generation import check_sampling, generate_stream  # noqa: E402
from llm.training import Phase  # noqa: E402

SAMPLE_PROMPT_CHARS = 16  # the sample continues the text's first 16 characters
MEMORY_HINT = "choose a smaller model (--d-model, --d-ff, --n-layers, --max-seq-len) or a smaller --batch-size"
BETAS = (0.9, 0.99)  # nanoGPT's for character-level models
STATE_FILE = "text_run.safetensors"  # this loop's state, beside the checkpoint's files (see the docstring)
STATE_FORMAT = "arraygpt-text-run"

# The flags that define a run: saved in the checkpoint and kept by --resume (defaults here, not in argparse, so
# that a flag given explicitly can be told from a default).
MODEL_DEFAULTS = {"max_seq_len": 64, "d_model": 128, "n_heads": 4, "n_layers": 4, "d_ff": 512}
RUN_DEFAULTS = {"batch_size": 12, "steps": 300, "lr": 1e-3, "min_lr": None, "warmup_steps": None,
                "val_fraction": 0.1, "eval_batches": 20, "weight_decay": 0.1, "grad_clip": 1.0, "seed": 0,
                "max_chars": None, "dtype": "float32"}


def val_fraction(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    value = number(text)
    if not (0 <= value < 1):
        raise argparse.ArgumentTypeError(f"must lie in [0, 1) (0: no validation split), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a character-level ArrayGPT on a plain-text file (a book), "
                                            "then sample from it.")
    p.add_argument("--text", required=True, metavar="FILE", help="a UTF-8 plain-text file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "float64"], help="float32 (default) or float64")
    m = p.add_argument_group("model size (a resumed run keeps its checkpoint's)")
    m.add_argument("--max-seq-len", type=positive_int, help="context length (default 64)")
    m.add_argument("--d-model", type=positive_int, help="width (default 128)")
    m.add_argument("--n-heads", type=positive_int, help="attention heads (default 4)")
    m.add_argument("--n-layers", type=positive_int, help="transformer blocks (default 4)")
    m.add_argument("--d-ff", type=positive_int, help="feed-forward width (default 512)")
    m.add_argument("--pos-encoding", choices=["learned", "sinusoidal", "rope"],
                   help="positions: a learned table (default), a fixed sinusoidal one, or rotary (rope)")
    t = p.add_argument_group("training (a resumed run keeps its checkpoint's, except --steps)")
    t.add_argument("--batch-size", type=positive_int, help="windows per step (default 12)")
    t.add_argument("--steps", type=positive_int, help="optimizer steps in all (default 300)")
    t.add_argument("--lr", type=positive_float, help="peak learning rate (default 1e-3)")
    t.add_argument("--min-lr", type=nonnegative_float, help="learning rate at the last step (default lr / 10)")
    t.add_argument("--warmup-steps", type=nonnegative_int, help="linear warmup steps (default min(100, steps/10))")
    t.add_argument("--weight-decay", type=nonnegative_float, help="decoupled weight decay on matrices (default 0.1)")
    t.add_argument("--grad-clip", type=positive_float, help="global gradient-norm clip (default 1.0)")
    t.add_argument("--seed", type=nonnegative_int, help="seeds the weights, the batches and the sample (default 0)")
    t.add_argument("--max-chars", type=positive_int, help="use only the first N characters (default: the whole file)")
    t.add_argument("--val-fraction", type=val_fraction,
                   help="the last fraction of the text held out for validation (default 0.1; 0: none)")
    t.add_argument("--eval-batches", type=positive_int, help="validation batches per evaluation (default 20)")
    p.add_argument("--eval-every", type=positive_int, default=250, metavar="N",
                   help="measure the validation loss every N steps (and at the end); default 250")
    p.add_argument("--log-every", type=positive_int, default=25, metavar="N", help="read the loss back every N steps")
    p.add_argument("--sample-chars", type=nonnegative_int, default=200,
                   help=f"characters to sample after training, after the text's first {SAMPLE_PROMPT_CHARS} "
                        "(any number; 0: none)")
    p.add_argument("--temperature", type=nonnegative_float, default=0.8, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=positive_int, help="sample among the k most likely characters only")
    c = p.add_argument_group("checkpoints")
    c.add_argument("--out", metavar="DIR", help="save a checkpoint here at every evaluation, at the end, and on "
                                                "Ctrl-C or SIGTERM")
    c.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (saved back into it unless --out "
                                                   "is given)")
    c.add_argument("--overwrite", action="store_true",
                   help="let a new run replace the checkpoint of another run in --out")
    p.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default="auto",
                   help="record each training step as a CUDA graph (torch:cuda only; auto: where supported)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on GPUs")
    p.add_argument("--workers", type=workers_flag, default="auto", metavar="N|auto", help=WORKERS_HELP)
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of an MPI job: mpiexec -n N python examples/train_text.py "
                        "--distributed ... (--batch-size is the global batch; rank 0 prints and saves; needs pip "
                        "install -e \".[mpi]\")")
    p.add_argument("--plot", metavar="PATH.png",
                   help="after training, draw the history (training and validation loss, learning rate, gradient "
                        "norm) into PATH.png and its numbers into PATH.csv (needs matplotlib: pip install -e "
                        "\".[plot]\")")
    return p



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
            from llm.distributed import DistributedStep

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


# -- the command line ----------------------------------------------------------------------------------------------

def _explicit(argv: list[str] | None) -> set[str]:
    """The flags given on the command line (not left at their defaults)."""
    sentinel = object()
    p = build_parser()
    p.set_defaults(**{a.dest: sentinel for a in p._actions if a.dest not in ("help", "text")})
    given = vars(p.parse_args(argv))
    return {k for k, v in given.items() if v is not sentinel}


def check_args(args: argparse.Namespace) -> None:
    """Everything about the flags that can be wrong without the file, checked before it is read."""
    check_sampling(args.temperature, args.top_k, None)
    for flag in ("out", "resume"):
        if getattr(args, flag) is not None and not getattr(args, flag).strip():
            raise ConfigError(f"--{flag} is empty: give a directory (is a shell variable unset?)")
    if args.overwrite and not args.out:
        raise ConfigError("--overwrite needs --out DIR: say where to save")
    if args.plot is not None:  # a path that cannot be written, or no matplotlib: say so before training
        from llm.plotting import check_plot_path

        check_plot_path(args.plot, "--plot")


def _settings_from_args(args: argparse.Namespace) -> TextSettings:
    values = {f.name: getattr(args, f.name) for f in fields(TextSettings)}
    s = TextSettings(**{k: RUN_DEFAULTS[k] if v is None else v for k, v in values.items()})
    s.min_lr, s.warmup_steps = s.final_lr, s.warmup  # resolved now: --steps given on resume must not move them
    return s


def _check_resume_flags(args: argparse.Namespace, explicit: set[str], run: TextRun) -> None:
    where, fix = f"the checkpoint in {args.resume}", "leave the flag out, or start a new run without --resume"
    saved = {**{k: getattr(run.model.config, k) for k in MODEL_DEFAULTS}, **asdict(run.settings),
             "dtype": run.model.backend.dtype_name}
    if "pos_encoding" in explicit and hasattr(run.model.config, "pos_encoding"):
        saved["pos_encoding"] = run.model.config.pos_encoding
    for name in sorted(explicit & (set(saved) - {"steps"})):
        if getattr(args, name) != saved[name]:
            raise ConfigError(f"{flag_name(name)} {getattr(args, name)} differs from {where} ({name} {saved[name]}): a "
                              f"resumed run keeps its settings; {fix}")


def _check_out(args: argparse.Namespace, resumed: Any) -> None:
    """As ``arraygpt train``: fail before training when --out cannot (or must not) be written; take its lock."""
    from llm.checkpoint import check_destination, find_checkpoint, lock_destination

    check_destination(args.out)
    args.lock = lock_destination(args.out)
    existing = find_checkpoint(args.out)
    if existing is None or args.overwrite:
        return
    if resumed is not None and (os.path.realpath(args.resume) == os.path.realpath(args.out)
                                or (resumed.run_id is not None and resumed.run_id == existing.run_id)):
        return
    raise ConfigError(f"--out {args.out} already holds the checkpoint of another run; continue that run with "
                      f"--resume {args.out}, choose another --out, or pass --overwrite to replace it")


def _stop_signals(stop: list) -> Any:
    """Ctrl-C and SIGTERM during training: finish the step, then stop (a second one stops at once)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in previous.items()]


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    explicit = _explicit(argv)
    check_args(args)
    one_line_warnings()
    # A diverging run overflows before its loss turns NaN; the loop reports that (with the step), not NumPy.
    warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered", RuntimeWarning)
    set_tf32(args.tf32)
    comm = None
    if args.distributed:  # first: on GPUs it gives each rank its own device before the backend is made
        from backends.distributed import init_distributed

        comm = init_distributed(args.device)
        if not comm.is_root:  # rank 0 alone prints, plots, samples and saves
            sys.stdout = open(os.devnull, "w", encoding="utf-8")
            warnings.simplefilter("ignore")
    args.comm = comm
    ckpt = None
    if args.resume:
        run, ckpt = _load_run(args.resume, args.device, args.steps, args.cuda_graphs, args.tf32, comm, args.workers)
        _check_resume_flags(args, explicit, run)
        settings, model, tok = run.settings, run.model, run.tokenizer
        text = read_text(args.text, settings.max_chars)
        if run.text_info is not None and run.text_info.get("sha256") != text_sha256(text):
            raise ConfigError(f"--text {args.text} is not the text the checkpoint in {args.resume} was trained on "
                              f"(its SHA-256 differs{'' if settings.max_chars is None else ' in the first --max-chars'}"
                              "); resume with the same file, or start a new run without --resume")
        ids = np.asarray(tok.encode(text), np.int64)
        train_ids, val_ids = split_ids(ids, settings.val_fraction, model.config.max_seq_len, args.text)
        run.train_ids = train_ids
        run.set_val(val_ids)
        args.run_id = ckpt.run_id or secrets.token_hex(8)
        if not args.out:
            args.out = args.resume
    else:
        settings = _settings_from_args(args)
        settings.check()
        size = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in MODEL_DEFAULTS.items()}
        if getattr(args, "pos_encoding", None) is not None:  # the flag, where this version has it
            size["pos_encoding"] = args.pos_encoding
        backend = get_backend(args.device, args.dtype or RUN_DEFAULTS["dtype"])
        text = read_text(args.text, settings.max_chars)
        tok = CharTokenizer.from_texts([text])
        ids = np.asarray(tok.encode(text), np.int64)
        train_ids, val_ids = split_ids(ids, settings.val_fraction, size["max_seq_len"], args.text)
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, **size), backend, seed=settings.seed)
        run = TextRun(model, tok, train_ids, val_ids, settings, cuda_graphs=args.cuda_graphs, tf32=args.tf32,
                      comm=comm, workers=args.workers)
        args.run_id = secrets.token_hex(8)
    run.text_info = {"sha256": text_sha256(text), "chars": len(text)}
    if comm is not None:  # every rank trains the same run on the same text, from the same weights
        from llm.distributed import check_run

        check_run(comm, {"the settings": asdict(run.settings), "the model configuration": model.config.to_dict(),
                         "the text": run.text_info, "the step": run.step})
        run.step_fn.check_in_sync()
    args.root = comm is None or comm.is_root
    if args.out and args.root:
        _check_out(args, ckpt)
    try:
        return _train(args, run, text, len(train_ids), len(val_ids))
    finally:
        lock = getattr(args, "lock", None)
        if lock is not None:
            lock.release()


def _train(args: argparse.Namespace, run: TextRun, text: str, n_train: int, n_val: int) -> int:
    model, tok, s = run.model, run.tokenizer, run.settings
    print(f"{len(text):,} characters, {tok.vocab_size} symbols; {n_train:,} for training, {n_val:,} for validation; "
          f"{model!r}", flush=True)
    print(f"{s.steps} steps of {s.batch_size} x {model.config.max_seq_len}; lr {s.lr:g} (warmup {s.warmup}) -> "
          f"{s.final_lr:g} (cosine)" + (f"; resumed at step {run.step}" if args.resume else ""), flush=True)

    def save(why: str) -> None:
        if args.out and args.root:
            path = run.save(args.out, run_id=args.run_id)
            print(f"saved checkpoint {path} ({why}, step {run.step})", flush=True)

    def evaluate() -> None:
        train_loss = run.read()
        val = run.evaluate()
        if val is not None and not math.isfinite(val):
            raise run._diverged(f"the validation loss is {val}", run.step)
        record = {"step": run.step, "train_loss": train_loss, "val_loss": val}
        run.history.append(record)
        line = f"step {run.step}/{s.steps}: "
        line += f"val loss {val:.4f}, val perplexity {math.exp(val):.2f}" if val is not None else "no validation split"
        if train_loss is not None:
            line += f", train loss {train_loss:.4f}"
        print(line, flush=True)

    stop: list = []
    restore = _stop_signals(stop)
    seconds_before, steps_before = run.train_seconds, run.step
    try:
        while run.step < s.steps and not _agreed(args, run, stop):
            lr = cosine_lr(run.step, s)
            run.train_step()
            if run.step % args.log_every == 0:
                loss = run.read()
                done = (run.step - steps_before) * s.batch_size * model.config.max_seq_len
                speed = done / max(run.train_seconds - seconds_before, 1e-9)
                print(f"step {run.step}/{s.steps}: loss {loss:.4f}, lr {lr:.2e}, {speed:,.0f} tokens/s", flush=True)
            if run.step % args.eval_every == 0 or run.step == s.steps:
                evaluate()
                save("evaluation")
    except KeyboardInterrupt:
        stop.append(signal.SIGINT)  # a second Ctrl-C: the last saved checkpoint stands
        print("\ninterrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        restore()
    if stop:
        why = "terminated (SIGTERM)" if stop[0] == signal.SIGTERM else "interrupted"
        run.read()
        if not args.root:
            pass
        elif args.out:
            save(why.split(" ")[0])
            print(f"{why} after {run.step} steps; continue with --resume {args.out}", file=sys.stderr, flush=True)
        else:
            print(f"{why} after {run.step} steps (no --out given, nothing saved)", file=sys.stderr, flush=True)
        if args.comm is not None:
            args.comm.barrier()  # the other ranks wait for rank 0's save
        return EXIT_TERMINATED if stop[0] == signal.SIGTERM else EXIT_INTERRUPTED
    steps = run.step - steps_before
    if steps:
        seconds = run.train_seconds - seconds_before
        print(f"{steps} steps in {seconds:.1f} s: "
              f"{steps * s.batch_size * model.config.max_seq_len / max(seconds, 1e-9):,.0f} tokens/s", flush=True)
    else:
        print(f"training had finished ({run.step} steps); give a larger --steps to continue", flush=True)
    if args.plot is not None:
        from llm.plotting import plot_history

        png, csv_path = plot_history({"steps": run.steps, "history": run.history}, args.plot, clip_norm=s.grad_clip,
                                     title=f"{os.path.basename(args.text)}: {model.config.n_layers} layers, "
                                           f"d_model {model.config.d_model}")
        print(f"wrote {png} and {csv_path}", flush=True)
    if args.sample_chars and args.root:
        _sample(args, run, text)
    if args.comm is not None:
        args.comm.barrier()  # the other ranks wait for rank 0's last save
    return EXIT_OK


def _agreed(args: argparse.Namespace, run: TextRun, stop: list) -> bool:
    """Whether to stop before the next step. The ranks of a distributed run decide together, at the steps where the
    loss is read anyway (every --log-every), so that none stops alone and leaves the others in a reduction."""
    if args.comm is None:
        return bool(stop)
    if run.step % args.log_every == 0 and args.comm.any_true(bool(stop)):
        if not stop:  # another rank was stopped: this one stops the same way
            stop.append(signal.SIGINT)
        return True
    return False


def _sample(args: argparse.Namespace, run: TextRun, text: str) -> None:
    tok = run.tokenizer
    prompt = tok.encode(text[:SAMPLE_PROMPT_CHARS])
    banned = [tok.pad_id, tok.unk_id] + ([] if "</s>" in text else [tok.eos_id])  # </s>: only if the text has it
    out = [tok.decode(prompt)]
    for i in generate_stream(run.model, prompt, args.sample_chars, args.temperature, args.top_k, None,
                             seed=run.settings.seed, banned_ids=banned):
        out.append(tok.decode([i]))
    print("".join(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    """`arraygpt text`: the exit code; every fault ends in one line (llm.cli.run_cli)."""
    return run_cli(_main, argv, memory_hint=MEMORY_HINT)


if __name__ == "__main__":
    sys.exit(main())
