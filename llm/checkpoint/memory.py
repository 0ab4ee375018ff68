"""Will a model fit? Estimated from its configuration alone, before anything is allocated.

Used by the command line before it builds a model to train (``llm.cli.session.check_memory``) and by
:func:`llm.checkpoint.load_checkpoint` before it builds the model a checkpoint's ``config.json`` describes: the kernel
kills a process that allocates past the machine's memory with no message, and a hand-edited config (100,000 layers)
would otherwise build for minutes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llm.errors import CheckpointError

SLACK = 64 << 20  # bytes a config may describe past twice its model file before it is refused unbuilt
GPU_DEVICES = ("cuda", "torch:cuda")  # their memory is not the machine's: not checked here


def available_memory() -> int | None:
    """Bytes the machine can still give this process (MemAvailable), or None where that is unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def largest_tensor(config: Any) -> int:
    """Elements of the largest parameter: the embedding, the learned positions, a feed-forward or QKV matrix."""
    c = config
    position = c.max_seq_len * c.d_model if c.pos_encoding == "learned" else 0
    return max(c.vocab_size * c.d_model, position, c.d_model * c.d_ff, 3 * c.d_model * c.d_model)


def build_memory(config: Any, dtype_bytes: int) -> int:
    """Bytes building the model takes at its peak: the parameters, plus the float64 draw of the largest one and
    its scaled copy (weights are drawn on the host in float64, then cast)."""
    return config.num_parameters() * dtype_bytes + largest_tensor(config) * 16


def size_text(n: float) -> str:
    """A byte count as people read it: ``1.5 GB``, ``3.2 MB``, ``800.0 kB``."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def on_gpu(device: str) -> bool:
    """Whether a device name (a backend's) puts the model in GPU memory, not the machine's."""
    return device in GPU_DEVICES or device.startswith("torch:") and device != "torch:cpu"


def check_loadable(path: Path, model_file: Path, config: Any, dtype: str, gpu: bool) -> None:
    """Refuse, before the model is built, a checkpoint whose config describes more parameters than its model file
    holds (an edited config), or a model too large for this machine's memory (not checked for a `gpu` backend)."""
    dtype_bytes = 8 if dtype == "float64" else 4
    need_file = config.num_parameters() * dtype_bytes  # safetensors: the raw tensors plus a small header
    c = config
    available = None if gpu else available_memory()
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
