"""ONNX export of the 3D U-Net: PyTorch vs onnxruntime parity on dynamic shapes, and the manifest."""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from spatialsam.export_unet import export_unet, onnx_parity, server_blocks
from spatialsam.unet3d import UNetConfig, build_unet3d, context_zyx

# The keys src/manifest.ts accepts (it rejects unknown ones).
MANIFEST_KEYS = {"name", "version", "kind", "onnx", "sha256", "inputs", "outputs", "normalization",
                 "context_zyx", "patch_shape_zyx", "size_multiple_zyx", "voxel_size_nm", "training"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    cfg = UNetConfig(channels=(4, 8, 16), pool=((1, 2, 2), (2, 2, 2)))
    model = build_unet3d(cfg)
    with torch.no_grad():  # non-trivial batch-norm statistics, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    out = tmp_path_factory.mktemp("sdf_unet3d_test")
    doc = export_unet(model.eval(), out, "sdf_unet3d_test", 0.55, 0.12, (5.0, 5.0, 5.0), (16, 64, 64),
                      {"data": "none (test)", "budget": "none", "seed": 0, "command": "pytest", "time_s": 0, "metrics": {}})
    return model, out, doc


@pytest.mark.parametrize("shape", [(1, 1, 4, 8, 8), (1, 1, 6, 20, 12)])
def test_parity_on_dynamic_shapes(exported, shape):
    model, out, _ = exported
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    assert onnx_parity(model, out / "model.onnx", x) < 1e-4


def test_graph_names_opset_and_dynamic_axes(exported):
    _, out, _ = exported
    g = onnx.load(out / "model.onnx")
    assert max(o.version for o in g.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in g.graph.input] == ["image"]
    assert [o.name for o in g.graph.output] == ["sdf", "fg_logit"]
    dims = g.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[:2]] == [1, 1] and all(d.dim_param for d in dims[2:])
    assert g.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_manifest_fields(exported):
    model, out, doc = exported
    on_disk = json.loads((out / "model.json").read_text())
    assert on_disk == doc
    assert set(doc) == MANIFEST_KEYS
    assert doc["kind"] == "sdf_unet3d" and doc["onnx"] == "model.onnx"
    assert doc["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert doc["inputs"] == [{"name": "image", "dtype": "float32", "shape": [1, 1, -1, -1, -1], "axes": "NCZYX"}]
    assert [o["name"] for o in doc["outputs"]] == ["sdf", "fg_logit"]
    assert doc["context_zyx"] == list(context_zyx(model.cfg))
    assert doc["normalization"] == {"mean": 0.55, "std": 0.12}
    assert doc["size_multiple_zyx"] == [2, 4, 4]
    for key in ("data", "budget", "seed", "command", "time_s", "metrics"):
        assert key in doc["training"]


def test_rejects_2d_model(tmp_path):
    from spatialsam.unet2d import build_unet2d

    with pytest.raises(ValueError, match="model"):
        export_unet(build_unet2d(), tmp_path, "x", 0, 1, (5, 5, 5), (1, 64, 64), {})


@pytest.mark.parametrize("mode", ["average", "learned"])
@pytest.mark.parametrize("shape", [(1, 1, 8, 16, 16), (1, 1, 12, 24, 40)])
def test_stem_model_parity_on_dynamic_shapes(tmp_path, shape, mode):
    """A U-Net with a stem (average pooling or a learned strided conv in, trilinear upsampling out)
    exports to AveragePool or Conv and Resize, which onnxruntime evaluates like PyTorch on any
    multiple of the size."""
    torch.manual_seed(0)
    cfg = UNetConfig(channels=(4, 8), pool=((2, 2, 2),), norm="batch", stem=(2, 2, 2), stem_mode=mode)
    model = build_unet3d(cfg).eval()
    doc = export_unet(model, tmp_path, "stem", 0.5, 0.1, (5.0, 5.0, 5.0), (16, 64, 64), {})
    assert doc["size_multiple_zyx"] == [4, 4, 4]
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    assert onnx_parity(model, tmp_path / "model.onnx", x) < 1e-4


def test_smaller_context_is_checked_and_recorded(tmp_path):
    from spatialsam.export_unet import blockwise_deviation

    torch.manual_seed(0)
    model = build_unet3d(UNetConfig(channels=(4, 8), pool=((2, 2, 2),), norm="none", stem=(2, 2, 2))).eval()
    doc = export_unet(model, tmp_path, "halo", 0.5, 0.1, (5.0, 5.0, 5.0), (32, 64, 64), {}, context=(8, 8, 8))
    assert doc["context_zyx"] == [8, 8, 8] and doc["training"]["receptive_field_zyx"] == [40, 40, 40]
    with pytest.raises(ValueError, match="context"):
        export_unet(model, tmp_path, "halo", 0.5, 0.1, (5.0, 5.0, 5.0), (32, 64, 64), {}, context=(6, 8, 8))
    x = np.random.default_rng(0).normal(size=(16, 32, 48)).astype(np.float32)
    full = blockwise_deviation(model, x, (8, 16, 16), tuple(context_zyx(model.cfg)))
    assert full["max_abs_sdf"] < 1e-5  # the theoretical halo: blockwise equals one pass
    small = blockwise_deviation(model, x, (8, 16, 16), (4, 4, 4))
    assert small["max_abs_sdf"] > full["max_abs_sdf"]


def test_default_server_blocks_are_the_evaluation_blocks():
    # The shipped Lucchi++ U-Net (learned 2x2x2 stem, three 2x poolings: multiple 16): 16,32,32 halo
    # around 16x256x256 blocks, i.e. 48x320x320 inputs, as its manifest says.
    lucchi = UNetConfig(channels=(16, 32, 64, 128), pool=((2, 2, 2),) * 3, stem=(2, 2, 2), stem_mode="learned")
    assert server_blocks(lucchi) == ((16, 32, 32), (48, 320, 320))
    shipped = json.loads((Path(__file__).parents[1] / "sdf_unet3d_lucchi" / "model.json").read_text())
    assert [shipped["context_zyx"], shipped["patch_shape_zyx"]] == [[16, 32, 32], [48, 320, 320]]
    # Anisotropic pooling: multiples (4, 8, 8) keep the same shapes; a coarser multiple rounds both up.
    assert server_blocks(UNetConfig(channels=(4, 8, 16, 32), pool=((1, 2, 2), (2, 2, 2), (2, 2, 2)))) == ((16, 32, 32), (48, 320, 320))
    deep = UNetConfig(channels=(4, 8, 16, 32, 64, 128), pool=((2, 2, 2),) * 5)
    assert server_blocks(deep) == ((32, 32, 32), (96, 320, 320))
