"""The training state of a resumable checkpoint: ``training.json`` (recipe, seed, where the run stopped, the shuffling
generator) and ``optimizer.safetensors`` (Adam's moments): what goes into them, reading them back with every check,
and :func:`restore_trainer`, which continues the run exactly where it stopped."""

from __future__ import annotations

import copy
import hashlib
import math
import re
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import safetensors.numpy

from llm.data.corpora import num_batches
from llm.errors import CheckpointError, ConfigError
from llm.nn.model import GPT
from llm.training.trainer import PHASES, Recipe, Trainer, TrainState
from llm.checkpoint._common import OPTIMIZER_FILE, TRAINING_FILE, _RESAVE, _json_bytes, _one_line, _read_json
from llm.checkpoint.files import _read_tensors

if TYPE_CHECKING:
    from llm.checkpoint import Checkpoint


def serialize_training(model: GPT, trainer: Trainer, params: dict[str, np.ndarray]) -> dict[str, bytes]:
    """``optimizer.safetensors`` and ``training.json`` as bytes, in the order they are written (no disk access)."""
    be = model.backend
    if trainer.model is not model:
        raise CheckpointError("refusing to save: the trainer given trains another model than the one saved")
    if trainer.custom_phases:
        raise CheckpointError("refusing to save the training state of a Trainer built from phases=: checkpoints "
                              "resume the two phases of a Recipe; save the model alone (trainer=None)")
    opt = trainer.optimizer.state_dict()
    moments = {}
    for key in ("m", "v"):
        if set(opt[key]) != set(params):
            raise CheckpointError(f"refusing to save: the optimizer's {key!r} moments do not cover the model's "
                                  "parameters")
        for pname, arr in opt[key].items():
            moments[f"{key}.{pname}"] = np.ascontiguousarray(be.to_numpy(arr))
    training = {"recipe": trainer.recipe.to_dict(), "seed": trainer.seed, "state": trainer.state.to_dict(),
                "optimizer_t": int(opt["t"]), "corpora": corpus_fingerprints(trainer)}
    return {
        OPTIMIZER_FILE: safetensors.numpy.save(moments, metadata={"format": "arraygpt"}),
        TRAINING_FILE: _json_bytes(training),
    }


def corpus_fingerprints(trainer: Trainer) -> dict[str, dict]:
    """Each corpus as the run trains on it: ``{phase: {"sha256", "examples"}}``.

    The SHA-256 covers the corpus's examples in order (its texts encoded with the run's tokenizer: token ids and
    where the loss starts), which is what the Trainer keeps of the texts; a text changed, added, removed or moved
    changes it, and it is the same on every machine and backend.
    """
    out = {}
    for phase in PHASES:
        h = hashlib.sha256()
        for ex in trainer.examples[phase]:
            h.update(np.asarray([len(ex.ids), ex.loss_start, *ex.ids], dtype="<i8").tobytes())
        out[phase] = {"sha256": h.hexdigest(), "examples": len(trainer.examples[phase])}
    return out


def read_state(path: Path, expected: dict[str, tuple[int, ...]], backend: Any, reads: dict[str, bytes]
               ) -> tuple[Recipe | None, int | None, TrainState | None, dict | None, dict | None]:
    """The training state of checkpoint directory `path` (all None when it was saved without one): the recipe, the
    seed, where the run stopped, the optimizer state with its moments on `backend` (`expected`: parameter shapes),
    and the corpus fingerprints (None in checkpoints saved before they were recorded)."""
    train_path, opt_path = path / TRAINING_FILE, path / OPTIMIZER_FILE
    has_train, has_opt = train_path.exists(), opt_path.exists()
    if has_train != has_opt:
        present, missing = (train_path, opt_path) if has_train else (opt_path, train_path)
        raise CheckpointError(f"{missing} is missing although {present.name} is there; the training state is "
                              f"incomplete: {_RESAVE}, or delete {present.name} to keep only the model")
    if not has_train:
        return None, None, None, None, None
    recipe, seed, state, t, corpora = _read_training(train_path, reads)
    moments = _read_tensors(opt_path, {f"{k}.{n}": s for k in ("m", "v") for n, s in expected.items()},
                            "optimizer tensor", reads)
    optimizer_state = {"t": t,
                       "m": {n: backend.asarray(moments[f"m.{n}"]) for n in expected},
                       "v": {n: backend.asarray(moments[f"v.{n}"]) for n in expected}}
    return recipe, seed, state, optimizer_state, corpora


def restore_trainer(ckpt: Checkpoint, pretrain_texts: list[str], chat_texts: list[str], *,
                    allow_other_corpus: bool = False, **trainer_kwargs: Any) -> Trainer:
    """A Trainer that continues the run saved in `ckpt` exactly where it stopped.

    The corpora must be the ones the run was started with: a corpus whose fingerprint differs from the one saved
    raises CheckpointError naming it, unless `allow_other_corpus` is True (checkpoints saved before fingerprints
    were recorded are not checked). `trainer_kwargs` go to Trainer (progress, log, on_epoch, on_phase_end). The model
    is ``ckpt.model``: training continues in place.
    """
    if not ckpt.resumable:
        raise CheckpointError(f"checkpoint {ckpt.path} was saved without training state: it can be chatted with, "
                              "not resumed; start a new run instead")
    for key in ("recipe", "seed"):
        if key in trainer_kwargs:
            raise CheckpointError(f"restore_trainer takes the {key} from the checkpoint; do not pass {key}=")
    if not isinstance(allow_other_corpus, bool):
        raise CheckpointError(f"allow_other_corpus must be True or False, got {allow_other_corpus!r}")
    trainer = Trainer(ckpt.model, ckpt.tokenizer, pretrain_texts, chat_texts, ckpt.recipe, seed=ckpt.seed,
                      **trainer_kwargs)
    if ckpt.corpora is not None and not allow_other_corpus:
        _check_corpora(ckpt, trainer)
    state = copy.deepcopy(ckpt.train_state)
    if state.phase < len(PHASES):
        phase = PHASES[state.phase]
        n = len(trainer.examples[phase])
        per_epoch = num_batches(n, ckpt.recipe.batch_size) if n else 0
        if state.batch > per_epoch:
            raise CheckpointError(f"checkpoint {ckpt.path} stopped at batch {state.batch} of a {phase} epoch, but the "
                                  f"{phase} corpus given has only {per_epoch} batches; resume with the corpora the "
                                  "run was started with")
    trainer.state = state
    trainer.optimizer.load_state_dict(ckpt.optimizer_state)
    return trainer


def _check_corpora(ckpt: Checkpoint, trainer: Trainer) -> None:
    given = corpus_fingerprints(trainer)
    for phase, flag in zip(PHASES, ("--pretrain-data", "--chat-data")):
        saved, now = ckpt.corpora[phase], given[phase]
        if saved["sha256"] != now["sha256"]:
            raise CheckpointError(
                f"the {phase} corpus given ({now['examples']} examples) differs from the one the run in {ckpt.path} "
                f"was trained on ({saved['examples']} examples, SHA-256 {saved['sha256'][:12]}...); resume with the "
                f"corpora the run was started with (the same {flag} in examples/train.py), or allow it explicitly "
                "with restore_trainer(..., allow_other_corpus=True) (--allow-other-corpus)")


def _read_corpora(raw: Any) -> dict[str, dict]:
    if not isinstance(raw, dict) or set(raw) != set(PHASES):
        raise TypeError(f"corpora must be an object with the keys {', '.join(PHASES)}")
    for phase, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
            raise TypeError(f"corpora.{phase}.sha256 must be 64 hex digits")
        n = entry.get("examples")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise TypeError(f"corpora.{phase}.examples must be an integer >= 0, got {n!r}")
    return raw


def _read_training(path: Path, reads: dict[str, bytes] | None = None
                   ) -> tuple[Recipe, int | None, TrainState, int, dict | None]:
    raw = _read_json(path, reads)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds {type(raw).__name__}, not a JSON object; {_RESAVE}")
    missing = [k for k in ("recipe", "seed", "state", "optimizer_t") if k not in raw]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; the training state is incomplete: {_RESAVE}")
    try:
        if not isinstance(raw["recipe"], dict):
            raise TypeError("recipe must be an object")
        _check_recipe_types(raw["recipe"])
        recipe = Recipe(**raw["recipe"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid recipe ({_one_line(exc)}); {_RESAVE}") from None
    seed = raw["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise CheckpointError(f"{path}: seed must be an integer or null, got {seed!r}; {_RESAVE}")
    t = raw["optimizer_t"]
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise CheckpointError(f"{path}: optimizer_t must be an integer >= 0, got {t!r}; {_RESAVE}")
    try:
        if not isinstance(raw["state"], dict):
            raise TypeError("state must be an object")
        state = TrainState.from_dict(raw["state"])
        _check_state(state, recipe)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: invalid training state ({_one_line(exc)}); {_RESAVE}") from None
    corpora = None
    if "corpora" in raw:  # absent in checkpoints saved before corpus fingerprints
        try:
            corpora = _read_corpora(raw["corpora"])
        except TypeError as exc:
            raise CheckpointError(f"{path}: invalid corpus fingerprints ({_one_line(exc)}); {_RESAVE}") from None
    return recipe, seed, state, t, corpora


def _check_recipe_types(raw: dict) -> None:
    """JSON types the Recipe itself does not check: a flag must be true/false ("no" is truthy), a number not a bool."""
    for f in fields(Recipe):
        if f.name not in raw:
            continue
        v = raw[f.name]
        if isinstance(f.default, bool):
            if not isinstance(v, bool):
                raise TypeError(f"{f.name} must be true or false, got {v!r}")
        elif isinstance(f.default, (int, float)) and isinstance(v, bool):
            raise TypeError(f"{f.name} must be a number, got {v!r}")


def _check_state(st: TrainState, recipe: Recipe | None = None) -> None:
    for name in ("phase", "epoch", "batch", "step", "phase_step", "epoch_tokens"):
        v = getattr(st, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    if st.phase > len(PHASES):
        raise ValueError(f"phase must be at most {len(PHASES)}, got {st.phase}")
    if recipe is not None and st.phase < len(PHASES):
        phase = PHASES[st.phase]
        epochs = recipe.pretrain_epochs if phase == "pretrain" else recipe.chat_epochs
        if epochs is not None and st.epoch > epochs:
            raise ValueError(f"epoch {st.epoch} is beyond the recipe's {epochs} {phase} epochs")
        steps = recipe.pretrain_steps if phase == "pretrain" else recipe.chat_steps
        if epochs is None and st.phase_step > steps:
            raise ValueError(f"step {st.phase_step} of the {phase} phase is beyond the recipe's {steps} steps")
    if not isinstance(st.epoch_loss_sum, (int, float)) or not math.isfinite(st.epoch_loss_sum):
        raise ValueError(f"epoch_loss_sum must be a finite number, got {st.epoch_loss_sum!r}")
    if not isinstance(st.history, list) or not all(isinstance(h, dict) for h in st.history):
        raise ValueError("history must be a list of objects")
    if not isinstance(st.steps, list) or not all(isinstance(h, dict) for h in st.steps):
        raise ValueError("steps must be a list of objects (one per training step)")
    if not isinstance(st.rng_state, dict):
        raise ValueError("rng_state must be the shuffling generator's state object")
    np.random.default_rng().bit_generator.state = st.rng_state  # raises on a malformed state
