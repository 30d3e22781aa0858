"""PyTorch side of the SDF throughput benchmark (test/bench/sdf_throughput.bench.ts drives it).

``export``: builds a 3D U-Net from a config with seeded random weights (throughput does not depend
on them), saves the weights, exports the same network to ONNX with its model.json (a models dir
the server's ModelRegistry loads), writes one block's input tensor and counts the network's FLOPs
per block. ``bench``: the same weights in PyTorch eager on the same inputs and the same number of
threads, one block repeated and blockwise over the same volume; prints JSON.

    models/.venv/bin/python models/bench/sdf_torch_throughput.py export --out DIR --patch 128 160 160
    models/.venv/bin/python models/bench/sdf_torch_throughput.py bench --dir DIR --threads 1 \
        --volume DIR/volume.u8 --shape 32 128 128 --reps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spatialsam.config import load_train_config
from spatialsam.export_unet import export_unet
from spatialsam.unet3d import UNet, UNetConfig, build_unet3d, context_zyx, predict_volume

# Normalisation written to the manifest (Lucchi++ train statistics, see models/README.md).
MEAN, STD = 0.55, 0.12


def count_flops(model: UNet, shape_zyx: tuple[int, ...]) -> dict:
    """FLOPs of one forward pass on [1, 1, *shape_zyx], counted per layer with forward hooks:
    a convolution is 2 * Cin * Cout * prod(k) multiply-adds per output voxel (per input voxel for a
    transposed convolution); batch norm (folded into the convolutions by onnxruntime), ReLU,
    pooling and tanh are elementwise and left out (well under 1% here)."""
    total = {"conv": 0, "conv_transpose": 0}

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        k = int(np.prod(m.kernel_size))
        if isinstance(m, nn.ConvTranspose3d):
            total["conv_transpose"] += 2 * m.in_channels * m.out_channels * k * inputs[0][0, 0].numel() // m.groups
        else:
            total["conv"] += 2 * m.in_channels * m.out_channels * k * output[0, 0].numel() // m.groups

    # The meta device runs the shapes without the arithmetic.
    meta = build_unet3d(model.cfg).to("meta").eval()
    for m in meta.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            m.register_forward_hook(hook)
    with torch.inference_mode():
        meta(torch.empty((1, 1, *shape_zyx), device="meta"))
    return {**total, "total": total["conv"] + total["conv_transpose"]}


def load_model(out: Path) -> UNet:
    meta = json.loads((out / "bench.json").read_text())
    model = build_unet3d(UNetConfig(**meta["unet"]))
    model.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    return model.eval()


def cmd_export(a: argparse.Namespace) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.unet_json:
        unet = json.loads(a.unet_json)
        config_name = "custom"
    else:
        unet = load_train_config(a.config).unet
        config_name = a.config
    torch.manual_seed(a.seed)
    model = build_unet3d(unet).eval()
    ctx = context_zyx(model.cfg)
    patch = tuple(a.patch)
    mult = model.cfg.size_multiple()
    if any(p % m or p <= 2 * c for p, m, c in zip(patch, mult, ctx)):
        raise SystemExit(f"--patch {patch}: each size must be a multiple of {mult} and exceed 2 * context {ctx}")
    torch.save(model.state_dict(), out / "weights.pt")
    training = {"note": f"random weights (seed {a.seed}) for benchmarks", "seed": a.seed, "unet": model.cfg.to_dict()}
    export_unet(model, out / "models" / a.name, a.name, MEAN, STD, (5.0, 5.0, 5.0), patch, training)
    rng = np.random.default_rng(a.seed)
    block = rng.standard_normal((1, 1, *patch)).astype(np.float32)
    block.tofile(out / "block_input.f32")
    flops = count_flops(model, patch)
    meta = {
        "name": a.name,
        "config": config_name,
        "unet": model.cfg.to_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "context_zyx": list(ctx),
        "patch_shape_zyx": list(patch),
        "write_shape_zyx": [p - 2 * c for p, c in zip(patch, ctx)],
        "flops_per_block": flops,
    }
    (out / "bench.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta))


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process, all threads) of one call. CPU time is the
    load-robust figure on a shared machine where wall time includes waiting for a core."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def cmd_bench(a: argparse.Namespace) -> None:
    out = Path(a.dir)
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    model = load_model(out)
    meta = json.loads((out / "bench.json").read_text())
    patch = tuple(meta["patch_shape_zyx"])
    block_input = torch.from_numpy(np.fromfile(out / "block_input.f32", dtype=np.float32).reshape(1, 1, *patch))
    raw = np.fromfile(a.volume, dtype=np.uint8).reshape(a.shape)
    image = torch.from_numpy((raw.astype(np.float32) / 255 - MEAN) / STD)
    write = tuple(meta["write_shape_zyx"])
    with torch.inference_mode():
        model(block_input)  # warm-up: first-call allocations and oneDNN primitive creation
        block = [timed(lambda: model(block_input)) for _ in range(a.reps)]
        volume = [timed(lambda: predict_volume(model, image, block_zyx=write, halo_zyx=meta["context_zyx"])) for _ in range(a.volume_reps)]
    print(
        json.dumps(
            {
                "threads": a.threads,
                "torch": torch.__version__,
                "mkldnn": torch.backends.mkldnn.is_available(),
                "block_s": [w for w, _ in block],
                "block_median_s": statistics.median(w for w, _ in block),
                "block_median_cpu_s": statistics.median(c for _, c in block),
                "volume_s": [w for w, _ in volume],
                "volume_median_s": statistics.median(w for w, _ in volume),
                "volume_median_cpu_s": statistics.median(c for _, c in volume),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)
    e = sub.add_parser("export", help="seeded random U-Net -> weights.pt, models/<name>/model.{onnx,json}, block_input.f32, bench.json")
    e.add_argument("--out", required=True)
    e.add_argument("--config", default="unet3d_lucchi", help="a config in spatialsam/configs (its `unet` section)")
    e.add_argument("--unet-json", help="a UNetConfig as JSON instead of --config (tiny nets for the scaling benchmark)")
    e.add_argument("--name", default="sdf_bench")
    e.add_argument("--patch", type=int, nargs=3, required=True, metavar=("Z", "Y", "X"), help="patch_shape_zyx (read box of one block)")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_export)
    b = sub.add_parser("bench", help="time PyTorch eager on the exported weights; prints JSON")
    b.add_argument("--dir", required=True)
    b.add_argument("--threads", type=int, required=True)
    b.add_argument("--volume", required=True, help="raw uint8 C-order volume file")
    b.add_argument("--shape", type=int, nargs=3, required=True, metavar=("Z", "Y", "X"))
    b.add_argument("--reps", type=int, default=5)
    b.add_argument("--volume-reps", type=int, default=3)
    b.set_defaults(func=cmd_bench)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
