"""Signed-distance-field (SDF) targets for mitochondria masks, in nanometres and normalised.

Convention (used by training, export manifests and the TypeScript server alike):

* ``signed_distance_nm(mask, voxel_size_nm)`` returns d in nm, **positive inside**. With
  ``h = 0.5 * min(voxel_size_nm)``:
  inside voxels  d = EDT(mask)  - h   (EDT to the nearest background voxel centre),
  outside voxels d = -(EDT(~mask) - h) (EDT to the nearest foreground voxel centre).
  The boundary sits half a (smallest) voxel from the voxel centres on both sides, so the
  convention is symmetric and ``d > 0`` reproduces ``mask`` exactly (every inside voxel has
  d >= h > 0, every outside voxel d <= -h < 0). Distances use the true anisotropic voxel size.
  EDT is the exact Euclidean distance transform of the ``edt`` package (seung-lab's, float32,
  ``edt.edt(mask, anisotropy=voxel_size_nm)``); it agrees with
  ``scipy.ndimage.distance_transform_edt(mask, sampling=voxel_size_nm)`` to float32 rounding
  (tested) and is about 8x faster on a Lucchi++ slab (``bench/edt_cost.py``).
* ``normalise_sdf(d, T) = clip(d / T, -1, 1)``: truncated at +-T nm, linear inside the band.
  Inverse (exact for |s| < 1; |s| == 1 means "at least T nm away"):
  ``denormalise_sdf(s, T) = T * s``.
  The 3D U-Net's SDF head is ``tanh``, so its outputs live in (-1, 1) and map back to nm by the
  same inverse. Thresholding the normalised SDF at 0 gives the mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import edt
import numpy as np

DEFAULT_TRUNCATION_NM = 100.0


def _check_voxel_size(voxel_size_nm: Sequence[float], ndim: int) -> tuple[float, ...]:
    vs = tuple(float(v) for v in voxel_size_nm)
    if len(vs) != ndim:
        raise ValueError(f"voxel_size_nm: expected {ndim} values (one per axis), got {len(vs)}")
    if not all(np.isfinite(v) and v > 0 for v in vs):
        raise ValueError(f"voxel_size_nm: every value must be finite and > 0, got {vs}")
    return vs


def _check_truncation(truncation_nm: float) -> float:
    t = float(truncation_nm)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"truncation_nm: must be finite and > 0, got {truncation_nm}")
    return t


def signed_distance_nm(mask: np.ndarray, voxel_size_nm: Sequence[float]) -> np.ndarray:
    """Signed Euclidean distance to the mask boundary in nm, positive inside.

    Args:
        mask: bool (or 0/1) array, axis order matching ``voxel_size_nm`` (e.g. [Z, Y, X]).
        voxel_size_nm: voxel size per axis in nm (e.g. (z, y, x) = (5, 5, 5)).
    Returns:
        float32 array, same shape. An all-background mask gives ``-inf`` everywhere and an
        all-foreground mask ``+inf`` (no boundary exists); ``normalise_sdf`` maps these to -1 / +1.
    """
    m = np.asarray(mask)
    if m.ndim == 0 or m.ndim > 3 or m.size == 0:
        raise ValueError(f"mask: must be a non-empty 1D, 2D or 3D array, got shape {m.shape}")
    m = m.astype(bool, copy=False)
    vs = _check_voxel_size(voxel_size_nm, m.ndim)
    if not m.any():
        return np.full(m.shape, -np.inf, dtype=np.float32)
    if m.all():
        return np.full(m.shape, np.inf, dtype=np.float32)
    h = 0.5 * min(vs)
    # Exact EDT in float32 (distance to the nearest voxel of the other class; the array's edge is
    # not a boundary, as in scipy), run on each class in turn.
    anisotropy = vs[0] if m.ndim == 1 else vs
    inside = edt.edt(m, anisotropy=anisotropy, black_border=False, parallel=1)
    outside = edt.edt(~m, anisotropy=anisotropy, black_border=False, parallel=1)
    d = np.where(m, inside - np.float32(h), -(outside - np.float32(h)))
    return d.astype(np.float32, copy=False)


def normalise_sdf(d_nm: np.ndarray, truncation_nm: float = DEFAULT_TRUNCATION_NM) -> np.ndarray:
    """Map distances in nm to [-1, 1]: ``clip(d / T, -1, 1)``, float32, same shape."""
    t = _check_truncation(truncation_nm)
    return np.clip(np.asarray(d_nm, dtype=np.float32) / np.float32(t), -1.0, 1.0).astype(np.float32)


def denormalise_sdf(s: np.ndarray, truncation_nm: float = DEFAULT_TRUNCATION_NM) -> np.ndarray:
    """Inverse of ``normalise_sdf`` inside the band: ``T * s`` in nm, float32."""
    t = _check_truncation(truncation_nm)
    return (np.asarray(s, dtype=np.float32) * np.float32(t)).astype(np.float32)


def sdf_target(
    mask: np.ndarray,
    voxel_size_nm: Sequence[float],
    truncation_nm: float = DEFAULT_TRUNCATION_NM,
    slab_z: int = 64,
) -> np.ndarray:
    """Normalised SDF training target: ``normalise_sdf(signed_distance_nm(mask), T)``, float32 in [-1, 1].

    A 3D mask deeper than a slab is done in z-slabs of ``slab_z`` slices, each computed on the slab
    plus a halo of ``ceil((T + h) / voxel_z) + 1`` slices per side: a voxel's truncated value only
    depends on the mask within T + h nm of it (nearer boundaries lie inside the halo; if none does,
    the crop's distance is also >= T + h and clips to the same +-1), so the result is identical to
    the whole-volume transform while the EDT's work arrays only ever cover one slab with its halo.
    """
    m = np.asarray(mask)
    t = _check_truncation(truncation_nm)
    if m.ndim != 3:
        return normalise_sdf(signed_distance_nm(m, voxel_size_nm), t)
    vs = _check_voxel_size(voxel_size_nm, 3)
    if int(slab_z) < 1:
        raise ValueError(f"slab_z: must be >= 1, got {slab_z}")
    halo = math.ceil((t + 0.5 * min(vs)) / vs[0]) + 1
    n = m.shape[0]
    if n <= slab_z + 2 * halo:
        return normalise_sdf(signed_distance_nm(m, vs), t)
    out = np.empty(m.shape, np.float32)
    for z0 in range(0, n, slab_z):
        z1 = min(z0 + slab_z, n)
        a, b = max(0, z0 - halo), min(n, z1 + halo)
        out[z0:z1] = normalise_sdf(signed_distance_nm(m[a:b], vs), t)[z0 - a : z1 - a]
    return out


def sdf_target_per_slice(
    mask: np.ndarray,
    voxel_size_nm: Sequence[float],
    truncation_nm: float = DEFAULT_TRUNCATION_NM,
) -> np.ndarray:
    """2D SDF targets computed independently on each z-slice of a [Z, Y, X] mask.

    Used where only isolated slices are annotated: a 3D distance would wrongly treat the
    unannotated neighbours as background. ``voxel_size_nm`` is (z, y, x); z is ignored.
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim != 3:
        raise ValueError(f"mask: expected [Z, Y, X], got shape {m.shape}")
    vs = _check_voxel_size(voxel_size_nm, 3)
    return np.stack([sdf_target(m[z], vs[1:], truncation_nm) for z in range(m.shape[0])])
