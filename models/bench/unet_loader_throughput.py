"""How fast the U-Net training crops are cut, with 0 (in the loop) and N loader threads.

On a GPU the 3D U-Net's step takes milliseconds, so the crops (image, target SDF, weight, with
flips, intensity jitter and border overhangs) decide the step time: on the H200 (2026-12-04) the
benchmark's (b) ran 0.125 s/step with its process's CPU time equal to its wall time. This measures
the crops alone, on the real Lucchi++ train volume (1/64 budget) and the learned-stem config, and
prints a table: median ms per batch over --reps rounds of --batches batches each, side by side in
one run, and each thread count's speed-up over 0 threads.

    models/.venv/bin/python models/bench/unet_loader_throughput.py --threads 0,1,2,4 --data-root ../shared/data

Threads only help where cores are free: on this 2-core machine with a training run beside it they
cannot; on a 16-core GPU host they should scale until the GPU is the limit (not yet measured there).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from spatialsam.config import load_train_config
from spatialsam.data import budget_slices, load_lucchi
from spatialsam.train_unet import _batch, _foreground_voxels, _Loader, make_train_data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="0,1,2,4", help="loader thread counts to compare (0 = in the loop)")
    p.add_argument("--batches", type=int, default=16, help="batches per timed round")
    p.add_argument("--reps", type=int, default=3, help="timed rounds per thread count (interleaved)")
    p.add_argument("--config", default="unet3d_lucchi_learned")
    p.add_argument("--budget", default="1/64")
    p.add_argument("--data-root")
    a = p.parse_args(argv)
    counts = [int(t) for t in a.threads.split(",")]
    if any(t < 0 for t in counts) or a.batches < 1 or a.reps < 1:
        p.error("--threads: counts >= 0; --batches, --reps: >= 1")
    vol = load_lucchi("train", a.data_root)
    cfg0 = load_train_config(a.config, max_steps=10**9)
    data = make_train_data(vol.image, vol.mask, vol.voxel_size_nm, budget_slices(vol.image.shape[0], a.budget),
                           cfg0.truncation_nm)
    slice_w = data.weight.sum(axis=(1, 2), dtype=np.float64)
    fg = _foreground_voxels(data)
    times: dict[int, list[float]] = {t: [] for t in counts}
    for rep in range(a.reps):  # interleaved, so drifting load hits every count alike
        for t in counts:
            cfg = load_train_config(a.config, max_steps=10**9, loader_threads=t)
            start = time.perf_counter()
            if t == 0:
                rng = np.random.default_rng(rep)
                for _ in range(a.batches):
                    _batch(data, cfg, rng, slice_w, fg, None)
            else:
                loader = _Loader(data, cfg, slice_w, fg, None, rep * a.batches)
                for k in range(rep * a.batches, (rep + 1) * a.batches):
                    loader.batch(k)
                loader.close()
            times[t].append(1000 * (time.perf_counter() - start) / a.batches)
    base = statistics.median(times[counts[0]])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    print(f"crops: {cfg0.batch_size} x {tuple(cfg0.crop_zyx)} ({a.config}), {a.batches} batches x {a.reps} rounds")
    print("| loader threads | ms per batch (median of rounds) | rounds | speed-up |")
    print("|---|---|---|---|")
    for t in counts:
        med = statistics.median(times[t])
        print(f"| {t} | {med:.1f} | {', '.join(f'{x:.0f}' for x in times[t])} | {base / med:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
