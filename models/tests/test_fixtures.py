"""The ONNX test fixtures: generator parity (PyTorch vs onnxruntime) and the committed files' integrity."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialsam.fixtures import tiny_models

COMMITTED = Path(__file__).resolve().parents[2] / "test" / "fixtures" / "models"


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> dict[str, Path]:
    return tiny_models.generate(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("name", list(tiny_models.SPECS))
def test_onnx_matches_pytorch_on_golden_and_other_shapes(regenerated, name):
    model = tiny_models.build_model(name)
    session = tiny_models.ort_session(regenerated[name] / "model.onnx")
    rng = np.random.default_rng(1)
    # The golden shape and an odd, anisotropic one (the spatial axes are dynamic).
    inputs = [tiny_models.golden_input(name), rng.standard_normal((1, 1, 5, 12, 9)).astype(np.float32)]
    for x in inputs:
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        (actual,) = session.run(["out"], {"image": x})
        assert actual.shape == expected.shape
        assert np.max(np.abs(actual - expected)) < 1e-4


@pytest.mark.parametrize("name", list(tiny_models.SPECS))
def test_committed_manifest_sha256_matches_committed_onnx(name):
    doc = json.loads((COMMITTED / name / "model.json").read_text())
    assert doc["name"] == name
    assert doc["sha256"] == tiny_models.sha256_file(COMMITTED / name / doc["onnx"])


@pytest.mark.parametrize("name", list(tiny_models.SPECS))
def test_generator_reproduces_committed_files(regenerated, name):
    # The export is deterministic for the pinned torch/onnx; a difference means the committed files
    # are stale: rerun tiny_models.COMMAND and commit the result.
    for file in ("model.onnx", "model.json"):
        assert (regenerated[name] / file).read_bytes() == (COMMITTED / name / file).read_bytes(), file


def test_committed_golden_output_is_what_onnxruntime_computes():
    tiny = COMMITTED / "tiny_conv3d"
    x = np.load(tiny / "golden_input.npy")
    golden = np.load(tiny / "golden_output.npy")
    assert x.dtype == np.float32 and x.shape == (1, 1, 16, 32, 32)
    assert golden.dtype == np.float32 and golden.shape == (1, 2, 16, 32, 32)
    (actual,) = tiny_models.ort_session(tiny / "model.onnx").run(["out"], {"image": x})
    # Tolerance, not bytes: kernels differ slightly between CPUs (AVX2 vs AVX-512).
    assert np.max(np.abs(actual - golden)) < 1e-5
