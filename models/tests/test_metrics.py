"""Metrics on analytic cases."""

import numpy as np
import pytest

from spatialsam.metrics import (
    dice,
    error_breakdown,
    evaluate,
    flicker,
    flicker_gaps,
    foreground_iou,
    instance_ap,
    remove_small_components,
)


def _cubes(shape, boxes):
    m = np.zeros(shape, bool)
    for b in boxes:
        m[b] = True
    return m


def test_iou_and_dice_analytic():
    gt = _cubes((4, 10, 10), [np.s_[:, 0:4, 0:4]])  # 64 voxels
    pred = _cubes((4, 10, 10), [np.s_[:, 0:4, 2:6]])  # overlap 32, union 96
    assert foreground_iou(pred, gt) == pytest.approx(32 / 96)
    assert dice(pred, gt) == pytest.approx(64 / 128)
    assert foreground_iou(np.zeros((2, 2, 2)), np.zeros((2, 2, 2))) == 1.0
    with pytest.raises(ValueError, match="pred"):
        foreground_iou(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def test_instance_ap_counts_matches_fp_fn():
    shape = (6, 40, 40)
    gt = _cubes(shape, [np.s_[:, 0:10, 0:10], np.s_[:, 20:30, 0:10], np.s_[:, 0:10, 20:30]])
    pred = _cubes(
        shape,
        [
            np.s_[:, 0:10, 0:10],  # perfect: IoU 1
            np.s_[:, 20:30, 0:7],  # IoU 0.7: a match at 0.5 only
            np.s_[:, 32:38, 32:38],  # false positive
        ],
    )  # third GT object missed
    ap = instance_ap(pred, gt)
    assert ap["n_gt"] == 3 and ap["n_pred"] == 3
    assert ap["ap50"] == pytest.approx(2 / 4)  # TP 2, FP 1, FN 1
    assert ap["ap75"] == pytest.approx(1 / 5)  # TP 1, FP 2, FN 2


def test_flicker_counts_gaps_between_covered_slices():
    shape = (10, 20, 20)
    gt = _cubes(shape, [np.s_[0:10, 5:15, 5:15]])
    pred = gt.copy()
    pred[3] = False  # one gap
    pred[6, 5:15, 5:12] = False  # 30% covered: a gap
    pred[9] = False  # trailing loss: not between covered slices
    fl = flicker(pred, gt)
    assert fl == {"flicker_slices": 2, "flicker_objects": 1, "matched": 1}
    assert flicker(gt, gt)["flicker_slices"] == 0


def test_flicker_gaps_say_which_object_and_slices_and_how_much_is_covered():
    shape = (10, 20, 40)
    gt = _cubes(shape, [np.s_[0:10, 5:15, 5:15], np.s_[2:8, 5:15, 25:35]])
    pred = gt.copy()
    pred[3, :, :20] = False
    pred[6, 5:15, 5:12] = False  # 30% of that cross-section covered
    pred[4, 5:15, 25:30] = True  # the second object untouched
    gaps = flicker_gaps(pred, gt)
    assert gaps == [{"object": 1, "box": [0, 10, 5, 15, 5, 15], "slices": [3, 6], "cover": [0.0, 0.3]}]
    assert sum(len(g["slices"]) for g in gaps) == flicker(pred, gt)["flicker_slices"]
    assert flicker_gaps(gt, gt) == []


def test_evaluate_perfect():
    gt = _cubes((5, 12, 12), [np.s_[1:4, 2:6, 2:6], np.s_[1:4, 8:11, 8:11]])
    m = evaluate(gt, gt)
    assert m["fg_iou"] == 1 and m["dice"] == 1 and m["ap50"] == 1 and m["ap75"] == 1
    assert m["flicker_slices"] == 0 and m["matched"] == 2


def test_min_size_drops_specks_for_instance_metrics_only():
    gt = _cubes((5, 12, 12), [np.s_[1:4, 2:6, 2:6]])  # one 48-voxel object
    pred = gt.copy()
    pred[0, 10, 10] = pred[4, 0, 11] = True  # two one-voxel specks
    raw = evaluate(pred, gt)
    assert raw["n_pred"] == 3 and raw["ap50"] == 1 / 3
    m = evaluate(pred, gt, min_size=2)
    assert m["n_pred"] == 1 and m["ap50"] == 1 and m["fg_iou_filtered"] == 1
    assert m["fg_iou"] == raw["fg_iou"] == 48 / 50  # the raw score keeps the specks
    # specks in the ground truth are dropped alike: otherwise they are unmatchable objects
    speckled_gt = gt.copy()
    speckled_gt[4, 11, 0] = True
    assert evaluate(gt, speckled_gt)["ap50"] == 1 / 2
    assert evaluate(gt, speckled_gt, min_size=2)["ap50"] == 1
    # an object exactly min_size voxels large survives
    assert remove_small_components(gt, 48).sum() == 48 and remove_small_components(gt, 49).sum() == 0
    with pytest.raises(ValueError, match="min_size"):
        remove_small_components(gt, -1)


def test_error_breakdown_separates_false_objects_from_boundaries():
    shape = (6, 40, 40)
    gt = _cubes(shape, [np.s_[:, 0:10, 0:10], np.s_[:, 20:30, 20:30]])
    pred = _cubes(shape, [np.s_[:, 0:10, 0:12],  # one object 2 columns too wide: 120 boundary FP
                          np.s_[1:4, 30:36, 0:5],  # a false object of 90 voxels
                          np.s_[5:6, 0:2, 30:32]])  # and one of 4
    e = error_breakdown(pred, gt)  # the second GT object (600 voxels) is missed entirely
    assert e["tp"] == 600 and e["fp"] == 120 + 90 + 4 and e["fp_false_objects"] == 94
    assert e["fn"] == 600 and e["fn_missed_objects"] == 600
    assert e["largest_false_object"] == {"voxels": 90, "box": [[1, 4], [30, 36], [0, 5]]}
    assert error_breakdown(gt, gt) == {"tp": 1200, "fp": 0, "fp_false_objects": 0, "fn": 0, "fn_missed_objects": 0,
                                       "largest_false_object": None}
    assert evaluate(pred, gt)["errors"] == e


def test_instance_ap_on_ids_counts_the_ids_not_the_mask_components():
    """Automatic mode's output is instances: two objects its ids keep apart are two even where
    their voxels touch (the mask's components merge them), one id across a gap is one object."""
    from spatialsam.metrics import instance_ap_ids

    gt = np.zeros((10, 20, 30), bool)
    gt[2:8, 5:15, 2:13] = True
    gt[2:8, 5:15, 14:25] = True  # a one-voxel gap at x = 13: two true objects
    ids = np.zeros(gt.shape, np.uint64)
    ids[2:8, 5:15, 2:14] = 7  # each id reaches into the gap, so the mask is one component
    ids[2:8, 5:15, 14:25] = 2**40
    ids[0, 0, 0] = 3  # a one-voxel id, dropped by min_size
    assert instance_ap(ids > 0, gt)["ap50"] == 0.0  # one merged component against two objects
    got = instance_ap_ids(ids, gt, min_size=2)
    assert got == {"n_pred_ids": 2, "ap50_ids": 1.0, "ap75_ids": 1.0}
    assert instance_ap_ids(ids, gt)["ap50_ids"] == 2 / 3  # without min_size the speck is a false object
    # One id split by an empty slice: two components of the mask, one object of the ids.
    one = np.zeros(gt.shape, bool)
    one[1:9, 5:15, 5:20] = True
    split = one.astype(np.int32) * 5
    split[4] = 0
    comps = instance_ap(split > 0, one)  # the larger piece (4 of 8 slices) matches at 0.5, a false object beside it
    assert (comps["ap50"], comps["ap75"], comps["n_pred"]) == (0.5, 0.0, 2)
    assert instance_ap_ids(split, one)["ap50_ids"] == 1.0 and instance_ap_ids(split, one)["ap75_ids"] == 1.0
    with pytest.raises(ValueError, match="pred_ids: shape"):
        instance_ap_ids(ids[:5], gt)
    with pytest.raises(ValueError, match="pred_ids: expected integer"):
        instance_ap_ids(ids.astype(np.float32), gt)
