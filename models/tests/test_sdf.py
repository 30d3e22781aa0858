"""SDF targets against analytic shapes and scipy's EDT."""

import numpy as np
import pytest
from scipy import ndimage

from spatialsam.sdf import (
    denormalise_sdf,
    normalise_sdf,
    sdf_target,
    sdf_target_per_slice,
    signed_distance_nm,
)


def _sphere(shape, centre, radius_nm, voxel):
    grids = np.meshgrid(*[np.arange(n) * v for n, v in zip(shape, voxel)], indexing="ij")
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
    return r < radius_nm, r


@pytest.mark.parametrize("voxel", [(5.0, 5.0, 5.0), (20.0, 5.0, 5.0)])
def test_sphere_sdf_matches_r_minus_distance(voxel):
    shape = (24, 48, 48) if voxel[0] > 5 else (48, 48, 48)
    centre = tuple((n // 2) * v + 0.3 * v for n, v in zip(shape, voxel))
    radius = 80.0
    mask, r = _sphere(shape, centre, radius, voxel)
    d = signed_distance_nm(mask, voxel)
    assert d.dtype == np.float32 and d.shape == mask.shape
    diag = float(np.sqrt(sum(v * v for v in voxel)))
    err = np.abs(d - (radius - r))
    assert err.max() <= diag, err.max()
    # Away from the coarse z-axis discretisation the error is well under one voxel.
    assert np.median(err) < min(voxel)


def test_sign_reproduces_mask_exactly():
    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((20, 30, 40)) > 0.6)
    for voxel in [(5, 5, 5), (40, 5.9, 5.9)]:
        d = signed_distance_nm(mask, voxel)
        assert np.array_equal(d > 0, mask)
        assert np.all(d != 0)
        s = sdf_target(mask, voxel, truncation_nm=30)
        assert np.array_equal(s > 0, mask)
        assert s.min() >= -1 and s.max() <= 1


def _scipy_signed_distance(mask, voxel):
    """The convention computed with scipy's EDT (float64), the independent reference."""
    h = 0.5 * min(voxel)
    return np.where(mask, ndimage.distance_transform_edt(mask, sampling=voxel) - h,
                    -(ndimage.distance_transform_edt(~mask, sampling=voxel) - h))


def test_matches_scipy_edt_directly():
    rng = np.random.default_rng(1)
    mask = rng.random((10, 12, 14)) > 0.5
    voxel = (30.0, 4.0, 4.0)
    d = signed_distance_nm(mask, voxel)
    ref = _scipy_signed_distance(mask, voxel)
    np.testing.assert_allclose(d[mask], ref[mask], rtol=1e-6)
    np.testing.assert_allclose(d[~mask], ref[~mask], rtol=1e-6)


@pytest.mark.parametrize("shape, voxel", [((17, 23, 29), (40.0, 5.9, 5.9)), ((31, 37), (6.0, 4.5)), ((53,), (7.0,))])
def test_matches_scipy_edt_on_smooth_anisotropic_shapes(shape, voxel):
    """The EDT behind the targets (the ``edt`` package) against scipy's, the independent reference,
    on blob-shaped masks touching the array edges (the edge is not a boundary in either), in 3D,
    2D and 1D with unequal voxel sides."""
    rng = np.random.default_rng(len(shape))
    mask = ndimage.gaussian_filter(rng.normal(size=shape), 2.0) > 0.05
    assert mask.any() and not mask.all()
    d = signed_distance_nm(mask, voxel)
    ref = _scipy_signed_distance(mask, voxel)
    np.testing.assert_allclose(d, ref, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(sdf_target(mask, voxel, 50.0), np.clip(ref / 50.0, -1, 1), atol=1e-6)
    # Memory layout does not matter (beyond float32 rounding): a Fortran-ordered copy (what a transposed
    # volume gives) and a strided view keep each voxel side on its own axis.
    np.testing.assert_allclose(signed_distance_nm(np.asfortranarray(mask), voxel), d, rtol=1e-6, atol=1e-4)
    if mask.ndim == 3:
        view = mask[:, ::2]
        np.testing.assert_allclose(signed_distance_nm(view, voxel), _scipy_signed_distance(view, voxel), rtol=1e-6, atol=1e-4)


def test_anisotropic_distance_along_z_uses_z_spacing():
    mask = np.zeros((9, 5, 5), bool)
    mask[:4] = True  # boundary between z=3 and z=4
    d = signed_distance_nm(mask, (40.0, 5.0, 5.0))
    # z=0 is 4 voxels of 40 nm from background z=4: 160 nm - 2.5 nm.
    assert d[0, 2, 2] == pytest.approx(160 - 2.5)
    # z=8 is 5 voxels from foreground z=3.
    assert d[8, 2, 2] == pytest.approx(-(200 - 2.5))


def test_normalisation_and_inverse():
    d = np.array([-500.0, -50.0, 0.0, 25.0, 100.0, 1e9], np.float32)
    s = normalise_sdf(d, 100.0)
    np.testing.assert_allclose(s, [-1, -0.5, 0, 0.25, 1, 1])
    np.testing.assert_allclose(denormalise_sdf(s[1:4], 100.0), d[1:4])


def test_empty_and_full_masks():
    assert np.all(sdf_target(np.zeros((3, 4, 4), bool), (5, 5, 5)) == -1)
    assert np.all(sdf_target(np.ones((3, 4, 4), bool), (5, 5, 5)) == 1)


def test_per_slice_ignores_z():
    mask = np.zeros((3, 20, 20), bool)
    mask[1, 5:15, 5:15] = True
    s = sdf_target_per_slice(mask, (5, 5, 5), 50)
    np.testing.assert_allclose(s[1], sdf_target(mask[1], (5, 5), 50))
    assert np.all(s[0] == -1)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="voxel_size_nm"):
        signed_distance_nm(np.ones((2, 2, 2)), (5, 5))
    with pytest.raises(ValueError, match="voxel_size_nm"):
        signed_distance_nm(np.ones((2, 2, 2)), (5, 0, 5))
    with pytest.raises(ValueError, match="truncation_nm"):
        normalise_sdf(np.zeros(3), float("nan"))
    with pytest.raises(ValueError, match="mask"):
        signed_distance_nm(np.zeros((0, 2)), (5, 5))
    with pytest.raises(ValueError, match="mask"):
        signed_distance_nm(np.ones((2, 2, 2, 2)), (5, 5, 5, 5))


@pytest.mark.parametrize("voxel, slab", [((5.0, 5.0, 5.0), 7), ((40.0, 4.0, 4.0), 1), ((8.0, 6.0, 5.0), 16), ((3.0, 9.0, 9.0), 5)])
def test_sdf_target_in_slabs_equals_the_whole_volume_transform(voxel, slab):
    """sdf_target works in z-slabs with a halo to bound memory; its output must be identical to the
    whole-volume transform, including voxels whose slab crop holds no boundary at all (deep inside a
    large object, far outside every object) and objects cut by slab borders."""
    rng = np.random.default_rng(int(voxel[0] * 10 + slab))
    shape = (90, 40, 36)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), (2.0, 3.0, 3.0))
    mask = noise > 0.08
    mask[30:75] = False
    mask[40:70, 5:35, 4:32] = True  # one object deeper than several slabs: all-foreground crops
    whole = normalise_sdf(signed_distance_nm(mask, voxel), 20.0)
    got = sdf_target(mask, voxel, 20.0, slab_z=slab)
    assert got.dtype == np.float32 and np.array_equal(got, whole)
    assert (got == 1).any() and (got == -1).any() and ((got > -1) & (got < 1)).any()
    assert np.array_equal(sdf_target(np.zeros(shape, bool), voxel, slab_z=slab), np.full(shape, -1, np.float32))
    with pytest.raises(ValueError, match="slab_z"):
        sdf_target(mask, voxel, slab_z=0)
