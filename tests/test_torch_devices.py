"""Any device PyTorch has: ``torch:DEVICE`` asks PyTorch whether the device is there and says clearly when not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from backends import get_backend
from llm.errors import BackendUnavailableError, ConfigError
from tests.conftest import require_backend


@pytest.fixture
def torch():
    require_backend("torch")
    import torch

    return torch


def test_torch_cpu_spellings_are_one_backend(torch):
    for name in ("torch", "torch:cpu", "TORCH:CPU "):
        b = get_backend(name)
        assert b.name == "torch" and b.device == torch.device("cpu")


@pytest.mark.parametrize("device_type", ["mps", "xpu", "cuda"])
def test_a_device_pytorch_does_not_see_is_a_clear_error(torch, device_type):
    module = getattr(torch, device_type, None)
    if module is not None and module.is_available():
        b = get_backend(f"torch:{device_type}")  # a machine that has it: the backend is built there
        assert b.name == f"torch:{device_type}" and b.device.type == device_type
        return
    with pytest.raises(BackendUnavailableError, match=f"torch:{device_type}.*use backend torch") as info:
        get_backend(f"torch:{device_type}")
    assert "\n" not in str(info.value) and info.value.param == "backend"


def test_an_index_past_the_device_count_is_refused(torch):
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="torch:cuda:7"):
            get_backend("torch:cuda:7")
        return
    count = torch.cuda.device_count()
    with pytest.raises(BackendUnavailableError, match=f"sees {count} cuda device"):
        get_backend(f"torch:cuda:{count}")
    b = get_backend("torch:cuda:0")
    assert b.name == "torch:cuda" and b.device == torch.device("cuda:0")


def test_an_unknown_device_type_and_the_meta_device_are_refused(torch):
    with pytest.raises(BackendUnavailableError, match="does not know the device 'bogus'"):
        get_backend("torch:bogus")
    with pytest.raises(BackendUnavailableError, match="meta device holds shapes"):
        get_backend("torch:meta")
    with pytest.raises(ConfigError, match=r"torch:DEVICE"):
        get_backend("torch:")


def test_the_command_line_takes_any_torch_device_and_says_when_it_is_missing(torch, tmp_path):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device: the missing-device message cannot be seen here")
    run = subprocess.run([sys.executable, "-m", "llm", "train", "--device", "torch:mps", "--no-chat", "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and len(lines) == 1, run.stderr
    assert "torch:mps" in lines[0] and "use --device torch (CPU)" in lines[0]
