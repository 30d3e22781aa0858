"""How fast the mask track's volume-wide propagation runs with its objects batched in lockstep.

`propagate_volume` (the dual-track loop's pseudo-label step) follows every object of the annotated
slices through z in its own crop window. With --batch 1 each object runs alone (batch-1 encodes and
decodes, the reference path); with N > 1 the objects whose windows have one size advance together,
N per batch (step k of a direction takes each object k slices from its own annotated slice). This runs it on the real Lucchi++ train volume (annotated slices
of --budget) with a trained propagator checkpoint, batch sizes side by side (interleaved rounds), and
prints a table: median seconds per pass, speed-up over the first batch size, and how far the result
is from the first batch size's (max |d prob|, voxels whose prob > 0.5 changes).

    models/.venv/bin/python models/bench/propagate_batch.py --propagator RUN/round_0/propagator/propagator_last.pt \\
        --batch 1,64 --data-root ../shared/data

Memory: the SDF of --unet's best.pt on the train volume (a train_unet run folder, as the dual-track
loop's round 0 uses (b)'s), or without --unet the SDF of the true labels (timing only: it is not what
a sparse-label run would see).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spatialsam.device import use_device
from spatialsam.data import budget_slices, load_lucchi
from spatialsam.predictor import propagate_volume
from spatialsam.sdf import sdf_target
from spatialsam.train_propagator import load_checkpoint
from spatialsam.train_unet import load_unet, predict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--propagator", required=True, help="a propagator checkpoint (.pt) of train_propagator/adapt")
    p.add_argument("--unet", help="a train_unet run folder whose best.pt gives the SDF memory (default: true labels)")
    p.add_argument("--batch", default="1,64", help="batch sizes to compare; the first is the reference")
    p.add_argument("--reps", type=int, default=2, help="timed rounds per batch size (interleaved)")
    p.add_argument("--budget", default="1/64")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--box", help="only this part of the train volume, z0:z1,y0:y1,x0:x1 (a smoke run)")
    p.add_argument("--data-root")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    a = p.parse_args(argv)
    try:
        sizes = [int(b) for b in a.batch.split(",")]
    except ValueError:
        p.error(f"--batch: expected comma separated integers, got {a.batch!r}")
    if any(b < 1 for b in sizes) or a.reps < 1:
        p.error("--batch: sizes >= 1; --reps: >= 1")
    if not Path(a.propagator).is_file():
        p.error(f"--propagator: no such file {a.propagator}")
    try:
        device = use_device(a.device, "--device")
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(max(1, a.threads))
    vol = load_lucchi("train", a.data_root)
    if a.box:
        try:
            box = [slice(*(int(v) for v in part.split(":"))) for part in a.box.split(",")]
            if len(box) != 3:
                raise ValueError
        except ValueError:
            p.error(f"--box: expected z0:z1,y0:y1,x0:x1, got {a.box!r}")
        vol = vol.crop(*box)
    slices = budget_slices(vol.image.shape[0], a.budget)
    if a.unet:
        run = Path(a.unet)
        summ = json.loads((run / "summary.json").read_text())
        sdf, _ = predict(load_unet(run / "best.pt"), vol.image, summ["mean"], summ["std"])
    else:
        sdf = sdf_target(vol.mask > 0, vol.voxel_size_nm)
    sdf = np.ascontiguousarray(sdf, np.float32)
    model, _ = load_checkpoint(a.propagator)
    model.eval()
    times: dict[int, list[float]] = {b: [] for b in sizes}
    probs: dict[int, np.ndarray] = {}
    for _ in range(a.reps):
        for b in sizes:
            start = time.perf_counter()
            with torch.no_grad():
                probs[b] = propagate_volume(model, vol.image, sdf, slices, vol.mask, crop=a.crop, batch=b)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[b].append(time.perf_counter() - start)
    ref = sizes[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"Lucchi++ train{' [' + a.box + ']' if a.box else ''} {vol.image.shape}, slices {slices}, crop {a.crop}, propagator {a.propagator}, "
          f"memory: {'U-Net ' + a.unet if a.unet else 'true-label SDF'}, {a.reps} rounds")
    print("| batch | median s per pass | speed-up | max abs d prob | voxels flipped at 0.5 |")
    print("|---|---|---|---|---|")
    for b in sizes:
        med = statistics.median(times[b])
        d = float(np.abs(probs[b] - probs[ref]).max())
        flips = int(((probs[b] > 0.5) != (probs[ref] > 0.5)).sum())
        print(f"| {b} | {med:.1f} | {statistics.median(times[ref]) / med:.2f}x | {d:.2e} | {flips} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
