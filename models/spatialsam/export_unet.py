"""Export the 3D U-Net to ONNX with its model.json manifest (the format src/manifest.ts parses).

Graph: input ``image`` float32 [1, 1, Z, Y, X] (axes NCZYX), intensities normalised as
``(raw_uint8 / 255 - mean) / std`` with the manifest's ``normalization``; outputs ``sdf``
(float32 [1, 1, Z, Y, X], tanh, normalised SDF: nm = T * sdf, T = training.sdf.truncation_nm)
and ``fg_logit`` (float32 [1, 1, Z, Y, X]). Z, Y, X are dynamic but must each be a multiple of
the pooling factor (``UNetConfig.size_multiple()``, recorded as ``size_multiple_zyx``).
The server reads blocks with ``context_zyx`` voxels of halo per side (zero-filled outside the
volume, i.e. the mean intensity after normalisation) and keeps the centre.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .atomic_files import sha256_file
from .unet3d import UNet, UNetConfig, context_zyx, predict_volume, receptive_field, round_up

OPSET = 17
VERSION = "1.0.0"


def export_onnx(model: UNet, path: Path) -> None:
    """Write the ONNX graph atomically. Uses the TorchScript exporter with ``dynamic_axes``: it
    handles dynamic spatial sizes of a pure conv net directly, without torch.export's symbolic
    multiples-of-8 constraints."""
    if model.cfg.spatial_dims != 3:
        raise ValueError("model: export_unet exports 3D U-Nets only")
    model = model.eval()
    mult = model.cfg.size_multiple()
    example = torch.zeros((1, 1, *(2 * m for m in mult)))
    axes = {2: "z", 3: "y", 4: "x"}
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation; parity is tested in test_export_unet.py.
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=["sdf", "fg_logit"],
            opset_version=OPSET,
            dynamo=False,
            dynamic_axes={"image": axes, "sdf": axes, "fg_logit": axes},
        )
    os.replace(tmp, path)


# The write block of a default export (the server's chunk of the SDF); with the halo it is the input
# shape the server runs the graph on.
SERVER_BLOCK_ZYX = (16, 256, 256)


def server_blocks(cfg: UNetConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Default (context_zyx, patch_shape_zyx) of an export: the halo train_unet.predict evaluates
    with (FAST_HALO_ZYX) around a SERVER_BLOCK_ZYX block, both rounded up to the size multiple, so
    the server runs the graph on inputs as deep as the ones every score here was measured on. A
    U-Net trained on 32-slice crops scores worse on deeper inputs: the shipped Lucchi++ U-Net gives
    test fg-IoU 0.903 on 48x320x320 inputs and 0.892 on 96x256x256 (models/bench/unet_blocks.py)."""
    from .train_unet import fast_halo

    ctx = fast_halo(cfg)
    block = round_up(SERVER_BLOCK_ZYX, cfg.size_multiple())
    return ctx, tuple(b + 2 * c for b, c in zip(block, ctx))


def check_context(model: UNet, context: tuple[int, ...] | None) -> tuple[int, ...]:
    """The halo the server reads around each block: ``context_zyx(cfg)`` (half the receptive field:
    blockwise = whole-volume inference exactly) unless a smaller one is given, as multiples of the
    size multiple. A U-Net's effective field is far smaller than its theoretical one, and a 112-voxel
    halo around every 32-voxel block would make the server read 100 times what it writes."""
    if context is None:
        return context_zyx(model.cfg)
    mult = model.cfg.size_multiple()
    ctx = tuple(int(c) for c in context)
    if len(ctx) != 3 or any(c < 0 or c % m for c, m in zip(ctx, mult)):
        raise ValueError(f"context: {context} must be 3 non-negative multiples of {mult}")
    return ctx


def manifest(
    model: UNet,
    name: str,
    sha256: str,
    mean: float,
    std: float,
    voxel_size_nm: tuple[float, float, float],
    patch_shape_zyx: tuple[int, int, int],
    training: dict,
    context: tuple[int, ...] | None = None,
) -> dict:
    """The model.json document. Dynamic dimensions are -1; spatial sizes must be multiples of
    ``size_multiple_zyx``; ``context`` overrides the halo (see ``check_context``)."""
    spec = {"dtype": "float32", "shape": [1, 1, -1, -1, -1], "axes": "NCZYX"}
    return {
        "name": name,
        "version": VERSION,
        "kind": "sdf_unet3d",
        "onnx": "model.onnx",
        "sha256": sha256,
        "inputs": [{"name": "image", **spec}],
        "outputs": [{"name": "sdf", **spec}, {"name": "fg_logit", **spec}],
        "normalization": {"mean": mean, "std": std},
        "context_zyx": list(check_context(model, context)),
        "patch_shape_zyx": list(patch_shape_zyx),
        "size_multiple_zyx": list(model.cfg.size_multiple()),
        "voxel_size_nm": list(voxel_size_nm),
        "training": {
            "normalization_note": "image = (raw_uint8 / 255 - mean) / std; zero outside the volume",
            "unet": model.cfg.to_dict(),
            "receptive_field_zyx": list(receptive_field(model.cfg)),
            **training,
        },
    }


def export_unet(
    model: UNet,
    out_dir: Path | str,
    name: str,
    mean: float,
    std: float,
    voxel_size_nm: tuple[float, float, float],
    patch_shape_zyx: tuple[int, int, int],
    training: dict,
    context: tuple[int, ...] | None = None,
) -> dict:
    """Write ``out_dir/model.onnx`` and ``out_dir/model.json``; return the manifest."""
    check_context(model, context)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    export_onnx(model, onnx_path)
    doc = manifest(model, name, sha256_file(onnx_path), mean, std, voxel_size_nm, patch_shape_zyx, training, context)
    text = json.dumps(doc, indent=2)
    tmp = out / f"model.json.{os.getpid()}.tmp"
    tmp.write_text(text + "\n")
    os.replace(tmp, out / "model.json")
    return json.loads(text)


def onnx_parity(model: UNet, onnx_path: Path, image: np.ndarray) -> float:
    """Max |PyTorch - onnxruntime| over both outputs for one input float32 [1, 1, Z, Y, X]."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["sdf", "fg_logit"], {"image": image.astype(np.float32)})
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(image.astype(np.float32)))
    return float(max(np.abs(g - w.numpy()).max() for g, w in zip(got, want)))


def blockwise_deviation(model: UNet, image: np.ndarray, block_zyx: tuple[int, ...], context: tuple[int, ...]) -> dict:
    """How far blockwise inference with a halo of ``context`` lies from inference on the whole of
    ``image`` (float32 [Z, Y, X], normalised): max |SDF difference| and the share of voxels whose
    sign (the mask) differs. Recorded in the manifest when the halo is smaller than the theoretical one."""
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))
    mult = model.cfg.size_multiple()
    whole = round_up(x.shape, mult)
    a, _ = predict_volume(model, x, block_zyx, context)
    b, _ = predict_volume(model, x, whole, context)
    return {"block_zyx": list(block_zyx), "context_zyx": list(context), "shape_zyx": list(x.shape),
            "max_abs_sdf": float((a - b).abs().max()), "sign_changed_fraction": float(((a > 0) != (b > 0)).float().mean())}
