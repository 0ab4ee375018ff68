"""Will a model fit? Estimated from its configuration alone, before anything is allocated.

Used by :func:`llm.checkpoint.load_checkpoint` before it builds the model a checkpoint's ``config.json`` describes:
the kernel kills a process that allocates past the machine's memory with no message, and a hand-edited config
(100,000 layers) would otherwise build for minutes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import backends.host_memory as host_memory
from backends.host_memory import size_text
from llm.errors import CheckpointError
from llm.nn.footprint import build_memory

SLACK = 64 << 20  # bytes a config may describe past twice its model file before it is refused unbuilt


def check_loadable(path: Path, model_file: Path, config: Any, dtype: str, gpu: bool) -> None:
    """Refuse, before the model is built, a checkpoint whose config describes more parameters than its model file
    holds (an edited config), or a model too large for this machine's memory (not checked for a `gpu` backend)."""
    dtype_bytes = 8 if dtype == "float64" else 4
    need_file = config.num_parameters() * dtype_bytes  # safetensors: the raw tensors plus a small header
    c = config
    available = None if gpu else host_memory.available_memory()
    need = build_memory(config, dtype_bytes) + need_file  # the model and the bytes read from its file
    if available is not None and need > available:
        raise CheckpointError(f"out of memory: the model in {path} needs about {size_text(need)} "
                              f"({c.num_parameters():,} parameters in {dtype}: d_model {c.d_model}, d_ff {c.d_ff}, n_layers {c.n_layers}, "
                              f"vocab_size {c.vocab_size} in its config.json) and this machine has "
                              f"{size_text(available)} available; load it on a device with more memory")
    try:
        have_file = os.lstat(model_file).st_size
    except OSError:
        have_file = None  # missing or unreadable: reading it says so
    # far more than the file holds: refused before the model is built (a smaller gap is reported, naming the
    # parameter, when the file is read)
    if have_file is not None and need_file > 2 * have_file + SLACK:
        raise CheckpointError(f"{path / 'config.json'} describes a model of {config.num_parameters():,} parameters "
                              f"({size_text(need_file)}) but {model_file} holds only {size_text(have_file)}: the "
                              "config was edited, or the files come from different checkpoints; re-save it")
