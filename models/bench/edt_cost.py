"""What the exact EDT behind every SDF target costs: scipy's against the `edt` package, side by side.

`sdf.signed_distance_nm` runs two exact Euclidean distance transforms (inside and outside the mask)
per z-slab; the dual-track loop recomputes the targets of the whole train volume every round (its
`sdf_targets` part in `rounds.jsonl`). This times both transforms on the same slab of the Lucchi++
train labels (one slab of `sdf_target`'s default size with its halo: 64 + 2 x 22 slices of
768 x 1024 at 5 nm), interleaved repeat by repeat so a drifting load hits both alike, and prints the
median seconds, the ratio and the largest difference between the two distance fields.

    SPATIALSAM_DATA=../shared/data models/.venv/bin/python models/bench/edt_cost.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import edt
import numpy as np
from scipy import ndimage

from spatialsam.data import load_lucchi
from spatialsam.device import machine


def _scipy(m: np.ndarray, vs: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    return ndimage.distance_transform_edt(m, sampling=vs), ndimage.distance_transform_edt(~m, sampling=vs)


def _edt(m: np.ndarray, vs: tuple[float, ...], parallel: int) -> tuple[np.ndarray, np.ndarray]:
    return edt.edt(m, anisotropy=vs, parallel=parallel), edt.edt(~m, anisotropy=vs, parallel=parallel)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--slices", type=int, default=108, help="slab depth (default: 64 + 2 x 22 halo)")
    p.add_argument("--data", default=None, help="data root (default: $SPATIALSAM_DATA or ../shared/data)")
    a = p.parse_args(argv)
    if a.repeats < 1:
        p.error("--repeats: must be >= 1")
    vol = load_lucchi("train", a.data, z=slice(0, a.slices))
    m = np.ascontiguousarray(vol.mask)
    vs = tuple(float(v) for v in vol.voxel_size_nm)
    arms = {
        "scipy.ndimage.distance_transform_edt": lambda: _scipy(m, vs),
        "edt.edt, 1 thread": lambda: _edt(m, vs, 1),
        "edt.edt, 2 threads": lambda: _edt(m, vs, 2),
    }
    times: dict[str, list[float]] = {k: [] for k in arms}
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for _ in range(a.repeats):
        for name, fn in arms.items():
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
    ref = results["scipy.ndimage.distance_transform_edt"]
    base = statistics.median(times["scipy.ndimage.distance_transform_edt"])
    print(f"machine: {machine()}")
    print(f"slab {m.shape} at {vs} nm, foreground {m.mean():.3f}, {a.repeats} repeats, inside + outside EDT")
    print("| transform | median s | speed-up | max abs difference from scipy (nm) |")
    print("|---|---|---|---|")
    for name in arms:
        diff = max(float(np.abs(r.astype(np.float64) - q).max()) for r, q in zip(results[name], ref))
        med = statistics.median(times[name])
        print(f"| {name} | {med:.2f} | {base / med:.2f}x | {diff:.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
