"""What every part of a checkpoint shares: the file names, the format version, JSON and error-message helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

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
