"""The same networks on every device the benchmark can use: bf16 autocast where asked, and CUDA
results that agree with the CPU's (the CUDA cases run only where torch sees a GPU)."""

import numpy as np
import pytest
import torch

import spatialsam.train_unet as tu
from spatialsam.data import make_demo_volume
from spatialsam import device as devmod
from spatialsam.device import resolve_amp, use_device

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.fixture()
def on_device(request):
    dev = use_device(request.param)
    yield dev
    use_device("cpu")


@pytest.mark.parametrize("on_device", DEVICES, indirect=True)
@pytest.mark.parametrize("amp", ["none", "bf16", "auto-native", "auto-emulated"])
def test_unet_training_autocasts_on_the_device_it_runs_on(on_device, amp, tmp_path, monkeypatch):
    """bf16 autocast where asked; "auto" asks for it only where the device has bf16 in hardware
    (forced both ways here: the CPU this runs on may have it or not), and the summary says which."""
    if amp.startswith("auto"):
        monkeypatch.setattr(devmod, "native_bf16", lambda dev: amp == "auto-native")
    img, lab = make_demo_volume((16, 48, 48), seed=0)
    seen = []
    real = tu.build_model

    def build(cfg):
        m = real(cfg)
        first = next(mod for mod in m.modules() if isinstance(mod, torch.nn.Conv3d))
        first.register_forward_hook(lambda _m, _i, out: seen.append((out.device.type, out.dtype)) if _m.training else None)
        return m

    monkeypatch.setattr(tu, "build_model", build)
    cfg = tu.TrainConfig(unet={"channels": [4, 8], "pool": [[2, 2, 2]]}, crop_zyx=(8, 32, 32), batch_size=1,
                         max_steps=3, checkpoint_every=3, threads=1, amp=amp.split("-")[0])
    out = tu.train_unet(tu.make_train_data(img, lab > 0, (5, 5, 5)), cfg, tmp_path, progress=False)
    assert out["step"] == 3 and out["device"] == str(on_device)
    bf16 = amp in ("bf16", "auto-native")
    assert out["amp"] == ("bf16" if bf16 else "none")
    assert seen and set(seen) == {(on_device.type, torch.bfloat16 if bf16 else torch.float32)}


def test_resolve_amp_follows_the_hardware_flags(monkeypatch):
    """"auto" is bf16 exactly where the CPU reports AVX512-BF16 or AMX tiles; "none" and "bf16" are
    what they say on any machine; anything else is refused naming the field."""
    cpu = torch.device("cpu")
    for avx, amx, want in ((False, False, "none"), (True, False, "bf16"), (False, True, "bf16"), (True, True, "bf16")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_amp("auto", cpu) == want
        assert resolve_amp("none", cpu) == "none" and resolve_amp("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="amp: must be one of none, bf16, auto"):
        resolve_amp("fp16", cpu)
    # a torch without the private helpers: taken as no bf16, not an error
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert resolve_amp("auto", cpu) == "none"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inference_agrees_with_the_cpu():
    from spatialsam.predictor import propagate_volume
    from spatialsam.propagator import build_propagator
    from spatialsam.unet3d import build_unet3d

    img, lab = make_demo_volume((16, 64, 64), seed=1)
    sdf = np.where(lab > 0, 0.5, -0.5).astype(np.float32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = {}
    for name in ("cpu", "cuda"):
        use_device(name)
        try:
            torch.manual_seed(0)
            unet = build_unet3d({"channels": [4, 8], "pool": [[2, 2, 2]]}).eval()
            s, _ = tu.predict(unet, img, 100.0, 40.0)
            prop = build_propagator("tiny").eval()
            p = propagate_volume(prop, img, sdf, [4, 11], lab, crop=32, batch=4)
            results[name] = (s, p)
        finally:
            use_device("cpu")
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], atol=1e-4)
    np.testing.assert_allclose(results["cuda"][1], results["cpu"][1], atol=1e-4)
