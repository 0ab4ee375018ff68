"""Checkpoints: save a model (and optionally its training state) to a directory, load it on any backend.

A checkpoint is a directory::

    model.safetensors       the parameters, keyed by their names in ``GPT.params``, in the model's dtype
    config.json             {"format_version": 1, "dtype": "float32" | "float64", "model": GPTConfig.to_dict()}
    tokenizer.json          tokenizer.to_dict()
    optimizer.safetensors   (resumable checkpoints only) the Adam moments, keyed "m.<name>" and "v.<name>"
    training.json           (resumable checkpoints only) {"recipe", "seed", "state", "optimizer_t"}
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
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import math
import os
import secrets
import tempfile
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from .config import GPTConfig
from .data import num_batches
from .errors import CheckpointError, ConfigError, DataError, LLMWarning
from .model import GPT
from .tokenizer import tokenizer_from_dict
from .training import PHASES, Recipe, Trainer, TrainState

FORMAT_VERSION = 1

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINING_FILE = "training.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "arraygpt-checkpoint"
DATA_FILES = (MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE, OPTIMIZER_FILE, TRAINING_FILE)

_RESAVE = "re-save the checkpoint or use another one"

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load",
    "restore_trainer",
    "check_destination",
    "find_checkpoint",
    "lock_destination",
    "CheckpointLock",
    "SavedCheckpoint",
]


@dataclass
class Checkpoint:
    """Everything a checkpoint directory holds, loaded onto one backend.

    ``recipe``, ``seed``, ``train_state`` and ``optimizer_state`` are None for a checkpoint saved without a trainer.
    ``optimizer_state`` is ``{"t": int, "m": {name: array}, "v": {name: array}}`` with arrays on the model's backend.
    """

    model: GPT
    tokenizer: Any
    recipe: Recipe | None
    seed: int | None
    train_state: TrainState | None
    optimizer_state: dict | None
    path: Path
    run_id: str | None = None  # the manifest's: which training run wrote it (None for library saves and old ones)

    @property
    def resumable(self) -> bool:
        return self.train_state is not None and self.optimizer_state is not None and self.recipe is not None


# =====================================================================================================================
# saving
# =====================================================================================================================

def save_checkpoint(path: str | os.PathLike, model: GPT, tokenizer: Any, trainer: Trainer | None = None, *,
                    run_id: str | None = None) -> Path:
    """Write `model` and `tokenizer` (and, with `trainer`, everything needed to resume training) to directory `path`.

    The write is atomic: an existing checkpoint at `path` is replaced only once the new one is complete on disk, and
    files in it that no save wrote (notes, plots) are kept. `run_id` is recorded in the manifest (the CLI uses it to
    tell its own run's checkpoints from another run's). Raises CheckpointError (the previous checkpoint kept) when a
    parameter is NaN/inf, when `path` exists and is not a checkpoint, or when the disk refuses (no space, no
    permission...). A KeyboardInterrupt during the write cleans up and propagates, again leaving the previous
    checkpoint as it was. Returns `path` as a Path (the target's, when `path` is a symbolic link).
    """
    path = _target(path)
    files = _serialize(model, tokenizer, trainer)
    files[MANIFEST_FILE] = _manifest_bytes(files, run_id)  # last: a directory with a manifest is complete
    _check_destination(path)
    parent = Path(os.path.abspath(path)).parent
    name = Path(os.path.abspath(path)).name
    tmp: Path | None = None
    aside: Path | None = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = _hidden_dir(parent, f".{name}.tmp-")
        for file_name, data in files.items():
            _write_file(tmp / file_name, data)
        _fsync_dir(tmp)
        if os.path.lexists(path):
            aside = parent / f".{name}.old-{secrets.token_hex(4)}"
            os.replace(path, aside)
        os.replace(tmp, path)
        tmp = None
    except BaseException as exc:
        if tmp is not None:
            _remove_ours(tmp)
        restored = _restore_aside(aside, path)
        if isinstance(exc, OSError):
            msg = _write_error(path, parent, exc)
            if not restored:
                msg += f" (the previous checkpoint was moved to {aside}: rename it back)"
            raise CheckpointError(msg) from None
        raise
    # The new checkpoint is in place; what follows only tidies up: the previous checkpoint's files go, the files a
    # user kept beside them move into the new one, and so do those of a save that was killed before this one.
    try:
        _fsync_dir(parent)
    except OSError:
        pass
    _tidy(parent, name, path)
    return path


def _target(path: str | os.PathLike) -> Path:
    """The directory a checkpoint path names: a symbolic link is followed (and kept), "" is refused."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise CheckpointError("the checkpoint path is empty; give a directory (an unset shell variable?)")
    if os.path.islink(text):
        return Path(os.path.realpath(text))
    return Path(text)


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it, then put it back
    os.umask(mask)
    return mask


def _hidden_dir(parent: Path, prefix: str) -> Path:
    """A new directory beside the checkpoint, with the permissions the umask gives (mkdtemp alone gives 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError:
        pass
    return tmp


def _manifest_bytes(files: dict[str, bytes], run_id: str | None) -> bytes:
    if run_id is not None and not isinstance(run_id, str):
        raise CheckpointError(f"run_id must be a string or None, got {run_id!r}")
    return _json_bytes({
        "format": MANIFEST_FORMAT,
        "format_version": FORMAT_VERSION,
        "saved_ns": time.time_ns(),
        "run_id": run_id,
        "files": {n: {"bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()},
    })


@dataclass(frozen=True)
class SavedCheckpoint:
    """A complete checkpoint found on disk (manifest and every file it lists, checksums verified)."""

    path: Path
    run_id: str | None
    saved_ns: int
    recovered: bool  # True: found in a hidden sibling left by a save that was killed between its two renames


def _manifest_of(directory: Path) -> dict | None:
    """The directory's manifest if it is a well-formed ArrayGPT manifest; None otherwise (no exception)."""
    try:
        raw = json.loads((directory / MANIFEST_FILE).read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return raw if _manifest_problem(raw) is None else None


def _manifest_problem(raw: Any) -> str | None:
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        return f"it is not an ArrayGPT manifest (no \"format\": \"{MANIFEST_FORMAT}\")"
    files = raw.get("files")
    if not isinstance(files, dict) or not files:
        return "\"files\" must be a non-empty object"
    for fname, entry in files.items():
        if fname not in DATA_FILES:
            return f"it lists {fname!r}, which is not a checkpoint file"
        size = entry.get("bytes") if isinstance(entry, dict) else None
        if (isinstance(size, bool) or not isinstance(size, int) or not isinstance(entry.get("sha256"), str)
                or len(entry["sha256"]) != 64):
            return f"the entry of {fname} must be {{\"bytes\": int, \"sha256\": 64 hex digits}}"
    saved = raw.get("saved_ns")
    if isinstance(saved, bool) or not isinstance(saved, int):
        return "\"saved_ns\" must be an integer"
    if raw.get("run_id") is not None and not isinstance(raw.get("run_id"), str):
        return "\"run_id\" must be a string or null"
    return None


def _complete(directory: Path) -> dict | None:
    """The manifest of `directory` if every file it lists is there with its size and SHA-256; else None."""
    manifest = _manifest_of(directory)
    if manifest is None:
        return None
    for fname, entry in manifest["files"].items():
        try:
            data = (directory / fname).read_bytes()
        except OSError:
            return None
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            return None
    return manifest


def _siblings(parent: Path, name: str, kinds: tuple[str, ...] = ("tmp", "old")) -> list[Path]:
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    prefixes = tuple(f".{name}.{kind}-" for kind in kinds)
    return [parent / e for e in sorted(entries) if e.startswith(prefixes) and (parent / e).is_dir()
            and not (parent / e).is_symlink()]


def find_checkpoint(path: str | os.PathLike) -> SavedCheckpoint | None:
    """The complete checkpoint at `path`, or None when there is none.

    When `path` does not exist but a save was killed between its two renames, the newest complete checkpoint in
    the hidden siblings it left (``.NAME.tmp-*``, ``.NAME.old-*``) is returned, with ``recovered=True``.
    """
    path = _target(path)
    if os.path.lexists(path):
        manifest = _complete(path) if path.is_dir() else None
        if manifest is None:
            return None
        return SavedCheckpoint(path, manifest.get("run_id"), manifest["saved_ns"], False)
    parent = Path(os.path.abspath(path)).parent
    found = []
    for d in _siblings(parent, path.name):
        manifest = _complete(d)
        if manifest is not None:
            found.append(SavedCheckpoint(d, manifest.get("run_id"), manifest["saved_ns"], True))
    return max(found, key=lambda c: c.saved_ns) if found else None


def _remove_ours(directory: Path, names: set[str] | None = None) -> bool:
    """Delete the checkpoint files (only those) in a directory a save made, then the directory if empty.

    Returns True when the directory is gone. Anything else in it (a user's file) is left where it is.
    """
    names = set(DATA_FILES) | {MANIFEST_FILE} if names is None else names
    for fname in names:
        f = directory / fname
        try:
            if f.is_file() and not f.is_symlink():
                f.unlink()
        except OSError:
            pass
    try:
        os.rmdir(directory)
        return True
    except OSError:
        return False


def _tidy(parent: Path, name: str, path: Path) -> None:
    """After a save: empty and remove the hidden siblings of `path` (this save's and those of killed saves).

    From ``.NAME.old-*`` (a previous checkpoint) only the files its manifest lists are deleted; every other entry
    (what a user kept in the checkpoint directory) is moved into `path`, or left there when `path` already has that
    name (a warning says where). A ``.NAME.tmp-*`` holds only files a save wrote. One without a manifest (an older
    version's) is left alone: nothing proves what is in it.
    """
    for d in _siblings(parent, name, ("tmp", "old", "probe")):
        kind = d.name[len(name) + 2:].split("-", 1)[0]
        if kind in ("tmp", "probe"):
            _remove_ours(d)
            continue
        manifest = _manifest_of(d)
        if manifest is None:
            continue
        ours = set(manifest["files"]) | {MANIFEST_FILE}
        kept = []
        for entry in sorted(os.listdir(d)):
            if entry in ours:
                continue
            if os.path.lexists(path / entry):
                kept.append(entry)
                continue
            try:
                os.replace(d / entry, path / entry)
            except OSError:
                kept.append(entry)
        if kept:  # keep the manifest too, so that a later save still knows which files are its own
            _remove_ours(d, set(manifest["files"]))
            warnings.warn(LLMWarning(f"{_names(kept)} from the previous checkpoint could not be moved into {path} "
                                     f"(the name is taken there): kept in {d}"), stacklevel=3)
        else:
            _remove_ours(d, ours)


def _serialize(model: GPT, tokenizer: Any, trainer: Trainer | None) -> dict[str, bytes]:
    """Every file of the checkpoint as bytes, in the order they are written (no disk access)."""
    be = model.backend
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CheckpointError(f"refusing to save: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                              f"vocab_size is {model.config.vocab_size}; save the tokenizer the model was built with")
    params = {}
    for pname, p in model.params.items():
        host = np.ascontiguousarray(be.to_numpy(p))
        if not np.isfinite(host).all():
            raise CheckpointError(f"refusing to save: parameter {pname} has NaN/inf values (the run diverged); "
                                  "the last good checkpoint is kept")
        params[pname] = host
    config = {"format_version": FORMAT_VERSION, "dtype": be.dtype_name, "model": model.config.to_dict()}
    files = {
        MODEL_FILE: safetensors.numpy.save(params, metadata={"format": "arraygpt"}),
        CONFIG_FILE: _json_bytes(config),
        TOKENIZER_FILE: _json_bytes(tokenizer.to_dict()),
    }
    if trainer is not None:
        if trainer.model is not model:
            raise CheckpointError("refusing to save: the trainer given trains another model than the one saved")
        opt = trainer.optimizer.state_dict()
        moments = {}
        for key in ("m", "v"):
            if set(opt[key]) != set(params):
                raise CheckpointError(f"refusing to save: the optimizer's {key!r} moments do not cover the model's "
                                      "parameters")
            for pname, arr in opt[key].items():
                moments[f"{key}.{pname}"] = np.ascontiguousarray(be.to_numpy(arr))
        training = {"recipe": trainer.recipe.to_dict(), "seed": trainer.seed, "state": trainer.state.to_dict(),
                    "optimizer_t": int(opt["t"])}
        files[OPTIMIZER_FILE] = safetensors.numpy.save(moments, metadata={"format": "arraygpt"})
        files[TRAINING_FILE] = _json_bytes(training)
    return files


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, default=_json_default) + "\n").encode("utf-8")


def _check_destination(path: Path) -> None:
    """Refuse to replace anything that is not a checkpoint this project wrote (an empty directory is fine)."""
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise CheckpointError(f"cannot save a checkpoint to {path}: it exists and is not a directory; "
                              "choose another --out")
    try:
        entries = set(os.listdir(path))
    except OSError as exc:
        raise CheckpointError(f"cannot save a checkpoint to {path}: {_os_reason(exc)}; choose another --out") from None
    if entries and _manifest_of(path) is None:
        legacy = " (or one from an ArrayGPT version before manifests)" if CONFIG_FILE in entries else ""
        raise CheckpointError(f"cannot save a checkpoint to {path}: it is a non-empty directory that is not a "
                              f"checkpoint (no ArrayGPT {MANIFEST_FILE}{legacy}), and saving would replace it; "
                              "choose another --out")


def check_destination(path: str | os.PathLike) -> None:
    """Fail early (before hours of training) when a checkpoint could not be saved to `path`.

    Checks what :func:`save_checkpoint` would refuse, then probes that a temporary sibling can be created.
    """
    target = _target(path)
    _check_destination(target)
    parent = Path(os.path.abspath(target)).parent
    ancestor = parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CheckpointError(f"cannot save a checkpoint to {path}: {ancestor} is a file, not a directory; "
                              "choose another --out")
    try:  # checkpoints are written into a temporary sibling, then renamed: probe exactly that
        parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=parent))
    except OSError as exc:
        raise CheckpointError(f"cannot save a checkpoint to {path}: {_os_reason(exc)} "
                              f"({exc.filename or parent}); choose a directory you can write to") from None


class CheckpointLock:
    """An exclusive lock on a checkpoint destination, held by one training run: ``.NAME.lock`` beside it.

    The lock is ``flock`` on that file, so the kernel releases it when the process dies (even by kill -9): a lock
    file left behind never blocks the next run. :meth:`release` (or leaving the ``with`` block) removes it.
    """

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # unlink while still holding it: a run that opened the old file sees it is gone and retries
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "CheckpointLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_destination(path: str | os.PathLike) -> CheckpointLock:
    """Take the lock that keeps two runs from writing checkpoints to the same `path` (raises CheckpointError if held).

    Where ``fcntl`` is missing (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        return CheckpointLock(Path(os.devnull), None)
    target = Path(os.path.realpath(os.path.abspath(_target(path))))  # every spelling of one directory: one lock
    lock_path = target.parent / f".{target.name}.lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot save a checkpoint to {path}: {_os_reason(exc)} "
                              f"({exc.filename or target.parent}); choose a directory you can write to") from None
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise CheckpointError(f"cannot lock {lock_path}: {_os_reason(exc)}; choose a directory you can write "
                                  "to with --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            who = f" (process {holder})" if holder.isdigit() else ""
            raise CheckpointError(f"another run{who} is writing checkpoints to {target} (it holds {lock_path}); "
                                  "wait for it to finish, stop it, or choose another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except OSError:
            same = False
        if not same:  # released and removed between our open and our lock: take the new file instead
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass
        return CheckpointLock(lock_path, fd)


def _write_file(path: Path, data: bytes) -> None:
    """Write `data` to a new file and make sure it reached the disk."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a directory; nothing more can be done there
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _restore_aside(aside: Path | None, path: Path) -> bool:
    """Put the previous checkpoint back after a failed swap; False if it could not be."""
    if aside is None or not os.path.lexists(aside):
        return True
    try:
        if os.path.lexists(path):  # the new one got in place before the interruption: keep it, tidy the old one
            _tidy(aside.parent, path.name, path)
            return True
        os.replace(aside, path)
        return True
    except OSError:
        return False


def _os_reason(exc: OSError) -> str:
    if exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _write_error(path: Path, parent: Path, exc: OSError) -> str:
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"could not write checkpoint {path}: permission denied on directory {parent} ({_os_reason(exc)}); "
                "choose a directory you can write to with --out")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"could not write checkpoint {path}: {_os_reason(exc)}; free some space or choose another --out"
    return f"could not write checkpoint {path}: {_os_reason(exc)}; check the disk or choose another --out"


# =====================================================================================================================
# loading
# =====================================================================================================================

def load_checkpoint(path: str | os.PathLike, backend: Any) -> Checkpoint:
    """Load a checkpoint directory onto `backend` (a Backend, or a backend name: then the saved dtype is used).

    Every file is validated; any problem raises CheckpointError naming the file and what to do.
    """
    path = _target(path)
    if not path.exists():
        found = find_checkpoint(path)
        if found is None:
            raise CheckpointError(f"checkpoint directory {path} does not exist; check the path "
                                  "(a checkpoint is the directory a training run wrote with --out)")
        warnings.warn(LLMWarning(f"checkpoint {path} is missing because a save was interrupted; loading the newest "
                                 f"complete checkpoint it left, {found.path} (the next save to {path} puts one back "
                                 "in place)"), stacklevel=2)
        path = found.path
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory; pass the directory that holds "
                              f"{CONFIG_FILE} and {MODEL_FILE}")

    reads: dict[str, bytes] = {}  # every file's bytes as parsed: checked against the manifest at the end
    manifest = _read_manifest(path)
    if manifest is not None:
        for fname in manifest["files"]:
            if not os.path.lexists(path / fname):
                raise CheckpointError(f"{path / fname} is missing (listed in {MANIFEST_FILE}); the checkpoint is "
                                      f"incomplete: {_RESAVE}")
        for fname in DATA_FILES:
            if fname not in manifest["files"] and os.path.lexists(path / fname):
                raise CheckpointError(f"{path / fname} is not listed in {MANIFEST_FILE}: it was not saved with this "
                                      f"checkpoint; remove it, or {_RESAVE}")

    config_path = path / CONFIG_FILE
    raw = _read_json(config_path, reads)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_path} holds {type(raw).__name__}, not a JSON object; {_RESAVE}")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{config_path}: unsupported format_version {version!r} (this version of ArrayGPT "
                              f"reads version {FORMAT_VERSION}); use the ArrayGPT version that wrote it, or re-train")
    dtype = raw.get("dtype")
    if dtype not in ("float32", "float64"):
        raise CheckpointError(f"{config_path}: dtype must be \"float32\" or \"float64\", got {dtype!r}; {_RESAVE}")
    model_cfg = raw.get("model")
    if not isinstance(model_cfg, dict):
        raise CheckpointError(f"{config_path}: \"model\" must be an object of GPTConfig fields; {_RESAVE}")
    try:
        config = GPTConfig.from_dict(model_cfg)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{config_path}: invalid model config ({_one_line(exc)}); {_RESAVE}") from None

    if isinstance(backend, str):
        from backends import get_backend  # a name: load in the dtype the checkpoint was saved in

        backend = get_backend(backend, dtype)

    tok_path = path / TOKENIZER_FILE
    try:
        tokenizer = tokenizer_from_dict(_read_json(tok_path, reads))
    except DataError as exc:
        raise CheckpointError(f"{tok_path}: invalid tokenizer ({_one_line(exc)}); {_RESAVE}") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{tok_path}: the vocabulary has {tokenizer.vocab_size} tokens but {CONFIG_FILE} says "
                              f"vocab_size {config.vocab_size}; the files come from different models: {_RESAVE}")

    model = GPT(config, backend, seed=0)
    expected = {name: tuple(int(n) for n in p.shape) for name, p in model.params.items()}
    weights_path = path / MODEL_FILE
    weights = _read_tensors(weights_path, expected, "parameter", reads)
    for name, host in weights.items():
        model.params[name][...] = backend.asarray(host)

    train_path, opt_path = path / TRAINING_FILE, path / OPTIMIZER_FILE
    has_train, has_opt = train_path.exists(), opt_path.exists()
    recipe = seed = state = optimizer_state = None
    if has_train != has_opt:
        present, missing = (train_path, opt_path) if has_train else (opt_path, train_path)
        raise CheckpointError(f"{missing} is missing although {present.name} is there; the training state is "
                              f"incomplete: {_RESAVE}, or delete {present.name} to keep only the model")
    if has_train:
        recipe, seed, state, t = _read_training(train_path, reads)
        moments = _read_tensors(opt_path, {f"{k}.{n}": s for k in ("m", "v") for n, s in expected.items()},
                                "optimizer tensor", reads)
        optimizer_state = {"t": t,
                           "m": {n: backend.asarray(moments[f"m.{n}"]) for n in expected},
                           "v": {n: backend.asarray(moments[f"v.{n}"]) for n in expected}}
    if manifest is not None:
        _verify(path, manifest, reads)
    return Checkpoint(model, tokenizer, recipe, seed, state, optimizer_state, path,
                      manifest.get("run_id") if manifest is not None else None)


def load(path: str | os.PathLike, backend: Any) -> tuple[GPT, Any]:
    """Load a checkpoint's model and tokenizer onto `backend` (ready to generate): ``model, tok = load(dir, be)``."""
    ckpt = load_checkpoint(path, backend)
    return ckpt.model, ckpt.tokenizer


def restore_trainer(ckpt: Checkpoint, pretrain_texts: list[str], chat_texts: list[str],
                    **trainer_kwargs: Any) -> Trainer:
    """A Trainer that continues the run saved in `ckpt` exactly where it stopped.

    The corpora must be the ones the run was started with. `trainer_kwargs` go to Trainer (progress, log, on_epoch,
    on_phase_end). The model is ``ckpt.model``: training continues in place.
    """
    if not ckpt.resumable:
        raise CheckpointError(f"checkpoint {ckpt.path} was saved without training state: it can be chatted with, "
                              "not resumed; start a new run instead")
    for key in ("recipe", "seed"):
        if key in trainer_kwargs:
            raise CheckpointError(f"restore_trainer takes the {key} from the checkpoint; do not pass {key}=")
    trainer = Trainer(ckpt.model, ckpt.tokenizer, pretrain_texts, chat_texts, ckpt.recipe, seed=ckpt.seed,
                      **trainer_kwargs)
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


# -- loading helpers --------------------------------------------------------------------------------------------------

def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete: {_RESAVE}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a file; {_RESAVE}") from None
    except PermissionError:
        raise CheckpointError(f"cannot read {path}: permission denied; fix its permissions (chmod +r)") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {_os_reason(exc)}; check the disk or {_RESAVE}") from None


def _read_manifest(path: Path) -> dict | None:
    """The checkpoint's manifest, checked; None for a directory without one (saved before manifests existed)."""
    mpath = path / MANIFEST_FILE
    if not os.path.lexists(mpath):
        return None
    raw = _read_json(mpath)
    problem = _manifest_problem(raw)
    if problem is not None:
        raise CheckpointError(f"{mpath} is invalid: {problem}; {_RESAVE}")
    return raw


def _verify(path: Path, manifest: dict, reads: dict[str, bytes]) -> None:
    """Every file read has the size and SHA-256 the manifest recorded when it was saved."""
    for fname, entry in manifest["files"].items():
        data = reads[fname] if fname in reads else _read_bytes(path / fname)
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CheckpointError(f"{path / fname} does not match the SHA-256 recorded in {MANIFEST_FILE} when it was "
                                  f"saved: the file was changed or corrupted since; {_RESAVE}")


def _read_json(path: Path, reads: dict[str, bytes] | None = None) -> Any:
    data = _read_bytes(path)
    if reads is not None:
        reads[path.name] = data
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not UTF-8 text (invalid byte at offset {exc.start}); the file is corrupt: "
                              f"{_RESAVE}") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                              f"the file is corrupt: {_RESAVE}") from None


def _read_tensors(path: Path, expected: dict[str, tuple[int, ...]], what: str,
                  reads: dict[str, bytes] | None = None) -> dict[str, np.ndarray]:
    """Load a safetensors file and check it holds exactly `expected` (name -> shape), finite floats."""
    data = _read_bytes(path)
    if reads is not None:
        reads[path.name] = data
    try:
        tensors = safetensors.numpy.load(data)
    except (safetensors.SafetensorError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({_one_line(exc)}); {_RESAVE}") from None
    missing = [n for n in expected if n not in tensors]
    unexpected = [n for n in tensors if n not in expected]
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} {what}(s) the model in {CONFIG_FILE} needs "
                              f"({_names(missing)}); the files come from different models: {_RESAVE}")
    if unexpected:
        raise CheckpointError(f"{path} has {len(unexpected)} unexpected {what}(s) ({_names(unexpected)}) that the "
                              f"model in {CONFIG_FILE} does not have; the files come from different models: {_RESAVE}")
    out = {}
    for name, shape in expected.items():
        arr = tensors[name]
        if tuple(arr.shape) != shape:
            raise CheckpointError(f"{path}: {what} {name} has shape {tuple(arr.shape)} but {CONFIG_FILE} implies "
                                  f"{shape}; the weights belong to a different model size: use the {CONFIG_FILE} "
                                  f"saved with them, or {_RESAVE}")
        if arr.dtype.kind != "f":
            raise CheckpointError(f"{path}: {what} {name} has dtype {arr.dtype}, expected floating point; {_RESAVE}")
        if not np.isfinite(arr).all():
            raise CheckpointError(f"{path}: {what} {name} has NaN/inf values; the file is corrupt: {_RESAVE}")
        out[name] = np.array(arr)  # a private, writable copy
    return out


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _read_training(path: Path, reads: dict[str, bytes] | None = None) -> tuple[Recipe, int | None, TrainState, int]:
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
    return recipe, seed, state, t


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
        if st.epoch > epochs:
            raise ValueError(f"epoch {st.epoch} is beyond the recipe's {epochs} {phase} epochs")
    if not isinstance(st.epoch_loss_sum, (int, float)) or not math.isfinite(st.epoch_loss_sum):
        raise ValueError(f"epoch_loss_sum must be a finite number, got {st.epoch_loss_sum!r}")
    if not isinstance(st.history, list) or not all(isinstance(h, dict) for h in st.history):
        raise ValueError("history must be a list of objects")
    if not isinstance(st.rng_state, dict):
        raise ValueError("rng_state must be the shuffling generator's state object")
    np.random.default_rng().bit_generator.state = st.rng_state  # raises on a malformed state
