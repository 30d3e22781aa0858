"""Export the propagator as three ONNX graphs a TypeScript loop drives slice by slice, each with a
model.json manifest, plus propagator.json (graph names and loop constants), and check parity.

Graphs (batch 1, H and W dynamic multiples of 16, N memory entries and P pointers dynamic):
  image_encoder:  image [1,1,H,W] -> feat [1,D,H/16,W/16], skip8 [1,C8,H/8,W/8], skip4 [1,C4,H/4,W/4]
  memory_encoder: feat, sdf_slice [1,1,H,W], mask [1,1,H,W] -> memory [1,Dm,H/16,W/16]
  memory_decoder: feat, skip8, skip4, (sdf_slice), mem_tokens [N,Dm,h,w], mem_dz/mem_cond/mem_valid [N],
                  obj_ptrs [P,D], ptr_dz/ptr_valid [P], point_coords [1,K,2], point_labels [1,K],
                  mask_input [1,1,H/4,W/4], has_mask_input [1]
                  -> mask_logits [1,1,H,W], low_res_logits [1,1,H/4,W/4], iou [1,1], object_score [1,1],
                     obj_ptr [1,D]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spatialsam.atomic_files import replace_with, sha256_file, write_bytes
from spatialsam.image_encoder import ImageFeatures
from spatialsam.memory import MemoryBankTensors
from spatialsam.propagator import NO_OBJ_LOGIT, Propagator

OPSET = 17
MANIFEST_VERSION = "1"


class GraphModule(nn.Module):
    """One exported graph: positional tensors named as in graph_specs(model)[kind]["inputs"]."""

    def __init__(self, kind: str, model: Propagator) -> None:
        super().__init__()
        self.kind = kind
        self.m = model
        self.names = [n for n, _, _ in graph_specs(model)[kind]["inputs"]]

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a = dict(zip(self.names, args, strict=True))
        if self.kind == "image_encoder":
            f = self.m.encode_image(a["image"])
            return f.feat, f.skip8, f.skip4
        if self.kind == "memory_encoder":
            return (self.m.encode_memory(a["feat"], a.get("sdf_slice"), a["mask"]),)
        bank = MemoryBankTensors(*(a[n].unsqueeze(0) for n in (
            "mem_tokens", "mem_dz", "mem_cond", "mem_valid", "obj_ptrs", "ptr_dz", "ptr_valid")))
        out = self.m.decode(ImageFeatures(a["feat"], a["skip8"], a["skip4"]), a.get("sdf_slice"), bank,
                            a["point_coords"], a["point_labels"], a["mask_input"], a["has_mask_input"])
        return self.m.mask_logits(out), out.low_res_logits, out.iou, out.object_score, out.obj_ptr


# (name, shape with symbolic axes, axes labels) per graph input/output; "H"/"W" are the image size.
def graph_specs(model: Propagator) -> dict[str, dict[str, list[tuple[str, list[Any], str]]]]:
    d, dm = model.cfg.dim, model.cfg.mem_dim
    c8, c4 = model.image_encoder.skip_dims
    feat = ("feat", [1, d, "h16", "w16"], "BCYX")
    skip8 = ("skip8", [1, c8, "h8", "w8"], "BCYX")
    skip4 = ("skip4", [1, c4, "h4", "w4"], "BCYX")
    sdf = ("sdf_slice", [1, 1, "H", "W"], "BCYX")
    dec_in = [feat, skip8, skip4]
    if model.cfg.memory == "sdf":
        dec_in.append(sdf)
    dec_in += [
        ("mem_tokens", ["N", dm, "h16", "w16"], "NCYX"), ("mem_dz", ["N"], "N"), ("mem_cond", ["N"], "N"),
        ("mem_valid", ["N"], "N"), ("obj_ptrs", ["P", d], "PC"), ("ptr_dz", ["P"], "P"),
        ("ptr_valid", ["P"], "P"), ("point_coords", [1, "K", 2], "BKC"), ("point_labels", [1, "K"], "BK"),
        ("mask_input", [1, 1, "h4", "w4"], "BCYX"), ("has_mask_input", [1], "B"),
    ]
    return {
        "image_encoder": {"inputs": [("image", [1, 1, "H", "W"], "BCYX")], "outputs": [feat, skip8, skip4]},
        "memory_encoder": {
            "inputs": [feat, *([sdf] if model.cfg.memory == "sdf" else []), ("mask", [1, 1, "H", "W"], "BCYX")],
            "outputs": [("memory", [1, dm, "h16", "w16"], "BCYX")],
        },
        "memory_decoder": {
            "inputs": dec_in,
            "outputs": [
                ("mask_logits", [1, 1, "H", "W"], "BCYX"), ("low_res_logits", [1, 1, "h4", "w4"], "BCYX"),
                ("iou", [1, 1], "BC"), ("object_score", [1, 1], "BC"), ("obj_ptr", [1, d], "BC"),
            ],
        },
    }


def example_inputs(model: Propagator, hw: tuple[int, int], n_mem: int = 2, n_ptr: int = 3, n_pts: int = 2,
                   seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Random but well-formed inputs per graph (the decoder's come from the real encoders)."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    d, dm = model.cfg.dim, model.cfg.mem_dim
    image = torch.randn(1, 1, h, w, generator=g)
    sdf = torch.rand(1, 1, h, w, generator=g) * 2 - 1
    mask = (torch.rand(1, 1, h, w, generator=g) > 0.5).float()
    with torch.no_grad():
        f = model.encode_image(image)
    dec = {"feat": f.feat, "skip8": f.skip8, "skip4": f.skip4}
    if model.cfg.memory == "sdf":
        dec["sdf_slice"] = sdf
    dec.update({
        "mem_tokens": torch.randn(n_mem, dm, h // 16, w // 16, generator=g),
        "mem_dz": torch.tensor([-1.0, 3.0] + [-2.0] * (n_mem - 2))[:n_mem],
        "mem_cond": torch.tensor([0.0, 1.0] + [0.0] * (n_mem - 2))[:n_mem],
        "mem_valid": torch.ones(n_mem),
        "obj_ptrs": torch.randn(n_ptr, d, generator=g),
        "ptr_dz": torch.arange(n_ptr, dtype=torch.float32) - 1.0,
        "ptr_valid": torch.tensor([1.0] * (n_ptr - 1) + [0.0]),
        "point_coords": torch.rand(1, n_pts, 2, generator=g) * torch.tensor([w, h]),
        "point_labels": torch.tensor([[1.0, 0.0, 2.0, 3.0] + [-1.0] * max(0, n_pts - 4)])[:, :n_pts],
        "mask_input": torch.randn(1, 1, h // 4, w // 4, generator=g),
        "has_mask_input": torch.ones(1),
    })
    enc = {"feat": f.feat, "sdf_slice": sdf, "mask": mask}
    if model.cfg.memory == "mask":
        del enc["sdf_slice"]
    return {"image_encoder": {"image": image}, "memory_encoder": enc, "memory_decoder": dec}


def torch_outputs(kind: str, model: Propagator, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The PyTorch reference outputs of graph `kind` for named inputs (in spec order)."""
    with torch.no_grad():
        return list(GraphModule(kind, model.eval())(*inputs.values()))


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (sorted keys off: field order is the documentation order)."""
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _export_graph(kind: str, model: Propagator, inputs: dict[str, torch.Tensor], path: Path) -> None:
    spec = graph_specs(model)[kind]
    dyn: dict[str, dict[int, str]] = {}
    for name, shape, _ in spec["inputs"] + spec["outputs"]:
        axes = {i: s for i, s in enumerate(shape) if isinstance(s, str)}
        if axes:
            dyn[name] = axes
    mod = GraphModule(kind, model).eval()
    args = tuple(inputs.values())
    replace_with(path, lambda tmp: torch.onnx.export(
        mod, args, str(tmp), dynamo=False, opset_version=OPSET,
        input_names=[n for n, _, _ in spec["inputs"]], output_names=[n for n, _, _ in spec["outputs"]],
        dynamic_axes=dyn, do_constant_folding=True,
    ))


def _io_entries(items: list[tuple[str, list[Any], str]]) -> list[dict[str, Any]]:
    return [{"name": n, "dtype": "float32", "shape": [s if isinstance(s, int) else -1 for s in shape],
             "axes": axes} for n, shape, axes in items]


def export_propagator(
    model: Propagator,
    out_dir: str | Path,
    *,
    version: str = "0.1.0",
    example_hw: tuple[int, int] = (64, 64),
    voxel_size_nm: list[float] | None = None,
    training: dict[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Write out_dir/{image_encoder,memory_encoder,memory_decoder}/{model.onnx,model.json} and
    out_dir/propagator.json; returns the propagator.json content. ``name``: the propagator's name
    (servers with several pick by it, so it must differ between them); default propagator_<config>."""
    out = Path(out_dir)
    model = model.eval()
    cfg = model.cfg
    inputs = example_inputs(model, example_hw)
    specs = graph_specs(model)
    manifests: dict[str, Any] = {}
    for kind in ("image_encoder", "memory_encoder", "memory_decoder"):
        gdir = out / kind
        gdir.mkdir(parents=True, exist_ok=True)
        onnx_path = gdir / "model.onnx"
        _export_graph(kind, model, inputs[kind], onnx_path)
        manifest = {
            "name": f"propagator_{cfg.name}_{kind}",
            "version": version,
            "kind": kind,
            "onnx": "model.onnx",
            "sha256": sha256_file(onnx_path),
            "inputs": _io_entries(specs[kind]["inputs"]),
            "outputs": _io_entries(specs[kind]["outputs"]),
            # Only the image encoder reads raw intensities; the other graphs take features, SDF and masks.
            "normalization": {"mean": cfg.norm_mean, "std": cfg.norm_std} if kind == "image_encoder" else None,
            "context_zyx": [0, 0, 0],
            "voxel_size_nm": voxel_size_nm or [5.0, 5.0, 5.0],
            "training": training or {},
        }
        write_json(gdir / "model.json", manifest)
        manifests[kind] = manifest
    top = {
        "name": name or f"propagator_{cfg.name}",
        "version": version,
        "manifest_version": MANIFEST_VERSION,
        "opset": OPSET,
        "memory": cfg.memory,
        "graphs": {k: f"{k}/model.json" for k in manifests},
        "dim": cfg.dim,
        "mem_dim": cfg.mem_dim,
        "loop": {
            "num_recent": cfg.num_recent,
            "max_cond": cfg.max_cond,
            "max_ptrs": cfg.max_ptrs,
            "mask_threshold": cfg.mask_threshold,
            "no_object_logit": NO_OBJ_LOGIT,
            "memory_mask": "binary: mask_logits > mask_threshold, as float32 0/1",
            "mask_prompt_to_input": "avg_pool 4x4 of the 0/1 mask, then logits = 20 * avg - 10",
            "mask_only_prompt_output": "the given mask (logits +10/-10); decoder still supplies obj_ptr",
            "empty_bank": "one padding entry/pointer (zeros, valid 0); the graphs never see N = 0 or P = 0",
            "point_order": "box corners (labels 2, 3) first, then clicks in order (1 pos, 0 neg), then one "
                           "padding point (0, 0) with label -1 when there is no box; propagated slices: only "
                           "the padding point",
            "add_prompts_memory": "the object's other prompted slices only (no recent entries), direction +1",
            "propagate_order": "start_z default: lowest prompted slice (forward, both) or highest (backward); "
                               "both = forward run then backward run from start_z; prompted slices keep "
                               "their prompted output",
            "bank_rule": "memory.select_memory: cond entries closest in |dz| (max_cond), then z - dir*i, "
                         "i = 1..num_recent; pointers: cond, then z - dir*i, i = 1..max_ptrs-1",
        },
        "image": {"stride": model.stride, "multiple_of": model.stride, "min_hw": [2 * model.stride] * 2,
                  "pad": "bottom/right to a multiple of multiple_of: image 0 after normalisation, sdf -1, "
                         "mask 0; crop outputs back",
                  # Memory attention is quadratic in tokens (H/16 * W/16 * bank size): run sessions on a
                  # box around the objects (measured, compact, 2 threads, busy CPU: 256^2 decoder 22 ms,
                  # 768x1024 11.5 s).
                  "recommended_max_hw": [256, 256]},
        "sdf": "sdf.py's normalised SDF: clip(d_nm / T, -1, 1), positive inside (the 3D U-Net's tanh head)",
        "normalization": {"mean": cfg.norm_mean, "std": cfg.norm_std},
        "voxel_size_nm": voxel_size_nm or [5.0, 5.0, 5.0],
        "training": training or {},
    }
    write_json(out / "propagator.json", top)
    return top


def check_parity(model: Propagator, out_dir: str | Path, hw: tuple[int, int] = (80, 48), seed: int = 1,
                 n_mem: int = 3, n_ptr: int = 5, n_pts: int = 3) -> dict[str, float]:
    """Max |PyTorch - onnxruntime| over every output of every graph, on inputs of another size than
    the export example (so dynamic axes are exercised)."""
    import onnxruntime as ort

    inputs = example_inputs(model.eval(), hw, n_mem=n_mem, n_ptr=n_ptr, n_pts=n_pts, seed=seed)
    diffs: dict[str, float] = {}
    for kind, ins in inputs.items():
        sess = ort.InferenceSession(str(Path(out_dir) / kind / "model.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(None, {k: v.numpy() for k, v in ins.items()})
        want = torch_outputs(kind, model, ins)
        for spec, g, w in zip(graph_specs(model)[kind]["outputs"], got, want, strict=True):
            diffs[f"{kind}.{spec[0]}"] = float(np.max(np.abs(g - w.numpy())))
    return diffs


def main(argv: list[str] | None = None) -> None:
    from spatialsam.train_propagator import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="checkpoint .pt written by train_propagator")
    ap.add_argument("--out", required=True, help="output folder (three graphs + propagator.json)")
    ap.add_argument("--version", default="0.1.0")
    args = ap.parse_args(argv)
    model, meta = load_checkpoint(args.checkpoint)
    export_propagator(model, args.out, version=args.version, training=meta)
    print(json.dumps(check_parity(model, args.out), indent=2))


if __name__ == "__main__":
    main()
