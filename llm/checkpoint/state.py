"""The training state of a resumable checkpoint, one format for both trainers: ``training.json`` (which trainer,
its settings, the seed, where the run stopped as a :class:`~llm.training.loop.TrainState`, Adam's counters, what it
was trained on) and ``optimizer.safetensors`` (Adam's moments, ``m.<name>`` and ``v.<name>``). Both are written in
the same atomic save as the model and listed in the manifest, so a checkpoint is resumable as a whole or not at all.

``training.json`` by trainer::

    {"trainer": "recipe", "recipe": {...}, "seed", "state", "optimizer": {"t", "calls", "skipped"}, "optimizer_t",
     "corpora": {phase: {"sha256", "examples"}}}                                      (llm.training.trainer.Trainer)
    {"trainer": "text", "settings": {...}, "seed", "state", "optimizer": {...}, "optimizer_t",
     "text": {"sha256", "chars"}}                                                (llm.training.text_run.TextRun)

(a text run on a token dataset records ``"text": {"dataset": the SHA-256 of its meta.json, "name", "tokens"}``.)

Older checkpoints still load and resume: a ``training.json`` without "trainer" is a Trainer's (its counters were
``optimizer_t`` alone), and a book trainer's ``text_run.safetensors`` beside the model is read by
:mod:`llm.checkpoint.legacy`.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from llm.checkpoint._common import OPTIMIZER_FILE, TRAINING_FILE, _RESAVE, _json_bytes, _one_line, _read_json
from llm.checkpoint.files import _read_tensors
from llm import checks
from llm.errors import CheckpointError, ConfigError, SaveRefusedError

TRAINERS = ("recipe", "text")  # which trainer wrote a training state
SETTINGS_KEY = {"recipe": "recipe", "text": "settings"}
SOURCE_KEY = {"recipe": "corpora", "text": "text"}  # what the run was trained on (fingerprints)


@dataclass
class SavedTraining:
    """A checkpoint's training state as read back: everything a trainer needs to continue exactly."""

    trainer: str  # "recipe" (Trainer) or "text" (TextRun)
    settings: Any  # a Recipe, or a TextSettings
    seed: int | None
    state: Any  # a TrainState
    counters: dict[str, int]  # Adam's {"t", "calls", "skipped"}
    moments: dict[str, dict[str, Any]]  # {"m": {name: device array}, "v": {...}}
    fingerprints: dict | None  # corpora {phase: {"sha256", "examples"}} or the text's {"sha256", "chars"}
    loss_scale: dict | None = None  # fp16's {"scale", "good_steps", "overflows", ...}; None when saved without

    def optimizer_state(self) -> dict[str, Any]:
        """What :meth:`llm.Adam.load_state_dict` takes."""
        return {"t": self.counters["t"], "m": self.moments["m"], "v": self.moments["v"]}

    def load_into(self, engine: Any) -> None:
        """Give `engine` (a :class:`~llm.training.loop.Engine`) this position and these optimizer moments."""
        engine.state = self.state
        engine.optimizer.load_state_dict(self.optimizer_state())
        engine.optimizer.load_counters(self.counters)
        engine.optimizer_calls = self.counters["calls"]
        scaler = getattr(engine.step_fn, "loss_scale", None)
        if scaler is not None and self.loss_scale is not None:  # else a new fp16 run's scale starts afresh
            scaler.load_state_dict(self.loss_scale)


# -- writing ---------------------------------------------------------------------------------------------------------

def serialize_training(model: Any, trainer: Any, params: dict[str, np.ndarray]) -> dict[str, bytes]:
    """``optimizer.safetensors`` and ``training.json`` as bytes, in the order they are written (no disk access).

    `trainer` is a Trainer or a TextRun: its ``checkpoint_record()`` gives what is particular to it."""
    if trainer.model is not model:
        raise SaveRefusedError("refusing to save: the trainer given trains another model than the one saved")
    record = trainer.checkpoint_record()  # reads the pending steps first: a diverged run raises here
    opt = trainer.optimizer
    be = model.backend
    moments = {}
    for key, views in (("m", opt.m), ("v", opt.v)):
        if set(views) != set(params):
            raise SaveRefusedError(f"refusing to save: the optimizer's {key!r} moments do not cover the model's "
                                  "parameters")
        for pname, arr in views.items():
            moments[f"{key}.{pname}"] = np.ascontiguousarray(be.to_numpy(arr))
    counters = opt.counters()
    training = {**record, "optimizer_t": counters["t"], "optimizer": counters}
    scaler = getattr(getattr(trainer, "engine", None), "step_fn", None)
    scaler = getattr(scaler, "loss_scale", None)
    if scaler is not None:  # fp16: the dynamic loss scale and its counters
        training["loss_scale"] = scaler.state_dict()
    return {OPTIMIZER_FILE: safetensors.numpy.save(moments, metadata={"format": "arraygpt"}),
            TRAINING_FILE: _json_bytes(training)}


def corpus_fingerprints(examples: dict[str, list], phases: tuple[str, ...]) -> dict[str, dict]:
    """Each corpus as the run trains on it: ``{phase: {"sha256", "examples"}}``.

    The SHA-256 covers the corpus's examples in order (its texts encoded with the run's tokenizer: token ids and
    where the loss starts), which is what the Trainer keeps of the texts; a text changed, added, removed or moved
    changes it, and it is the same on every machine and backend.
    """
    out = {}
    for phase in phases:
        h = hashlib.sha256()
        for ex in examples[phase]:
            h.update(np.asarray([len(ex.ids), ex.loss_start, *ex.ids], dtype="<i8").tobytes())
        out[phase] = {"sha256": h.hexdigest(), "examples": len(examples[phase])}
    return out


# -- reading ---------------------------------------------------------------------------------------------------------

def read_state(path: Path, expected: dict[str, tuple[int, ...]], model: Any, reads: dict[str, bytes]
               ) -> SavedTraining | None:
    """The training state of checkpoint directory `path` (None when it was saved without one), its moments on the
    model's backend (`expected`: parameter shapes)."""
    from llm.checkpoint.legacy import LEGACY_TEXT_STATE, read_legacy_text_state

    train_path, opt_path = path / TRAINING_FILE, path / OPTIMIZER_FILE
    has_train, has_opt = train_path.exists(), opt_path.exists()
    if has_train != has_opt:
        present, missing = (train_path, opt_path) if has_train else (opt_path, train_path)
        raise CheckpointError(f"{missing} is missing although {present.name} is there; the training state is "
                              f"incomplete: {_RESAVE}, or delete {present.name} to keep only the model")
    if not has_train:
        return read_legacy_text_state(path, model) if (path / LEGACY_TEXT_STATE).exists() else None
    trainer, settings, seed, state, counters, fingerprints, loss_scale = _read_training(train_path, reads)
    host = _read_tensors(opt_path, {f"{k}.{n}": s for k in ("m", "v") for n, s in expected.items()},
                         "optimizer tensor", reads)
    be = model.backend
    moments = {k: {n: be.asarray(host[f"{k}.{n}"]) for n in expected} for k in ("m", "v")}
    return SavedTraining(trainer, settings, seed, state, counters, moments, fingerprints, loss_scale)


def _read_training(path: Path, reads: dict[str, bytes] | None = None) -> tuple:
    raw = _read_json(path, reads)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds {type(raw).__name__}, not a JSON object; {_RESAVE}")
    trainer = raw.get("trainer", "recipe")  # checkpoints written before the text trainer shared the format
    if trainer not in TRAINERS:
        raise CheckpointError(f"{path}: trainer must be one of {', '.join(TRAINERS)}, got {trainer!r}; {_RESAVE}")
    missing = [k for k in (SETTINGS_KEY[trainer], "seed", "state", "optimizer_t") if k not in raw]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; the training state is incomplete: {_RESAVE}")
    try:
        settings = _read_settings(trainer, raw[SETTINGS_KEY[trainer]])
    except (ConfigError, CheckpointError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid {SETTINGS_KEY[trainer]} ({_one_line(exc)}); {_RESAVE}") from None
    seed = raw["seed"]
    if seed is not None and not checks.is_int(seed):
        raise CheckpointError(f"{path}: seed must be an integer or null, got {seed!r}; {_RESAVE}")
    try:
        counters = _read_counters(raw)
        state = _read_train_state(raw["state"], trainer, settings)
        fingerprints = _read_fingerprints(trainer, raw.get(SOURCE_KEY[trainer]))
        loss_scale = _read_loss_scale(raw.get("loss_scale"))
    except (TypeError, ValueError, KeyError, ConfigError) as exc:
        raise CheckpointError(f"{path}: invalid training state ({_one_line(exc)}); {_RESAVE}") from None
    return trainer, settings, seed, state, counters, fingerprints, loss_scale


def _read_loss_scale(raw: Any) -> dict | None:
    # absent (fp32 / bf16 runs, and checkpoints older than mixed precision) -> None
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise TypeError("loss_scale must be an object {scale, good_steps, overflows}")
    scale = checks.positive_number(raw.get("scale"), "scale")
    if not math.isfinite(scale):
        raise ValueError(f"loss_scale.scale must be finite, got {scale!r}")
    return {"scale": scale, "good_steps": checks.nonnegative_int(raw.get("good_steps"), "good_steps"),
            "overflows": checks.nonnegative_int(raw.get("overflows"), "overflows")}


def _read_settings(trainer: str, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise TypeError(f"{SETTINGS_KEY[trainer]} must be an object")
    if trainer == "text":
        from llm.training.text_run import TextSettings

        return TextSettings.from_dict(raw)
    from llm.training.schedule import Recipe

    _check_json_types(Recipe, raw)
    return Recipe(**raw)


def _check_json_types(cls: Any, raw: dict) -> None:
    """JSON types a settings dataclass does not check itself: a flag must be true/false ("no" is truthy), a number
    not a bool."""
    for f in fields(cls):
        if f.name not in raw:
            continue
        v = raw[f.name]
        if isinstance(f.default, bool):
            checks.boolean(v, f.name)
        elif isinstance(f.default, (int, float)) and isinstance(v, bool):
            raise TypeError(f"{f.name} must be a number, got {v!r}")


def _count(raw: dict, key: str) -> int:
    v = raw[key]
    if not (checks.is_int(v) and v >= 0):
        raise ValueError(f"{key} must be an integer >= 0, got {v!r}")
    return v


def _read_counters(raw: dict) -> dict[str, int]:
    t = _count(raw, "optimizer_t")
    if "optimizer" not in raw:  # written before every counter was saved: Adam's calls started again from t
        return {"t": t, "calls": t, "skipped": 0}
    opt = raw["optimizer"]
    if not isinstance(opt, dict):
        raise TypeError("optimizer must be an object {t, calls, skipped}")
    counters = {key: _count(opt, key) for key in ("t", "calls", "skipped")}
    if counters["t"] != t or counters["t"] + counters["skipped"] != counters["calls"]:
        raise ValueError(f"the optimizer's counters disagree (optimizer_t {t}, {counters})")
    return counters


POSITION_KEYS = ("phase", "epoch", "batch", "step", "phase_step")  # where the run stands: every save writes them


def _read_train_state(raw: Any, trainer: str, settings: Any) -> Any:
    from llm.training.loop import TrainState

    if not isinstance(raw, dict):
        raise TypeError("state must be an object")
    unknown = set(raw) - {f.name for f in fields(TrainState)}
    if unknown:
        raise ValueError(f"state has unknown keys {sorted(unknown)}")
    missing = [k for k in POSITION_KEYS if k not in raw]  # a default would silently restart the run from there
    if missing:
        raise ValueError(f"state is missing {', '.join(missing)}")
    st = TrainState.from_dict(raw)
    check_train_state(st, trainer, settings)
    return st


def check_train_state(st: Any, trainer: str, settings: Any) -> None:
    """Everything about a TrainState read from a file that could mislead or crash a resumed run."""
    for name in ("phase", "epoch", "batch", "step", "phase_step", "epoch_tokens"):
        v = getattr(st, name)
        if not _is_step(v):
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    n_phases = 2 if trainer == "recipe" else 1
    if st.phase > n_phases:
        raise ValueError(f"phase must be at most {n_phases}, got {st.phase}")
    if trainer == "recipe" and st.phase < n_phases:
        _check_recipe_position(st, settings)
    for name in ("epoch_loss_sum", "train_seconds"):
        v = getattr(st, name)
        if not (checks.is_number(v) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if not isinstance(st.history, list) or not all(isinstance(h, dict) and _is_step(h.get("step"))
                                                   for h in st.history):
        raise ValueError("history must be a list of objects, each with its step")
    if not isinstance(st.steps, list) or not all(isinstance(r, dict) and _is_step(r.get("step"))
                                                 and checks.is_number(r.get("loss")) for r in st.steps):
        raise ValueError("steps must be a list of objects (one per training step, each with its step and loss)")
    if not isinstance(st.rng_state, dict) or st.rng_state.get("bit_generator") != "PCG64":
        raise ValueError("rng_state must be the state of the run's PCG64 generator")
    np.random.default_rng().bit_generator.state = st.rng_state  # raises on a malformed state


def _is_step(v: Any) -> bool:
    return checks.is_int(v) and v >= 0


def _check_recipe_position(st: Any, recipe: Any) -> None:
    phase = ("pretrain", "chat")[st.phase]
    epochs = recipe.pretrain_epochs if phase == "pretrain" else recipe.chat_epochs
    if epochs is not None and st.epoch > epochs:
        raise ValueError(f"epoch {st.epoch} is beyond the recipe's {epochs} {phase} epochs")
    steps = recipe.pretrain_steps if phase == "pretrain" else recipe.chat_steps
    if epochs is None and st.phase_step > steps:
        raise ValueError(f"step {st.phase_step} of the {phase} phase is beyond the recipe's {steps} steps")


def _read_fingerprints(trainer: str, raw: Any) -> dict | None:
    if raw is None:  # absent in checkpoints saved before fingerprints were recorded
        return None
    if trainer == "text":
        if isinstance(raw, dict) and "dataset" in raw:  # a run on a token dataset (`arraygpt text` with a dataset)
            if not _is_sha256(raw["dataset"]) or not isinstance(raw.get("name"), str) or not _is_step(raw.get("tokens")):
                raise TypeError("text must be an object {dataset: 64 hex digits, name: a string, tokens: an integer "
                                ">= 0}")
            return raw
        if not isinstance(raw, dict) or not _is_sha256(raw.get("sha256")) or not _is_step(raw.get("chars")):
            raise TypeError("text must be an object {sha256: 64 hex digits, chars: an integer >= 0}")
        return raw
    from llm.training.schedule import PHASES

    if not isinstance(raw, dict) or set(raw) != set(PHASES):
        raise TypeError(f"corpora must be an object with the keys {', '.join(PHASES)}")
    for phase, entry in raw.items():
        if not isinstance(entry, dict) or not _is_sha256(entry.get("sha256")):
            raise TypeError(f"corpora.{phase}.sha256 must be 64 hex digits")
        if not _is_step(entry.get("examples")):
            raise TypeError(f"corpora.{phase}.examples must be an integer >= 0, got {entry.get('examples')!r}")
    return raw


def _is_sha256(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None
