"""The atomic directory writer: a checkpoint's files reach NAME complete or not at all.

Everything is written into a fresh hidden sibling directory (``.NAME.tmp-*``), flushed and fsynced, and only then
swapped into place (the previous checkpoint goes aside to ``.NAME.old-*`` in between). ``manifest.json``, written last,
lists every file with its size and SHA-256: it is what makes a directory a checkpoint, what a save may delete, and
what loading verifies. Also here: finding the newest complete checkpoint a killed save left, tidying the hidden
siblings, and checking a destination before training (the lock that keeps two runs from writing one directory is
in ``lock.py``). This module knows nothing about what the files hold (see ``files.py`` and ``state.py``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm.checks import is_int
from llm.data.safe_read import parse_json, read_regular
from llm.errors import CheckpointError, LLMWarning
from llm.checkpoint._common import (CONFIG_FILE, DATA_FILES, FORMAT_VERSION, LEGACY_FILES, MANIFEST_FILE, MANIFEST_FORMAT,
                                    MANIFEST_LIMIT, _RESAVE, _json_bytes, _names, _os_reason, _read_bytes, _read_json)

# The advice of every error about the destination: `out` is the parameter (a command line shows it as its flag).
_ANOTHER = "choose another destination (out)"


def write_checkpoint(path: Path, files: dict[str, bytes], run_id: str | None) -> Path:
    """Write `files` ({name: bytes}, in order) and then their manifest atomically to directory `path` (a Path already
    resolved by :func:`_target`); see :func:`llm.checkpoint.save_checkpoint` for what is promised."""
    files = dict(files)
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
            raise CheckpointError(msg, param="out") from None
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
    try:  # a FIFO or a device named manifest.json must not hang or fill memory: regular files only, bounded
        data = read_regular(directory / MANIFEST_FILE, MANIFEST_LIMIT)
        raw = parse_json(data.decode("utf-8")) if len(data) <= MANIFEST_LIMIT else None
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
        if (not is_int(size) or not isinstance(entry.get("sha256"), str)
                or len(entry["sha256"]) != 64):
            return f"the entry of {fname} must be {{\"bytes\": int, \"sha256\": 64 hex digits}}"
    saved = raw.get("saved_ns")
    if not is_int(saved):
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
            data = read_regular(directory / fname, entry["bytes"])
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
        ours = set(manifest["files"]) | {MANIFEST_FILE} | set(LEGACY_FILES)  # an older format's state: not carried
        kept = []
        for entry in sorted(os.listdir(d)):
            if entry in ours:
                continue
            if os.path.lexists(path / entry) or os.path.islink(d / entry):  # a link is never carried into the new
                kept.append(entry)
                continue
            try:
                os.replace(d / entry, path / entry)
            except OSError:
                kept.append(entry)
        if kept:  # keep the manifest too, so that a later save still knows which files are its own
            _remove_ours(d, set(manifest["files"]) | set(LEGACY_FILES))
            warnings.warn(LLMWarning(f"{_names(kept)} from the previous checkpoint could not be moved into {path} "
                                     f"(the name is taken there, or it is a symbolic link): kept in {d}"), stacklevel=4)
        else:
            _remove_ours(d, ours)


def _check_destination(path: Path) -> None:
    """Refuse to replace anything that is not a checkpoint this project wrote (an empty directory is fine)."""
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise CheckpointError(f"cannot save a checkpoint to {path}: it exists and is not a directory; "
                              f"{_ANOTHER}", param="out")
    try:
        entries = set(os.listdir(path))
    except OSError as exc:
        raise CheckpointError(f"cannot save a checkpoint to {path}: {_os_reason(exc)}; {_ANOTHER}",
                              param="out") from None
    if entries and _manifest_of(path) is None:
        legacy = " (or one from an ArrayGPT version before manifests)" if CONFIG_FILE in entries else ""
        raise CheckpointError(f"cannot save a checkpoint to {path}: it is a non-empty directory that is not a "
                              f"checkpoint (no ArrayGPT {MANIFEST_FILE}{legacy}), and saving would replace it; "
                              f"{_ANOTHER}", param="out")


def adopt_checkpoint(path: str | os.PathLike) -> bool:
    """Give a checkpoint saved before manifests existed (one just loaded, to be resumed in place) a manifest of the
    checkpoint files it holds, so that the next save may replace them; True when one was written. A directory that
    has a manifest, or no checkpoint files, is left as it is. Links are never listed (a save never deletes through
    them)."""
    target = _target(path)
    if not target.is_dir() or os.path.lexists(target / MANIFEST_FILE):
        return False
    files = {}
    for fname in DATA_FILES:
        f = target / fname
        if os.path.isfile(f) and not os.path.islink(f):
            files[fname] = read_regular(f, os.path.getsize(f))
    if CONFIG_FILE not in files:
        return False
    tmp = target / f".{MANIFEST_FILE}.tmp-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(_manifest_bytes(files, None))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target / MANIFEST_FILE)
    return True


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
                              f"{_ANOTHER}", param="out")
    try:  # checkpoints are written into a temporary sibling, then renamed: probe exactly that
        parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=parent))
    except OSError as exc:
        raise CheckpointError(f"cannot save a checkpoint to {path}: {_os_reason(exc)} "
                              f"({exc.filename or parent}); choose a directory you can write to") from None


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


def _write_error(path: Path, parent: Path, exc: OSError) -> str:
    # the message of a CheckpointError(..., param="out"): each one ends in the advice to save elsewhere
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"could not write checkpoint {path}: permission denied on directory {parent} ({_os_reason(exc)}); "
                "choose a destination (out) in a directory you can write to")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"could not write checkpoint {path}: {_os_reason(exc)}; free some space or {_ANOTHER}"
    return f"could not write checkpoint {path}: {_os_reason(exc)}; check the disk or {_ANOTHER}"


def _read_manifest(path: Path) -> dict | None:
    """The checkpoint's manifest, checked; None for a directory without one (saved before manifests existed)."""
    mpath = path / MANIFEST_FILE
    if not os.path.lexists(mpath):
        return None
    raw = _read_json(mpath, limit=MANIFEST_LIMIT)
    problem = _manifest_problem(raw)
    if problem is not None:
        raise CheckpointError(f"{mpath} is invalid: {problem}; {_RESAVE}")
    return raw


def _verify(path: Path, manifest: dict, reads: dict[str, bytes]) -> None:
    """Every file read has the size and SHA-256 the manifest recorded when it was saved."""
    for fname, entry in manifest["files"].items():
        data = reads[fname] if fname in reads else _read_bytes(path / fname, entry["bytes"])
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CheckpointError(f"{path / fname} does not match the SHA-256 recorded in {MANIFEST_FILE} when it was "
                                  f"saved: the file was changed or corrupted since; {_RESAVE}")
