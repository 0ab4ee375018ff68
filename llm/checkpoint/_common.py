"""What every part of a checkpoint shares: the file names, the format version, reading files (only regular ones, never
more than the manifest recorded), JSON and error-message helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from llm.data.safe_read import NotRegularFile, UnreadableJSON, parse_json, read_regular
from llm.errors import CheckpointError

FORMAT_VERSION = 1

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINING_FILE = "training.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "arraygpt-checkpoint"
DATA_FILES = (MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE, OPTIMIZER_FILE, TRAINING_FILE)
# The book trainer's state before the one training-state format (read on resume, never written or carried over)
LEGACY_TEXT_STATE = "text_run.safetensors"
LEGACY_FILES = (LEGACY_TEXT_STATE, f".{LEGACY_TEXT_STATE}.tmp")

_RESAVE = "re-save the checkpoint or use another one"
MANIFEST_LIMIT = 1 << 20  # bytes: a manifest lists six files; anything longer is not one
EDIT_SLACK = 1 << 20  # bytes a file may exceed its recorded size and still be read (and diagnosed), not more


class FileReads(dict):
    """The bytes of each checkpoint file as it was parsed (name -> bytes), checked against the manifest at the end.

    ``sizes`` holds the size the manifest recorded for each file: a read of that file takes no more.
    """

    def __init__(self, manifest: dict | None = None) -> None:
        super().__init__()
        files = manifest["files"] if manifest is not None else {}
        self.sizes: dict[str, int] = {name: entry["bytes"] for name, entry in files.items()}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, default=_json_default) + "\n").encode("utf-8")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _os_reason(exc: OSError) -> str:
    if exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The bytes of checkpoint file `path`, at most ``limit + 1`` of them: a regular file (a FIFO or a device is
    refused before it is read)."""
    try:
        return read_regular(path, limit)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete: {_RESAVE}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a file; {_RESAVE}") from None
    except NotRegularFile as exc:
        raise CheckpointError(f"{path} is {exc.kind}, not a regular file; a checkpoint holds only files: "
                              f"{_RESAVE}") from None
    except PermissionError:
        raise CheckpointError(f"cannot read {path}: permission denied; fix its permissions (chmod +r)") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {_os_reason(exc)}; check the disk or {_RESAVE}") from None


def _read_file(path: Path, reads: dict[str, bytes] | None = None) -> bytes:
    """:func:`_read_bytes` of a checkpoint file, kept in `reads`; with a :class:`FileReads` that knows its size, a
    file more than EDIT_SLACK bytes over it is refused unread (one a little over is parsed, so that the message
    says what changed; the checksum refuses it at the end anyway)."""
    recorded = getattr(reads, "sizes", {}).get(path.name)
    data = _read_bytes(path, None if recorded is None else recorded + EDIT_SLACK)
    if recorded is not None and len(data) > recorded + EDIT_SLACK:
        raise CheckpointError(f"{path} is more than {EDIT_SLACK} bytes larger than the {recorded} bytes "
                              f"{MANIFEST_FILE} recorded (with its SHA-256) when it was saved: the file was changed "
                              f"or replaced since; {_RESAVE}")
    if reads is not None:
        reads[path.name] = data
    return data


def _read_json(path: Path, reads: dict[str, bytes] | None = None, limit: int | None = None) -> Any:
    """A checkpoint JSON file, parsed (see :func:`_read_file`); `limit` bounds a file no manifest records."""
    data = _read_file(path, reads) if limit is None else _read_bytes(path, limit)
    if limit is not None and len(data) > limit:
        raise CheckpointError(f"{path} is larger than any ArrayGPT {path.name} ({limit} bytes); {_RESAVE}")
    try:
        return parse_json(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not UTF-8 text (invalid byte at offset {exc.start}); the file is corrupt: "
                              f"{_RESAVE}") from None
    except UnreadableJSON as exc:  # malformed, nested too deeply, or an integer too long: before any checksum
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the file is corrupt: {_RESAVE}") from None
