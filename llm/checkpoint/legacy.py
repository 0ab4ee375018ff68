"""Reading the book trainer's training state as it was saved before the one training-state format: a
``text_run.safetensors`` beside the model (Adam's two flat moment buffers, and in its metadata the settings, the step,
the generator, Adam's counters, the history and the SHA-256 of the ``model.safetensors`` it goes with).

Such a checkpoint loads and resumes; its next save writes the current format (and leaves the old file behind)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from llm.checkpoint._common import LEGACY_TEXT_STATE, MANIFEST_FILE, MODEL_FILE
from llm.errors import CheckpointError

LEGACY_FORMAT = "arraygpt-text-run"
_START = "start a new run"


def read_legacy_text_state(path: Path, model: Any) -> Any:
    """The :class:`~llm.checkpoint.state.SavedTraining` of an older book-trainer checkpoint in `path`."""
    import safetensors

    from llm.checkpoint.state import SavedTraining, check_train_state
    from llm.training.loop import TrainState
    from llm.training.text_run import TextSettings

    state_path = path / LEGACY_TEXT_STATE
    try:
        with safetensors.safe_open(str(state_path), framework="numpy") as f:
            meta = f.metadata() or {}
            flat = {k: f.get_tensor(k) for k in f.keys()}
        saved = json.loads(meta.get("state", "null"))
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
        model_sha = manifest["files"][MODEL_FILE]["sha256"]
    except (OSError, ValueError, TypeError, KeyError, RecursionError, safetensors.SafetensorError) as exc:
        raise CheckpointError(f"cannot read {state_path}: {exc}; {_START}") from None
    if meta.get("format") != LEGACY_FORMAT or not isinstance(saved, dict) or saved.get("version") != 1:
        raise CheckpointError(f"{state_path} is not a training state this version reads; {_START}")
    if saved.get("model_sha256") != model_sha:
        raise CheckpointError(f"{state_path} belongs to another save of the model than {path / MODEL_FILE} (a save "
                              "was interrupted between the two): the run cannot be resumed exactly; start a new run "
                              "(the model itself loads)")
    try:
        settings = TextSettings.from_dict(saved["settings"])
        step = int(saved["step"])
        finished = step >= settings.steps
        history = [{"phase": "text", "epoch": 1, "loss": h.get("train_loss"), "step": h["step"],
                    **({"val_loss": h["val_loss"]} if h.get("val_loss") is not None else {})}
                   for h in saved["history"]]
        state = TrainState(phase=int(finished), step=step, phase_step=0 if finished else step,
                           rng_state=saved["rng"], history=history, steps=list(saved.get("steps", [])),
                           train_seconds=float(saved.get("train_seconds", 0.0)))
        check_train_state(state, "text", settings)
        opt = saved["optimizer"]
        counters = {"t": int(opt["t"]), "calls": int(opt["calls"]), "skipped": int(opt["skipped"])}
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{state_path}: invalid training state ({exc}); {_START}") from None
    moments = {}
    n = model.flat.param_buffer.shape[0]
    for key in ("m", "v"):
        arr = flat.get(key)
        if arr is None or arr.shape != (n,) or not np.isfinite(arr).all():
            raise CheckpointError(f"{state_path}: moment {key!r} is missing, of the wrong shape or not finite; "
                                  f"{_START}")
        moments[key] = model.flat.views(model.backend.asarray(arr))
    return SavedTraining("text", settings, settings.seed, state, counters, moments, saved.get("text"))
