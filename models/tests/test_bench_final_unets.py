"""models/bench/final_unets.py on a synthetic volume: a dark ring tube (a myelinated axon's sheath) and
smaller dark blobs in a bright, noisy background."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location("final_unets", Path(__file__).parents[1] / "bench" / "final_unets.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

CY, CX, R_OUT, R_IN = 40.0, 90.0, 24.0, 16.0


def _volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 [60, 96, 128], truth bool): the ring tube through every z, wobbling by a pixel; a
    dark blob at z 10-19; a grey mitochondrion (the truth) beside the tube."""
    rng = np.random.default_rng(seed)
    img = rng.normal(180, 8, (60, 96, 128))
    yy, xx = np.mgrid[:96, :128]
    for z in range(60):
        r = np.hypot(yy - CY - (z % 3 - 1), xx - CX)
        img[z][(r >= R_IN) & (r <= R_OUT)] = rng.normal(40, 8, ((r >= R_IN) & (r <= R_OUT)).sum())
    img[10:20, 70:80, 10:20] = 45
    truth = np.zeros(img.shape, bool)
    truth[:, 75:90, 30:50] = True
    img[truth] = 120
    return np.clip(img, 0, 255).astype(np.uint8), truth


def test_the_cylinder_is_fitted_round_the_ring_from_the_image_alone():
    img, truth = _volume()
    s = bench.smoothed(img)
    thr = bench.pooled_threshold([s], 8.0)
    lab, comps = bench.darkest_components(s, thr, truth)
    assert len(comps) >= 2
    ring = comps[0]
    assert ring["box"][0] == [0, 60] and ring["truth_share"] == 0.0  # the tube, whole, in no true object
    assert comps[1]["box"][0] == [10, 20]  # the blob next
    assert comps[0]["voxels"] > comps[1]["voxels"]
    ellipse, fit = bench.axon_cylinder(lab == ring["label"], pad=2, fit_z=(0, 60))
    cy, cx = fit["centre_yx"]
    assert abs(cy - CY) <= 1 and abs(cx - CX) <= 1
    # half extent of the smoothed ring (the 9 px mean widens it by up to 4 px) plus the pad
    assert all(R_OUT + 2 - 1 <= r <= R_OUT + 4 + 2 + 1 for r in fit["radii_yx"])
    sheath = np.hypot(*np.mgrid[:96, :128] - np.array([CY, CX])[:, None, None]) <= R_OUT
    assert ellipse[sheath].all()  # every sheath pixel inside
    assert not (ellipse[None] & truth).any()  # the mitochondrion beside it outside


def test_scores_outside_the_cylinder_leave_the_axon_out():
    img, truth = _volume()
    ellipse = np.zeros(truth.shape[1:], bool)
    ellipse[10:70, 60:120] = True
    pred = truth.copy()
    pred[:, 20:60, 70:110] = True  # a false object on the axon: 60 x 1600 voxels
    s = bench.score_outside(pred, truth, ellipse, min_size=10)
    assert s["fg_iou"] == pytest.approx(truth.sum() / (truth.sum() + 60 * 1600))
    assert s["fg_iou_outside"] == 1.0
    assert s["ap50"] == pytest.approx(0.5) and s["ap50_outside"] == 1.0  # one true, one false object
    assert s["false_voxels_inside"] == 60 * 1600


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="percentile"):
        bench.pooled_threshold([np.zeros((2, 2, 2), np.float32)], 100.0)
    with pytest.raises(ValueError, match="pad"):
        bench.axon_cylinder(np.ones((2, 4, 4), bool), pad=-1)
    with pytest.raises(ValueError, match="component"):
        bench.axon_cylinder(np.zeros((2, 40, 40), bool), pad=0)


def test_train_volume_scores_leave_the_annotated_slices_out(tmp_path):
    truth = np.zeros((10, 20, 20), bool)
    truth[:, 5:15, 5:15] = True
    pred = truth.copy()
    pred[[2, 7]] = False  # wrong exactly on the annotated slices
    s = bench.score_off_slices(pred, truth, [2, 7], min_size=0)
    assert s["fg_iou_off"] == 1.0
    (tmp_path / "run.json").write_text('{"annotated_slices": [2, 7]}')
    assert bench.annotated_slices(tmp_path) == [2, 7]
    (tmp_path / "run.json").write_text('{"annotated_slices": "all"}')
    with pytest.raises(ValueError, match="annotated_slices"):
        bench.annotated_slices(tmp_path)
    with pytest.raises(ValueError, match="run.json"):
        bench.annotated_slices(tmp_path / "missing")


def test_automatic_mode_is_for_adapt_folders_and_the_test_volume(tmp_path, capsys):
    assert bench.automatic_mode_filled(tmp_path, np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4), np.float32)) is None
    with pytest.raises(SystemExit) as e:
        bench.main(["--volume", "train", "--auto"])
    assert e.value.code == 2 and "--auto: only with --volume test" in capsys.readouterr().err


def test_round_is_checked_on_every_run_before_any_work(tmp_path, capsys):
    train_unet_folder = tmp_path / "b"
    train_unet_folder.mkdir()
    with pytest.raises(SystemExit) as e:
        bench.main(["--runs", str(train_unet_folder), "--round", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--round:" in err and "is not an adapt folder" in err
    adapt_folder = tmp_path / "a"
    adapt_folder.mkdir()
    (adapt_folder / "state.json").write_text('{"done": 1}')
    with pytest.raises(SystemExit) as e:
        bench.main(["--runs", str(adapt_folder), "--round", "2"])
    assert e.value.code == 2 and "has finished rounds 0-1, got 2" in capsys.readouterr().err
