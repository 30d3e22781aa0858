"""Volumes for training and evaluation: Lucchi++ PNG stacks, sparse slice annotations, crop
sampling, and a small synthetic EM-like demo volume for tests and the server's demo.

All arrays are C-order [Z, Y, X]; images uint8, masks bool, voxel sizes in nm as (z, y, x).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_root() -> Path:
    """``$SPATIALSAM_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("SPATIALSAM_DATA")
    return Path(env) if env else (REPO_ROOT / ".." / "shared" / "data").resolve()


@dataclass
class Volume:
    """A labelled EM volume. image: uint8 [Z, Y, X]; mask: bool [Z, Y, X]; voxel_size_nm: (z, y, x)."""

    image: np.ndarray
    mask: np.ndarray
    voxel_size_nm: tuple[float, float, float]

    def __post_init__(self) -> None:
        check_volume(self.image, "image")
        if self.mask.shape != self.image.shape:
            raise ValueError(f"mask: shape {self.mask.shape} does not match image shape {self.image.shape}")

    def crop(self, z: slice, y: slice = slice(None), x: slice = slice(None)) -> Volume:
        return Volume(self.image[z, y, x], self.mask[z, y, x], self.voxel_size_nm)


def check_volume(a: np.ndarray, name: str, ndim: int = 3) -> np.ndarray:
    """Validate an array argument: right rank, non-empty, finite. Raises ValueError naming ``name``."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions [Z, Y, X][-{ndim}:], got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: empty array of shape {a.shape}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return a


def load_stack(directory: Path, z: slice = slice(None)) -> np.ndarray:
    """Stack the ``*.png`` slices of ``directory`` (sorted by name = z ascending; only the slices
    ``z`` selects are decoded) as uint8 [Z, Y, X]."""
    files = sorted(Path(directory).glob("*.png"))[z]
    if not files:
        raise FileNotFoundError(f"{directory}: no PNG slices found (z = {z})")
    return np.stack([np.asarray(Image.open(f).convert("L")) for f in files])


def load_lucchi(split: str, root: Path | str | None = None, z: slice = slice(None)) -> Volume:
    """Load Lucchi++ ``split`` ("train" or "test") from ``<root>/lucchi_pp`` (slices ``z`` only);
    voxel size from meta.json."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    return load_dataset("lucchi_pp", split, root, z)


def load_dataset(name: str, split: str, root: Path | str | None = None, z: slice = slice(None)) -> Volume:
    """Load ``split`` of the labelled dataset ``<root>/<name>`` in the shared data layout
    (``<split>/image/*.png``, ``<split>/label/*.png``, ``meta.json`` with ``voxel_size_nm_zyx`` and
    ``splits``), slices ``z`` only. Names and splits that are not there are refused, naming them."""
    base = Path(root) if root is not None else default_data_root()
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"dataset: {name!r} is not a dataset folder name")
    d = base / name
    if not (d / "meta.json").is_file():
        have = sorted(p.name for p in base.iterdir() if (p / "meta.json").is_file()) if base.is_dir() else []
        raise ValueError(f"dataset: {name!r} has no meta.json under {base} (datasets there: {', '.join(have) or 'none'})")
    meta = json.loads((d / "meta.json").read_text())
    splits = sorted(meta.get("splits", {}))
    if split not in splits:
        raise ValueError(f"split: {name} has splits {', '.join(splits) or 'none'}, not {split!r}")
    vs = tuple(float(v) for v in meta["voxel_size_nm_zyx"])
    if len(vs) != 3 or not all(v > 0 for v in vs):
        raise ValueError(f"voxel_size_nm_zyx: {d / 'meta.json'} gives {meta['voxel_size_nm_zyx']!r}, not three positive sizes")
    image = load_stack(d / split / "image", z)
    mask = load_stack(d / split / "label", z) > 0
    if mask.shape != image.shape:
        raise ValueError(f"label: {d / split / 'label'} holds shape {mask.shape}, the images {image.shape}")
    return Volume(image, mask, vs)  # type: ignore[arg-type]


def resample_xy(vol: Volume, xy_nm: float) -> Volume:
    """``vol`` with each slice resampled to ``xy_nm`` pixels (linear for the image, nearest for the
    mask); z is untouched. The voxel size records the pixel size the rounded shape gives."""
    if not xy_nm > 0:
        raise ValueError(f"xy_nm: expected a positive pixel size, got {xy_nm}")
    z_n, y_n, x_n = vol.image.shape
    vz, vy, vx = vol.voxel_size_nm
    ny, nx = max(1, round(y_n * vy / xy_nm)), max(1, round(x_n * vx / xy_nm))
    if (ny, nx) == (y_n, x_n):
        return vol
    f = (1.0, ny / y_n, nx / x_n)
    image = np.clip(np.rint(ndimage.zoom(vol.image.astype(np.float32), f, order=1, grid_mode=True, mode="nearest")),
                    0, 255).astype(np.uint8)
    mask = ndimage.zoom(vol.mask.astype(np.uint8), f, order=0, grid_mode=True, mode="nearest") > 0
    return Volume(image, mask, (vz, y_n * vy / ny, x_n * vx / nx))


def parse_budget(budget: str | float | Fraction) -> Fraction:
    """Parse an annotation budget such as "1/64", 0.25 or Fraction(1, 16); must be in (0, 1]."""
    try:
        b = Fraction(budget) if not isinstance(budget, float) else Fraction(budget).limit_denominator(10_000)
    except (ValueError, ZeroDivisionError) as e:
        raise ValueError(f"budget: cannot parse {budget!r}") from e
    if not 0 < b <= 1:
        raise ValueError(f"budget: must be in (0, 1], got {budget!r}")
    return b


def budget_slices(n_slices: int, budget: str | float | Fraction) -> list[int]:
    """Evenly spaced annotated z-indices for a budget, deterministic.

    k = max(1, floor(n * budget + 0.5)) slices at the centres of k equal bins:
    ``floor((i + 0.5) * n / k)``. For n = 165: 1/64 -> [27, 82, 137]; 1/16 -> 10 slices
    [8, 24, 41, 57, 74, 90, 107, 123, 140, 156]; 1/4 -> 41 slices.
    """
    if n_slices < 1:
        raise ValueError(f"n_slices: must be >= 1, got {n_slices}")
    b = parse_budget(budget)
    k = max(1, math.floor(n_slices * b + Fraction(1, 2)))
    return [math.floor((Fraction(2 * i + 1, 2) * n_slices) / k) for i in range(k)]


def annotation_weights(shape_zyx: Sequence[int], annotated_slices: Sequence[int]) -> np.ndarray:
    """float32 [Z, Y, X] weight map: 1 on the annotated z-slices, 0 elsewhere."""
    slices = check_slices(annotated_slices, shape_zyx[0])
    w = np.zeros(tuple(shape_zyx), np.float32)
    w[slices] = 1.0
    return w


def check_slices(annotated_slices: Sequence[int], n_slices: int) -> list[int]:
    """Validate annotated slice indices: non-empty, integers in [0, n_slices), unique."""
    s = [int(i) for i in annotated_slices]
    if not s:
        raise ValueError("annotated_slices: empty; at least one annotated slice is needed")
    bad = [i for i in s if not 0 <= i < n_slices]
    if bad:
        raise ValueError(f"annotated_slices: indices {bad} outside [0, {n_slices})")
    if len(set(s)) != len(s):
        raise ValueError(f"annotated_slices: duplicates in {s}")
    return sorted(s)


def sample_crop_origins(
    shape_zyx: Sequence[int],
    crop_zyx: Sequence[int],
    n: int,
    rng: np.random.Generator,
    slice_weights: np.ndarray | None = None,
) -> np.ndarray:
    """Random crop origins, int64 [n, 3] (z, y, x), each crop inside the volume.

    With ``slice_weights`` (float [Z], e.g. 1 on annotated slices) a z-slice is first drawn with
    probability proportional to its weight and the crop is placed so that it contains that slice
    at a uniformly random depth: compute goes where the labels are.
    """
    shape = np.asarray(shape_zyx, np.int64)
    crop = np.asarray(crop_zyx, np.int64)
    if np.any(crop > shape) or np.any(crop < 1):
        raise ValueError(f"crop_zyx: {tuple(crop)} does not fit in volume shape {tuple(shape)}")
    out = np.empty((n, 3), np.int64)
    for i in range(n):
        if slice_weights is None:
            z0 = rng.integers(0, shape[0] - crop[0] + 1)
        else:
            p = np.asarray(slice_weights, np.float64)
            if p.shape != (shape[0],) or p.sum() <= 0:
                raise ValueError("slice_weights: expected a non-negative [Z] vector with a positive sum")
            zc = rng.choice(shape[0], p=p / p.sum())
            z0 = np.clip(zc - rng.integers(0, crop[0]), 0, shape[0] - crop[0])
        y0 = rng.integers(0, shape[1] - crop[1] + 1)
        x0 = rng.integers(0, shape[2] - crop[2] + 1)
        out[i] = (z0, y0, x0)
    return out


def make_demo_volume(
    shape_zyx: Sequence[int] = (32, 96, 96), seed: int = 0, n_objects: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic EM-like volume with mitochondria: (image uint8 [Z, Y, X], labels uint32 [Z, Y, X]).

    Objects are ellipsoids and z-tilted tubes (capsules), non-overlapping, ids 1..n. Rendering:
    cytoplasm ~170 with smooth texture; mitochondrion interior ~115 with cristae (sinusoidal
    stripes); a dark (~60) 1-voxel membrane on the object boundary; Gaussian blur (sigma 0.8) and
    Gaussian noise (sigma 8), clipped to uint8. Deterministic for a given (shape, seed).
    """
    shape = tuple(int(s) for s in shape_zyx)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape_zyx: expected 3 sizes >= 4, got {shape_zyx}")
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    labels = np.zeros(shape, np.uint32)
    count = n_objects if n_objects is not None else max(2, int(np.prod(shape) / 40_000))
    scale = min(shape[1], shape[2])
    next_id = 1
    for _ in range(count * 4):
        if next_id > count:
            break
        c = rng.uniform([0, 0, 0], shape)
        if rng.random() < 0.5:  # ellipsoid, random rotation in the yx-plane
            r = rng.uniform(0.06, 0.14, 3) * scale
            r[0] = max(r[0], 3.0)
            a = rng.uniform(0, np.pi)
            dy, dx = yy - c[1], xx - c[2]
            u, v = np.cos(a) * dy + np.sin(a) * dx, -np.sin(a) * dy + np.cos(a) * dx
            obj = ((zz - c[0]) / r[0]) ** 2 + (u / r[1]) ** 2 + (v / r[2]) ** 2 <= 1
        else:  # tube: capsule around a segment running mostly through z
            d = rng.normal(size=3)
            d[0] = abs(d[0]) + 1.0
            d /= np.linalg.norm(d)
            half = rng.uniform(0.3, 0.6) * shape[0]
            p = np.stack([zz - c[0], yy - c[1], xx - c[2]], -1)
            t = np.clip(p @ d.astype(np.float32), -half, half)
            obj = np.linalg.norm(p - t[..., None] * d.astype(np.float32), axis=-1) <= rng.uniform(0.05, 0.09) * scale
        if not obj.any() or labels[ndimage.binary_dilation(obj, iterations=2)].any():
            continue
        labels[obj] = next_id
        next_id += 1
    fg = labels > 0
    texture = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 3.0)
    image = 170.0 + 60.0 * texture
    cristae = 12.0 * np.sin(0.9 * (yy + 0.5 * xx) + 3.0 * texture)
    image = np.where(fg, 115.0 + cristae, image)
    membrane = fg & ~ndimage.binary_erosion(fg)
    image[membrane] = 60.0
    image = ndimage.gaussian_filter(image, 0.8) + rng.normal(0, 8.0, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


@dataclass
class InstanceVolume:
    """An EM volume with instance labels. image: uint8 [Z, Y, X]; labels: uint64 [Z, Y, X] (0 =
    background); voxel_size_nm: (z, y, x); name: where it came from (e.g. "demo seed 101")."""

    image: np.ndarray
    labels: np.ndarray
    voxel_size_nm: tuple[float, float, float]
    name: str

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0


def load_demo_volumes(directory: Path | str, seeds: Sequence[int] | None = None) -> list[InstanceVolume]:
    """The TypeScript demo generator's volumes as written by server/bin/write_demo_training.ts:
    ``<dir>/meta.json`` and ``<dir>/seed_<n>/{image,labels}.npy``; ``seeds`` picks some (default: all
    listed in meta.json), in the order given."""
    d = Path(directory)
    try:
        meta = json.loads((d / "meta.json").read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{d / 'meta.json'}: not found; write it with server/bin/write_demo_training.ts") from e
    vs = tuple(float(v) for v in meta["voxel_size_nm_zyx"])
    chosen = list(meta["seeds"]) if seeds is None else [int(s) for s in seeds]
    missing = [s for s in chosen if s not in meta["seeds"]]
    if missing:
        raise ValueError(f"seeds: {missing} not in {d / 'meta.json'} (has {meta['seeds']})")
    out = []
    for s in chosen:
        image = np.load(d / f"seed_{s}" / "image.npy")
        labels = np.load(d / f"seed_{s}" / "labels.npy")
        if image.dtype != np.uint8 or labels.shape != image.shape:
            raise ValueError(f"{d / f'seed_{s}'}: expected uint8 image and labels of the same shape, got {image.dtype} "
                             f"{image.shape} and {labels.shape}")
        check_volume(image, f"seed_{s}/image.npy")
        out.append(InstanceVolume(image, labels, vs, f"demo seed {s}"))  # type: ignore[arg-type]
    return out


def stack_volumes(volumes: Sequence[InstanceVolume]) -> InstanceVolume:
    """Volumes stacked along z into one training volume, instance ids renumbered to stay distinct
    (the trainers take one volume; crops and runs that straddle a seam are a small share)."""
    if not volumes:
        raise ValueError("volumes: empty")
    labels, offset = [], 0
    for v in volumes:
        lab = v.labels.astype(np.uint64)
        labels.append(np.where(lab > 0, lab + np.uint64(offset), np.uint64(0)))
        offset += int(lab.max())
    return InstanceVolume(np.concatenate([v.image for v in volumes]), np.concatenate(labels), volumes[0].voxel_size_nm,
                          " + ".join(v.name for v in volumes))
