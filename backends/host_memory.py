"""How much memory the machine can still give this process, and which devices keep their own (host side).

The estimates of what a model needs are :mod:`llm.nn.footprint`'s; the command lines and checkpoint loading compare the
two before anything is allocated (the kernel kills a process that allocates past the machine's memory with no
message).
"""

from __future__ import annotations

import os

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


def on_gpu(device: str) -> bool:
    """Whether a device name (a backend's) puts the model in GPU memory, not the machine's."""
    return device in GPU_DEVICES or device.startswith("torch:") and device != "torch:cpu"


def size_text(n: float) -> str:
    """A byte count as people read it: ``1.5 GB``, ``3.2 MB``, ``800.0 kB``."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"
