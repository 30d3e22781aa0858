"""Data loading, budgets, crop sampling and the synthetic demo volume."""

from fractions import Fraction

import numpy as np
import pytest

from spatialsam.data import (
    Volume,
    annotation_weights,
    budget_slices,
    default_data_root,
    load_dataset,
    load_lucchi,
    make_demo_volume,
    parse_budget,
    resample_xy,
    sample_crop_origins,
)


def test_budget_slices_are_named_and_even():
    assert budget_slices(165, "1/64") == [27, 82, 137]
    assert budget_slices(165, "1/16") == [8, 24, 41, 57, 74, 90, 107, 123, 140, 156]
    quarter = budget_slices(165, Fraction(1, 4))
    assert len(quarter) == 41 and quarter == sorted(set(quarter))
    assert budget_slices(165, 1) == list(range(165))
    assert budget_slices(10, "1/64") == [5]


def test_budget_bad_values():
    for b in ["0", "2", "x", "1/0"]:
        with pytest.raises(ValueError, match="budget"):
            parse_budget(b)


def test_annotation_weights_and_bad_slices():
    w = annotation_weights((6, 3, 4), [1, 4])
    assert w.dtype == np.float32 and w.shape == (6, 3, 4)
    assert np.array_equal(w.sum(axis=(1, 2)), [0, 12, 0, 0, 12, 0])
    with pytest.raises(ValueError, match="annotated_slices: empty"):
        annotation_weights((6, 3, 4), [])
    with pytest.raises(ValueError, match="annotated_slices"):
        annotation_weights((6, 3, 4), [6])


def test_crop_origins_seeded_and_on_labelled_slices():
    sw = np.zeros(40)
    sw[[5, 30]] = 1
    a = sample_crop_origins((40, 64, 64), (8, 32, 32), 50, np.random.default_rng(3), sw)
    b = sample_crop_origins((40, 64, 64), (8, 32, 32), 50, np.random.default_rng(3), sw)
    assert np.array_equal(a, b)
    for z, y, x in a:
        assert 0 <= z <= 32 and 0 <= y <= 32 and 0 <= x <= 32
        assert (z <= 5 < z + 8) or (z <= 30 < z + 8)
    with pytest.raises(ValueError, match="crop_zyx"):
        sample_crop_origins((4, 64, 64), (8, 32, 32), 1, np.random.default_rng(0))


def test_demo_volume_deterministic_and_plausible():
    img, lab = make_demo_volume((16, 64, 64), seed=2)
    img2, lab2 = make_demo_volume((16, 64, 64), seed=2)
    assert img.dtype == np.uint8 and lab.dtype == np.uint32 and img.shape == lab.shape == (16, 64, 64)
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2)
    assert lab.max() >= 1
    # Mitochondria are darker than cytoplasm, as in Lucchi++.
    assert img[lab > 0].mean() < img[lab == 0].mean() - 20


def test_volume_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="mask"):
        Volume(np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 5), bool), (5, 5, 5))
    with pytest.raises(ValueError, match="image"):
        Volume(np.full((2, 3, 4), np.nan), np.zeros((2, 3, 4), bool), (5, 5, 5))


@pytest.mark.skipif(not (default_data_root() / "lucchi_pp").exists(), reason="../shared/data not present")
def test_load_lucchi_test_split():
    v = load_lucchi("test", z=slice(80, 84))
    assert v.image.shape == (4, 768, 1024) and v.image.dtype == np.uint8
    assert v.mask.dtype == bool and 0.02 < v.mask.mean() < 0.15
    assert v.voxel_size_nm == (5.0, 5.0, 5.0)
    # Lucchi++ mitochondria are darker than their surroundings (meta.json: contrast ~34 grey levels).
    assert v.image[~v.mask].mean() - v.image[v.mask].mean() > 15
    with pytest.raises(ValueError, match="split"):
        load_lucchi("val")


def test_demo_volumes_load_and_stack_with_distinct_ids(tmp_path):
    import json

    from spatialsam.data import load_demo_volumes, stack_volumes

    (tmp_path / "meta.json").write_text(json.dumps({"voxel_size_nm_zyx": [8, 8, 8], "seeds": [5, 6]}))
    for s in (5, 6):
        (tmp_path / f"seed_{s}").mkdir()
        lab = np.zeros((2, 4, 4), np.uint64)
        lab[:, :2, :2] = 1
        lab[:, 2:, 2:] = 2
        np.save(tmp_path / f"seed_{s}" / "image.npy", np.full((2, 4, 4), s, np.uint8))
        np.save(tmp_path / f"seed_{s}" / "labels.npy", lab)
    vols = load_demo_volumes(tmp_path)
    assert [v.name for v in vols] == ["demo seed 5", "demo seed 6"] and vols[0].voxel_size_nm == (8.0, 8.0, 8.0)
    st = stack_volumes(vols)
    assert st.image.shape == (4, 4, 4) and st.image[2, 0, 0] == 6
    assert sorted(np.unique(st.labels).tolist()) == [0, 1, 2, 3, 4]
    assert st.mask.sum() == 2 * vols[0].mask.sum()
    with pytest.raises(ValueError, match="seeds"):
        load_demo_volumes(tmp_path, [7])
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_demo_volumes(tmp_path / "nowhere")


from conftest import write_dataset  # noqa: E402


def test_load_dataset_reads_the_shared_layout_and_refuses_what_is_not_there(tmp_path):
    image = np.arange(3 * 5 * 6, dtype=np.uint8).reshape(3, 5, 6)
    label = np.zeros((3, 5, 6), np.uint8)
    label[1, 2:4, 1:3] = 255
    write_dataset(tmp_path, "sbem", image, label, (40, 5.9, 5.9))
    v = load_dataset("sbem", "train", tmp_path)
    np.testing.assert_array_equal(v.image, image)
    np.testing.assert_array_equal(v.mask, label > 0)
    assert v.voxel_size_nm == (40.0, 5.9, 5.9)
    assert load_dataset("sbem", "train", tmp_path, z=slice(1, 2)).mask.sum() == 4
    with pytest.raises(ValueError, match="split: sbem has splits train, not 'val'"):
        load_dataset("sbem", "val", tmp_path)
    with pytest.raises(ValueError, match="dataset: 'nope' has no meta.json .*datasets there: sbem"):
        load_dataset("nope", "train", tmp_path)
    for bad in ("../sbem", "", "..", "a/b"):
        with pytest.raises(ValueError, match="dataset: "):
            load_dataset(bad, "train", tmp_path)
    write_dataset(tmp_path, "odd", image, label, (40, 0, 5.9))
    with pytest.raises(ValueError, match="voxel_size_nm_zyx"):
        load_dataset("odd", "train", tmp_path)


def test_resample_xy_scales_objects_by_the_pixel_size_ratio():
    # A disc of radius 40 px at 5.9 nm is a disc of radius 40 * 5.9 / 5 = 47.2 px at 5 nm: its area
    # scales by (5.9 / 5)^2 = 1.3924 (analytic), to within the pixel rounding of two discs.
    yy, xx = np.mgrid[:200, :200]
    disc = (yy - 100.0) ** 2 + (xx - 100.0) ** 2 <= 40.0 ** 2
    image = np.where(disc, 60, 200).astype(np.uint8)
    vol = Volume(np.stack([image, image]), np.stack([disc, disc]), (40.0, 5.9, 5.9))
    r = resample_xy(vol, 5.0)
    assert r.image.shape == (2, 236, 236) and r.mask.shape == r.image.shape
    assert r.voxel_size_nm[0] == 40.0 and r.voxel_size_nm[1:] == pytest.approx((5.0, 5.0), abs=0.01)
    assert r.mask[0].sum() / disc.sum() == pytest.approx(1.3924, rel=0.02)
    from scipy import ndimage

    inner = ndimage.binary_erosion(r.mask[0], iterations=2)
    assert inner.sum() > 6000 and (r.image[0][inner] == 60).all() and (r.image[1] == r.image[0]).all()
    assert resample_xy(vol, 5.9) is vol
    with pytest.raises(ValueError, match="xy_nm"):
        resample_xy(vol, 0)


@pytest.mark.skipif(not (default_data_root() / "cdeep3m_mito_sbem").exists(), reason="../shared/data not present")
def test_load_cdeep3m_sbem_split():
    v = load_dataset("cdeep3m_mito_sbem", "train", z=slice(0, 2))
    assert v.image.shape == (2, 1024, 1024) and v.voxel_size_nm == (40.0, 5.9, 5.9)
    assert 0.02 < v.mask.mean() < 0.2
    # Mitochondria darker than their surroundings, as in Lucchi++ (meta.json: contrast ~64 grey levels).
    assert v.image[~v.mask].mean() - v.image[v.mask].mean() > 20
