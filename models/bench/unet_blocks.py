"""How an exported 3D U-Net scores when run block by block the way the server runs it, for several
block shapes and halos, side by side on one Lucchi++ split (or, with --demo-data, one volume of the
demo generator, for the demo U-Net).

The server (server/engine/sdf_engine.ts) tiles a volume into write blocks of the model's
``patch_shape_zyx - 2 * context_zyx`` (``server_block_shape``) and runs the ONNX graph on each block
grown by ``context_zyx`` on every side (zero input outside the volume), keeping the centre. A U-Net
trained on 32-slice crops sees a crop face in z in every training sample and can come to rely on
it, so how deep those inputs are matters, not only how wide the halo is (models/README.md, "Shipped
model"). This scores the ONNX graph itself (onnxruntime, as the server) for each
``BLOCK/CONTEXT`` pair given, plus the pair the model's manifest makes the server use, and prints
one table: fg-IoU, Dice, AP@0.5, AP@0.75, flicker (components under --min-size dropped, as the
benchmark scores), the input shape, how many voxels are read per voxel written, and the seconds.

    models/.venv/bin/python models/bench/unet_blocks.py --data-root ../shared/data \\
        --configs 32x160x160/32x48x48,16x256x256/16x48x48
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from spatialsam.atomic_files import write_text
from spatialsam.device import machine
from spatialsam.unet3d import block_boxes

REPO = Path(__file__).resolve().parents[2]
SERVER_DEFAULT_BLOCK_ZYX = (32, 64, 64)  # SdfEngineOptions.defaultBlockShapeZyx's default in sdf_engine.ts


def server_block_shape(manifest: dict, default: tuple[int, int, int] = SERVER_DEFAULT_BLOCK_ZYX) -> tuple[int, ...]:
    """The write block SdfEngine.blockShape picks for a manifest (the same rule, per axis): the
    patch minus twice the context, rounded down to the size multiple; the default block where the
    manifest has no patch or its patch leaves less than one multiple."""
    mult = manifest.get("size_multiple_zyx") or [1, 1, 1]
    patch, ctx = manifest.get("patch_shape_zyx"), manifest["context_zyx"]
    out = []
    for d in range(3):
        want = (patch[d] - 2 * ctx[d]) // mult[d] * mult[d] if patch else 0
        out.append(want if want >= mult[d] else max(mult[d], default[d] // mult[d] * mult[d]))
    return tuple(out)


def parse_configs(text: str) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """"32x160x160/32x48x48,16x256x256/16x48x48" -> [((32, 160, 160), (32, 48, 48)), ...]."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            block, ctx = (tuple(int(v) for v in part.split("x")) for part in item.split("/"))
        except ValueError:
            raise ValueError(f"configs: {item!r} is not BLOCK/CONTEXT such as 16x256x256/16x48x48") from None
        if len(block) != 3 or len(ctx) != 3 or min(block) < 1 or min(ctx) < 0:
            raise ValueError(f"configs: {item!r} needs 3 positive block sizes and 3 non-negative halos")
        out.append((block, ctx))
    return out


def run_blocks(run, image: np.ndarray, block: tuple[int, ...], ctx: tuple[int, ...]) -> np.ndarray:
    """``run(input [Z, Y, X] float32) -> output [Z, Y, X]`` on every block of a grid anchored at
    the origin, each read as block + 2 * ctx (one input shape throughout; zeros outside the volume),
    the centre written: the server's BlockGrid and SdfEngine.computeBlock (``unet3d.block_boxes``,
    without predict_volume's shrinking of the block to the volume: the server does not)."""
    read = tuple(b + 2 * c for b, c in zip(block, ctx))
    out = np.zeros(image.shape, np.float32)
    for src, dst, w, c in block_boxes(image.shape, block, ctx):
        inp = np.zeros(read, np.float32)
        inp[dst] = image[src]
        out[w] = run(inp)[c]
    return out


def onnx_runner(model_dir: Path, threads: int):
    """(manifest, run) for an exported U-Net folder: run maps a normalised [Z, Y, X] input to the
    manifest's SDF output (the output named "sdf", else the first), channel 0, as the server reads it."""
    import onnxruntime as ort

    man = json.loads((model_dir / "model.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_dir / man["onnx"]), opts, providers=["CPUExecutionProvider"])
    names = [o["name"] for o in man["outputs"]]
    name = "sdf" if "sdf" in names else names[0]
    inp = man["inputs"][0]["name"]

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run([name], {inp: x[None, None]})[0][0, 0]

    return man, run


def normalised_input(manifest: dict, image: np.ndarray) -> np.ndarray:
    """uint8 ``image`` as the exported U-Net reads it: scaled to [0, 1], then the manifest's normalisation."""
    norm = manifest.get("normalization") or {"mean": 0.0, "std": 1.0}
    return ((image.astype(np.float32) / 255.0 - norm["mean"]) / norm["std"]).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=REPO / "models" / "sdf_unet3d_lucchi", help="exported U-Net folder (model.json + ONNX)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--demo-data", type=Path, default=None,
                   help="instead of Lucchi++: a folder written by server/bin/write_demo_training.ts (for the demo U-Net)")
    p.add_argument("--demo-seed", type=int, default=None, help="with --demo-data: the seed to score (default: the first listed)")
    p.add_argument("--box", default=None, help="z0:z1,y0:y1,x0:x1: only this sub-volume (default: the whole split)")
    p.add_argument("--configs", default="", help="BLOCK/CONTEXT pairs, comma separated, e.g. 32x160x160/32x48x48,16x256x256/16x48x48 "
                   "(the manifest's own pair, as the server derives it, is always scored first)")
    p.add_argument("--min-size", type=int, default=1000, help="components under this many voxels dropped for AP and flicker (both sides)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    a = p.parse_args(argv)
    try:
        configs = parse_configs(a.configs)
    except ValueError as e:
        raise SystemExit(f"--{e}") from None
    if not (a.model / "model.json").is_file():
        raise SystemExit(f"--model: no model.json in {a.model}")

    from spatialsam.cli import parse_box
    from spatialsam.data import load_lucchi
    from spatialsam.metrics import evaluate

    try:
        box = parse_box(a.box)
    except ValueError as e:
        raise SystemExit(f"--{e}") from None
    man, run = onnx_runner(a.model, a.threads)
    mult = man.get("size_multiple_zyx") or [1, 1, 1]
    own = (server_block_shape(man), tuple(man["context_zyx"]))
    for blk, ctx in configs:
        bad = [f"{n} {v}" for n, v in (("block", blk), ("context", ctx)) if any(x % m for x, m in zip(v, mult))]
        if bad:
            raise SystemExit(f"--configs: {', '.join(bad)} not a multiple of the model's size multiple {mult}")
    if a.demo_data is not None:
        from spatialsam.data import load_demo_volumes

        try:
            demo = load_demo_volumes(a.demo_data, None if a.demo_seed is None else [a.demo_seed])[0]
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"--demo-data: {e}") from None
        image, truth, where = demo.image[box], demo.labels[box] > 0, demo.name
    else:
        vol = load_lucchi(a.split, a.data_root)
        image, truth, where = vol.image[box], vol.mask[box] > 0, f"Lucchi++ {a.split}"
    x = normalised_input(man, image)

    print(f"# {a.model.name} on {where}{'' if a.box is None else f' box {a.box}'} {image.shape}; "
          f"onnxruntime, {a.threads} threads; {machine()}, "
          f"Python {platform.python_version()}")
    print("| write block (z, y, x) | context | input read | read / written | fg-IoU | Dice | AP@0.5 | AP@0.75 | flicker (objects / matched) | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for i, (blk, ctx) in enumerate([own] + [c for c in configs if c != own]):
        t = time.time()
        sdf = run_blocks(run, x, blk, ctx)
        secs = time.time() - t
        e = evaluate(sdf > 0, truth, a.min_size)
        read = [b + 2 * c for b, c in zip(blk, ctx)]
        ratio = float(np.prod(read) / np.prod(blk))
        row = {"block": list(blk), "context": list(ctx), "input": read, "read_per_written": round(ratio, 2),
               "manifest": i == 0, "seconds": round(secs, 1),
               **{k: e[k] for k in ("fg_iou", "dice", "ap50", "ap75", "flicker_slices", "flicker_objects", "matched")}}
        rows.append(row)
        tag = " (the manifest's)" if i == 0 else ""
        print(f"| {'x'.join(map(str, blk))}{tag} | {'x'.join(map(str, ctx))} | {'x'.join(map(str, read))} | {ratio:.1f} | "
              f"{e['fg_iou']:.3f} | {e['dice']:.3f} | {e['ap50']:.3f} | {e['ap75']:.3f} | "
              f"{e['flicker_slices']} ({e['flicker_objects']} / {e['matched']}) | {secs:.0f} |", flush=True)
    if a.json is not None:
        write_text(a.json, json.dumps({"model": str(a.model), "data": where, "box": a.box, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
