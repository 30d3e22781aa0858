"""Propagator checkpoints on Lucchi++ test the way the product runs them: memory and seeds from an
exported 3D U-Net (the shipped models/sdf_unet3d_lucchi by default), not from the true SDF.

``train_propagator --finalize`` (what every propagator manifest records) scores interactive tracking with
the true SDF, a degraded one and none; the server has only its U-Net's SDF. This script gives, side by
side for every ``--ckpt NAME=PATH`` (a checkpoint as ``train_propagator`` writes it):

1. the U-Net alone (``sdf > 0``; run through onnxruntime block by block as the server runs it,
   bench/unet_blocks.py), once, as the reference;
2. interactive tracking with the U-Net's SDF as memory, on the protocol of ``--finalize`` (test slices
   0-63, 20 true 3D components drawn with ``--seed``, one click + box on the largest cross-section,
   propagate both ways in a 128 px window; mean 3D IoU and mean per-slice IoU);
3. automatic mode on the whole test volume (``predictor.segment_volume``: seeds and memory from the
   U-Net's SDF): the propagated masks alone, and filled as the server writes it (the SDF's unclaimed
   foreground given to the object seeded in its component): fg-IoU, Dice, AP@0.5, AP@0.75, flicker,
   components under ``--min-size`` voxels dropped on both sides as the budget benchmark does; AP also
   on the output's own instance ids (``metrics.instance_ap_ids``: what automatic mode delivers, where
   the mask's components merge touching objects).

    cd models && SPATIALSAM_DATA=../../shared/data .venv/bin/python bench/propagators_on_test.py \\
        --ckpt scratch=RUN1/propagator_last.pt --ckpt cdeep3m=RUN2/propagator_last.pt --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spatialsam.atomic_files import replace_with, write_text
from spatialsam.data import load_lucchi
from spatialsam.device import machine
from spatialsam.metrics import evaluate, evaluate_instances

HERE = Path(__file__).resolve().parent
TRACK_SLICES = 64  # train_propagator.finalize's protocol: test slices 0-63


def parse_ckpts(items: list[str]) -> list[tuple[str, Path]]:
    """``NAME=PATH`` pairs, each path an existing file, names unique."""
    out: list[tuple[str, Path]] = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--ckpt: expected NAME=PATH, got {item!r}")
        if not Path(path).is_file():
            raise ValueError(f"--ckpt {name}: {path} is not a file")
        if name in (n for n, _ in out):
            raise ValueError(f"--ckpt: name {name!r} given twice")
        out.append((name, Path(path)))
    if not out:
        raise ValueError("--ckpt: give at least one NAME=PATH")
    return out


def unet_sdf(unet_dir: Path, image: np.ndarray, threads: int, cache: Path | None) -> tuple[np.ndarray, str]:
    """(the exported U-Net's SDF of ``image`` as the server computes it, where it came from): read
    from ``cache`` (.npy) where that holds one of the right shape, else computed (and written there
    atomically)."""
    if cache is not None and cache.is_file():
        sdf = np.load(cache)
        if sdf.shape == image.shape and sdf.dtype == np.float32:
            return sdf, f"read from {cache}"
        raise ValueError(f"--sdf-cache: {cache} holds {sdf.dtype} {sdf.shape}, expected float32 {image.shape}")
    t0 = time.time()
    sys.path.insert(0, str(HERE))
    from unet_blocks import normalised_input, onnx_runner, run_blocks, server_block_shape  # this folder's script

    man, fn = onnx_runner(unet_dir, threads)
    sdf = run_blocks(fn, normalised_input(man, image), server_block_shape(man), tuple(man["context_zyx"]))
    source = f"computed in {time.time() - t0:.1f} s"
    if cache is not None:
        replace_with(cache, lambda tmp: np.save(tmp, sdf), suffix=".tmp.npy")
    return sdf, source


def _row(scores: dict) -> str:
    ids = f"{scores['ap50_ids']:.3f} / {scores['ap75_ids']:.3f}" if "ap50_ids" in scores else "-"
    return (f"{scores['fg_iou']:.3f} | {scores['dice']:.3f} | {scores['ap50']:.3f} | {scores['ap75']:.3f} | {ids} | "
            f"{scores['flicker_slices']} ({scores['flicker_objects']} / {scores['matched']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", default=[], help="NAME=PATH of a propagator checkpoint (repeatable)")
    p.add_argument("--unet", default=str(HERE.parent / "sdf_unet3d_lucchi"),
                   help="exported U-Net folder (model.json) whose SDF is the memory (default: the shipped one)")
    p.add_argument("--data", default=None, help="data root (default: SPATIALSAM_DATA or ../shared/data)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="which 20 objects the tracking protocol draws")
    p.add_argument("--min-size", type=int, default=1000)
    p.add_argument("--sdf-cache", default=None, help=".npy file for the U-Net's SDF (read if there, else written)")
    p.add_argument("--out", default=None, help="write every score as JSON here")
    a = p.parse_args(argv)
    try:
        ckpts = parse_ckpts(a.ckpt)
        if not (Path(a.unet) / "model.json").is_file():
            raise ValueError(f"--unet: {a.unet} holds no model.json")
        if a.threads < 1:
            raise ValueError(f"--threads: expected >= 1, got {a.threads}")
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(a.threads)
    from spatialsam.predictor import evaluate_tracking, fill_from_sdf, segment_volume
    from spatialsam.train_propagator import load_checkpoint

    v = load_lucchi("test", a.data)
    sdf, source = unet_sdf(Path(a.unet), v.image, a.threads, Path(a.sdf_cache) if a.sdf_cache else None)
    res: dict = {"machine": machine(), "unet": str(a.unet), "unet_sdf": source,
                 "unet_alone": evaluate(sdf > 0, v.mask, a.min_size), "ckpts": {}}
    for name, path in ckpts:
        model, _ = load_checkpoint(path)  # in eval mode
        t0 = time.time()
        track = evaluate_tracking(model, v.image[:TRACK_SLICES], np.ascontiguousarray(sdf[:TRACK_SLICES]),
                                  v.mask[:TRACK_SLICES], seed=a.seed)
        inst = segment_volume(model, v.image, sdf, fill=False)
        res["ckpts"][name] = {
            "path": str(path),
            "tracking_unet_sdf": track,
            "auto": evaluate_instances(inst, v.mask, a.min_size),
            "filled": evaluate_instances(fill_from_sdf(inst, sdf), v.mask, a.min_size),
            "seconds": round(time.time() - t0, 1),
        }
        print(json.dumps({name: res["ckpts"][name]["tracking_unet_sdf"]}), flush=True)
    print(f"\nmachine: {res['machine']}; U-Net {a.unet} (its SDF {res['unet_sdf']})\n")
    print("| propagator | tracking, U-Net SDF memory: 3D IoU / per-slice IoU | automatic mode | fg-IoU | Dice "
          "| AP@0.5 | AP@0.75 | AP@0.5 / AP@0.75 of its instance ids | flicker (objects / matched) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| (the U-Net alone, sdf > 0) | - | - | {_row(res['unet_alone'])} |")
    for name, r in res["ckpts"].items():
        t = r["tracking_unet_sdf"]
        print(f"| {name} | {t['mean_iou_3d']:.3f} / {t['mean_slice_iou']:.3f} | masks alone | {_row(r['auto'])} |")
        print(f"| {name} | | filled | {_row(r['filled'])} |")
    if a.out:
        write_text(Path(a.out), json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
