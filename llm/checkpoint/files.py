"""The model's files: ``model.safetensors`` (the parameters), ``config.json`` (format version, dtype, GPTConfig) and
``tokenizer.json``: what goes into them, and reading them back with every check (a message naming the file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from llm.nn.config import GPTConfig
from llm.errors import CheckpointError, SaveRefusedError, ConfigError, DataError
from llm.nn.model import GPT
from llm.data.tokenizers import tokenizer_from_dict
from llm.checkpoint._common import (CONFIG_FILE, FORMAT_VERSION, MODEL_FILE, TOKENIZER_FILE, _RESAVE, _json_bytes, _names,
                      _one_line, _read_file, _read_json)


def serialize_model(model: GPT, tokenizer: Any) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """The model's files as bytes, in the order they are written, and its parameters on the host (no disk access).

    Raises CheckpointError when the tokenizer does not fit the model or a parameter is NaN/inf.
    """
    be = model.backend
    if tokenizer.vocab_size != model.config.vocab_size:
        raise SaveRefusedError(f"refusing to save: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                              f"vocab_size is {model.config.vocab_size}; save the tokenizer the model was built with")
    params = {}
    for pname, p in model.params.items():
        host = np.ascontiguousarray(be.to_numpy(p))
        if not np.isfinite(host).all():
            raise SaveRefusedError(f"refusing to save: parameter {pname} has NaN/inf values (the run diverged); "
                                  "the last good checkpoint is kept")
        params[pname] = host
    config = {"format_version": FORMAT_VERSION, "dtype": be.dtype_name, "model": model.config.to_dict()}
    files = {
        MODEL_FILE: safetensors.numpy.save(params, metadata={"format": "arraygpt"}),
        CONFIG_FILE: _json_bytes(config),
        TOKENIZER_FILE: _json_bytes(tokenizer.to_dict()),
    }
    return files, params


def read_config(path: Path, reads: dict[str, bytes]) -> tuple[GPTConfig, str]:
    """``config.json`` of checkpoint directory `path`, checked: the model's GPTConfig and the dtype it was saved in."""
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
    return config, dtype


def read_tokenizer(path: Path, config: GPTConfig, reads: dict[str, bytes]) -> Any:
    """``tokenizer.json`` of checkpoint directory `path`, checked against the model's vocabulary size."""
    tok_path = path / TOKENIZER_FILE
    try:
        tokenizer = tokenizer_from_dict(_read_json(tok_path, reads))
    except DataError as exc:
        raise CheckpointError(f"{tok_path}: invalid tokenizer ({_one_line(exc)}); {_RESAVE}") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{tok_path}: the vocabulary has {tokenizer.vocab_size} tokens but {CONFIG_FILE} says "
                              f"vocab_size {config.vocab_size}; the files come from different models: {_RESAVE}")
    return tokenizer


def read_model(path: Path, config: GPTConfig, backend: Any, reads: dict[str, bytes]) -> GPT:
    """A GPT of `config` on `backend` with the parameters of ``model.safetensors`` (every name, shape and value
    checked)."""
    model = GPT(config, backend, seed=0)
    weights = _read_tensors(path / MODEL_FILE, param_shapes(model), "parameter", reads)
    for name, host in weights.items():
        model.params[name][...] = backend.asarray(host)
    return model


def param_shapes(model: GPT) -> dict[str, tuple[int, ...]]:
    """The shape of each of `model`'s parameters, by name."""
    return {name: tuple(int(n) for n in p.shape) for name, p in model.params.items()}


def _read_tensors(path: Path, expected: dict[str, tuple[int, ...]], what: str,
                  reads: dict[str, bytes] | None = None) -> dict[str, np.ndarray]:
    """Load a safetensors file and check it holds exactly `expected` (name -> shape), finite floats."""
    data = _read_file(path, reads)  # a regular file, no larger than the manifest says
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
