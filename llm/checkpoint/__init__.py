"""Checkpoints: save a model (and optionally its training state) to a directory, load it on any backend.

A checkpoint is a directory::

    model.safetensors       the parameters, keyed by their names in ``GPT.params``, in the model's dtype
    config.json             {"format_version": 1, "dtype": "float32" | "float64", "model": GPTConfig.to_dict()}
    tokenizer.json          tokenizer.to_dict()
    optimizer.safetensors   (resumable checkpoints only) the Adam moments, keyed "m.<name>" and "v.<name>"
    training.json           (resumable checkpoints only) which trainer, its settings, the seed, where the run
                            stopped, Adam's counters, what it trained on (see llm.checkpoint.state)
    manifest.json           written last: {"format": "arraygpt-checkpoint", "format_version", "saved_ns", "run_id",
                            "files": {name: {"bytes", "sha256"}}}; the marker that makes a directory a checkpoint

Host-side module: arrays cross to and from the device through the backend's ``to_numpy`` / ``asarray``, so a
checkpoint written from one backend (or dtype) loads onto any other.

Saving is atomic: everything is written into a fresh hidden sibling directory (``.NAME.tmp-*``), flushed and
fsynced, and only then swapped into place (the previous checkpoint goes aside to ``.NAME.old-*`` in between), so a
failure or an interrupt at any point leaves a complete checkpoint: at NAME, or, after a crash between the two
renames, in the hidden sibling that :func:`load_checkpoint` then finds. A save replaces only a directory that holds
a manifest of its own (or an empty one), deletes only files its manifests list, and moves everything else a user put
in the directory (notes, plots) into the new checkpoint. The next save tidies the hidden siblings a killed save left.
Loading checks every file, then its SHA-256 against the manifest, and raises :class:`~llm.errors.CheckpointError`
with one line naming the file, the problem and the fix.

The package has one module per concern: ``writer.py`` (the atomic directory writer: temporary directory, fsync,
renames, manifest, recovery of a killed save), ``lock.py`` (one run per destination), ``files.py`` (the model, config and tokenizer files) and
``state.py`` (the one training-state format of both trainers), ``resume.py`` (:func:`restore_trainer`) and
``legacy.py`` (the book trainer's older state file); this module puts them together.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm.errors import CheckpointError, LLMWarning
from llm.nn.model import GPT
from llm.checkpoint._common import (CONFIG_FILE, DATA_FILES, FORMAT_VERSION, MANIFEST_FILE, MANIFEST_FORMAT, MODEL_FILE,
                      OPTIMIZER_FILE, TOKENIZER_FILE, TRAINING_FILE, _RESAVE, FileReads)
from llm.checkpoint.files import param_shapes, read_config, read_model, read_tokenizer, serialize_model
from llm.checkpoint.resume import restore_trainer
from llm.checkpoint.state import SavedTraining, read_state, serialize_training
from llm.checkpoint.preflight import check_loadable
from llm.checkpoint.lock import CheckpointLock, lock_destination
from llm.checkpoint.writer import (SavedCheckpoint, _read_manifest, _target, _verify, adopt_checkpoint, check_destination,
                                   find_checkpoint, write_checkpoint)

__all__ = [
    "FORMAT_VERSION",
    "MODEL_FILE",
    "CONFIG_FILE",
    "TOKENIZER_FILE",
    "OPTIMIZER_FILE",
    "TRAINING_FILE",
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "DATA_FILES",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load",
    "restore_trainer",
    "SavedTraining",
    "check_destination",
    "adopt_checkpoint",
    "find_checkpoint",
    "lock_destination",
    "CheckpointLock",
    "SavedCheckpoint",
]


@dataclass
class Checkpoint:
    """Everything a checkpoint directory holds, loaded onto one backend.

    ``training`` is the saved training state (:class:`~llm.checkpoint.state.SavedTraining`: which trainer, its
    settings, seed, position and optimizer state), None for a checkpoint saved without a trainer.
    """

    model: GPT
    tokenizer: Any
    training: SavedTraining | None
    path: Path
    run_id: str | None = None  # the manifest's: which training run wrote it (None for library saves and old ones)

    @property
    def resumable(self) -> bool:
        return self.training is not None

    # the parts of the training state, as they were named before the two trainers shared one format
    @property
    def recipe(self) -> Any:
        return self.training.settings if self.training is not None and self.training.trainer == "recipe" else None

    @property
    def seed(self) -> int | None:
        return None if self.training is None else self.training.seed

    @property
    def train_state(self) -> Any:
        return None if self.training is None else self.training.state

    @property
    def optimizer_state(self) -> dict | None:
        return None if self.training is None else self.training.optimizer_state()

    @property
    def corpora(self) -> dict | None:
        return self.training.fingerprints if self.training is not None and self.training.trainer == "recipe" else None


def save_checkpoint(path: str | os.PathLike, model: GPT, tokenizer: Any, trainer: Any = None, *,
                    run_id: str | None = None) -> Path:
    """Write `model` and `tokenizer` (and, with `trainer`, a Trainer or a TextRun, everything needed to resume
    training) to directory `path`, every file in one atomic save.

    The write is atomic: an existing checkpoint at `path` is replaced only once the new one is complete on disk, and
    files in it that no save wrote (notes, plots) are kept. `run_id` is recorded in the manifest (the CLI uses it to
    tell its own run's checkpoints from another run's). Raises CheckpointError (the previous checkpoint kept) when a
    parameter is NaN/inf, when `path` exists and is not a checkpoint, or when the disk refuses (no space, no
    permission...). A KeyboardInterrupt during the write cleans up and propagates, again leaving the previous
    checkpoint as it was. Returns `path` as a Path (the target's, when `path` is a symbolic link).
    """
    path = _target(path)
    files, params = serialize_model(model, tokenizer)
    if trainer is not None:
        files.update(serialize_training(model, trainer, params))
    return write_checkpoint(path, files, run_id)


def load_checkpoint(path: str | os.PathLike, backend: Any) -> Checkpoint:
    """Load a checkpoint directory onto `backend` (a Backend, or a backend name: then the saved dtype is used).

    Every file is validated; any problem raises CheckpointError naming the file and what to do.
    """
    path = _target(path)
    if not path.exists():
        found = find_checkpoint(path)
        if found is None:
            raise CheckpointError(f"checkpoint directory {path} does not exist; check the path "
                                  "(a checkpoint is the directory a training run saved to)")
        warnings.warn(LLMWarning(f"checkpoint {path} is missing because a save was interrupted; loading the newest "
                                 f"complete checkpoint it left, {found.path} (the next save to {path} puts one back "
                                 "in place)"), stacklevel=2)
        path = found.path
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory; pass the directory that holds "
                              f"{CONFIG_FILE} and {MODEL_FILE}")

    manifest = _read_manifest(path)
    reads = FileReads(manifest)  # every file's bytes as parsed, none larger than the manifest says: checked at the end
    if manifest is not None:
        for fname in manifest["files"]:
            if not os.path.lexists(path / fname):
                raise CheckpointError(f"{path / fname} is missing (listed in {MANIFEST_FILE}); the checkpoint is "
                                      f"incomplete: {_RESAVE}")
        for fname in DATA_FILES:
            if fname not in manifest["files"] and os.path.lexists(path / fname):
                raise CheckpointError(f"{path / fname} is not listed in {MANIFEST_FILE}: it was not saved with this "
                                      f"checkpoint; remove it, or {_RESAVE}")

    config, dtype = read_config(path, reads)
    if isinstance(backend, str):
        from backends import get_backend  # a name: load in the dtype the checkpoint was saved in

        backend = get_backend(backend, dtype)
    gpu = backend.name == "cupy" or backend.name.startswith("torch:")  # its memory is the device's, not the host's
    check_loadable(path, path / MODEL_FILE, config, backend.dtype_name, gpu)  # before the model is built
    tokenizer = read_tokenizer(path, config, reads)
    model = read_model(path, config, backend, reads)
    training = read_state(path, param_shapes(model), model, reads)
    if manifest is not None:
        _verify(path, manifest, reads)
    return Checkpoint(model, tokenizer, training, path, manifest.get("run_id") if manifest is not None else None)


def load(path: str | os.PathLike, backend: Any) -> tuple[GPT, Any]:
    """Load a checkpoint's model and tokenizer onto `backend` (ready to generate): ``model, tok = load(dir, be)``."""
    ckpt = load_checkpoint(path, backend)
    return ckpt.model, ckpt.tokenizer
