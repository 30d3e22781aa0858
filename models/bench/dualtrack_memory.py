"""Memory of the dual-track loop per voxel of the training box, part by part.

`adapt` holds the box and several whole-box maps (SDF, both tracks' probabilities, pseudo-labels and
their weights); how many decides how large a box fits in RAM. This runs a short dual-track loop
(tiny U-Net, a few steps: the maps are whole-box whatever the step counts) on a generated demo volume
of --shape with tracemalloc on, and prints, per part of a round (dualtrack._PartTimer's names), the
peak of traced memory (numpy's arrays and Python objects; torch's own allocator is not traced) while
that part ran, in bytes per voxel of the box, plus the process's peak RSS and the machine.

    nice models/.venv/bin/python models/bench/dualtrack_memory.py --shape 96,256,256

To compare code versions, run it from each version's source tree (PYTHONPATH=<tree>/models) in
turn; tracemalloc slows numpy-heavy parts, so its wall time is not a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

from spatialsam import dualtrack
from spatialsam.data import make_demo_volume

TINY_UNET = {"unet": {"channels": [8, 16], "pool": [[2, 2, 2]], "norm": "none"}, "crop_zyx": (8, 48, 48),
             "batch_size": 1, "amp": "none", "ema_decay": 0.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="96,256,256", help="demo volume z,y,x (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args(argv)
    shape = tuple(int(x) for x in a.shape.split(","))
    image, ids = make_demo_volume(shape, seed=3)
    slices = [shape[0] // 4, 3 * shape[0] // 4]
    labels = np.zeros(shape, bool)
    labels[slices] = ids[slices] > 0
    del ids
    peaks: dict[str, int] = {}
    timed = dualtrack._PartTimer.__call__

    @contextlib.contextmanager
    def traced(self, name: str):
        tracemalloc.reset_peak()
        with timed(self, name):
            yield
        peaks[name] = max(peaks.get(name, 0), tracemalloc.get_traced_memory()[1])

    dualtrack._PartTimer.__call__ = traced  # type: ignore[method-assign]
    cfg = dualtrack.DualTrackConfig(rounds=a.rounds, threads=1, unet_config="unet3d_demo", unet_overrides=TINY_UNET,
                                    bootstrap_unet_steps=2, unet_steps=2, bootstrap_mask_steps=1, mask_steps=1,
                                    mask_batch_size=1, mask_crop=128, min_object_voxels=10)
    tracemalloc.start()
    with tempfile.TemporaryDirectory() as out:
        dualtrack.run_dualtrack(image, labels, slices, (8, 8, 8), cfg, Path(out), progress=False)
    n = int(np.prod(shape))
    print(f"dual-track memory, demo volume {shape} = {n / 1e6:.1f} M voxels, {a.rounds} round(s) after the bootstrap")
    print(f"machine: {platform.processor() or platform.machine()}, python {sys.version.split()[0]}, numpy {np.__version__}")
    print("| part | peak traced bytes per voxel |\n| --- | --- |")
    for k, v in peaks.items():
        print(f"| {k} | {v / n:.1f} |")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"peak RSS {rss:.2f} GB (torch and the interpreter included)")
    print(json.dumps({"voxels": n, "peak_bytes_per_voxel": {k: round(v / n, 1) for k, v in peaks.items()}, "maxrss_gb": rss}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
