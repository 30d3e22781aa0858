"""spatialsam.device: choosing where the networks run."""

import os

import numpy as np
import pytest
import torch

from spatialsam.device import to_device, to_numpy, use_device


def test_cpu_is_the_default_and_a_no_op():
    assert use_device("cpu") == torch.device("cpu")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = to_device(a)
    assert t.device.type == "cpu" and t.data_ptr() == torch.from_numpy(a).data_ptr()  # shared, not copied
    np.testing.assert_array_equal(to_numpy(t * 2), a * 2)
    assert to_numpy(torch.ones(2, requires_grad=True)).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:-1", "cpu:0", "", None, 0])
def test_malformed_names_are_refused_naming_the_field(name):
    with pytest.raises(ValueError, match=r"^--where: expected 'cpu', 'cuda' or 'cuda:N'"):
        use_device(name, "--where")
    assert torch.get_default_device().type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="device: 'cuda:1' asked for, but this torch .* sees no CUDA device"):
        use_device("cuda:1")
    assert torch.get_default_device().type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip():
    try:
        assert use_device("cuda").type == "cuda"
        t = to_device(np.ones(3, np.float32))
        assert t.is_cuda and torch.zeros(1).is_cuda
        assert to_numpy(t + 1).tolist() == [2.0, 2.0, 2.0]
        with pytest.raises(ValueError, match="only 1 CUDA device"):
            use_device(f"cuda:{torch.cuda.device_count()}")
    finally:
        use_device("cpu")


def test_machine_line_names_the_cpu_and_its_bf16(monkeypatch):
    """Benchmarks record the machine: the CPU's model (where /proc/cpuinfo has it), its logical CPUs
    and whether it has bf16 in hardware, which decides what `amp: auto` trains in."""
    from spatialsam import device

    for native in (True, False):
        monkeypatch.setattr(device, "native_bf16", lambda dev, n=native: n)
        line = device.machine()
        assert f", {'bf16' if native else 'no bf16'} in hardware, torch {torch.__version__}" in line
        assert f"{os.cpu_count()} logical CPUs" in line
    try:
        models = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
    except OSError:
        models = []
    if models:
        assert line.startswith(models[0] + ",")
