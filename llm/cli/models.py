"""The model a command line is pointed at: one of our checkpoint directories (``arraygpt train|text --out``), or a
Hugging Face GPT-2 directory (``config.json`` with ``"model_type": "gpt2"``, as ``save_pretrained`` writes it).

    model, tok = load_model("runs/shakespeare", "cpu")          # llm.load
    model, tok = load_model("gpt2-local/", "torch", "float32")  # llm.load_hf
    model, tok = load_model("gpt2", "cpu")                      # the hub, where it is reachable
"""

from __future__ import annotations

import json
import os
from typing import Any

from llm.errors import CheckpointError, ConfigError

HF_CONFIG = "config.json"


def is_hf_dir(path: str | os.PathLike) -> bool:
    """True when `path` is a directory whose config.json says ``"model_type": "gpt2"`` (a Hugging Face GPT-2)."""
    config = os.path.join(path, HF_CONFIG)
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # llm.load says what is wrong with it
    return isinstance(d, dict) and d.get("model_type") == "gpt2"


def is_hub_name(path: str | os.PathLike) -> bool:
    """True for a GPT-2 name of the Hugging Face hub (``gpt2`` ... ``gpt2-xl``, also ``openai-community/gpt2``) that
    is no local path: llm.load_hf downloads it where the hub is reachable, or says which files to fetch."""
    from llm.nn.config import GPT2_PRESETS

    name = os.fspath(path)
    return not os.path.lexists(name) and name.removeprefix("openai-community/") in GPT2_PRESETS


def backend_for(device: str, dtype: str | None) -> Any:
    """The backend to load onto: the name alone (the checkpoint's dtype) when `dtype` is None, else that dtype."""
    if dtype is None:
        return device
    from backends import get_backend

    return get_backend(device, dtype)


def load_model(path: str, device: str, dtype: str | None = None, flag: str = "--model") -> tuple[Any, Any]:
    """``(model, tokenizer)`` from `path` on `device` (in `dtype`, default the saved one); `flag` names the option
    in the messages. An empty path, a file, or a directory that is neither kind: one line saying so."""
    if not str(path).strip():
        raise ConfigError(f"{flag} is empty: give a model directory (is a shell variable unset?)")
    if os.path.isfile(path):
        raise CheckpointError(f"{flag} {path} is a file: give the directory a training run saved to (--out), or a "
                              "Hugging Face GPT-2 directory (config.json, model.safetensors)")
    backend = backend_for(device, dtype)
    if is_hf_dir(path) or is_hub_name(path):
        import llm

        load_hf = getattr(llm, "load_hf", None)
        if load_hf is None:
            raise ConfigError(f"{flag} {path} is a Hugging Face GPT-2 directory, and this version of ArrayGPT "
                              "cannot read one (no llm.load_hf); give one of its own checkpoints")
        return load_hf(path, backend)
    from llm.checkpoint import load

    return load(path, backend)
