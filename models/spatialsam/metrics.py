"""Segmentation metrics for [Z, Y, X] volumes: foreground IoU and Dice, 3D instance AP on
connected components, and z-flicker of matched objects.

Instances: neither Lucchi++ nor the U-Nets give instance ids, so both ground truth and prediction
are split into 3D connected components (``scipy.ndimage.label``, 6-connectivity: faces only).
Touching mitochondria merge, on both sides alike.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred), np.asarray(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred: shape {p.shape} does not match gt shape {g.shape}")
    if p.size == 0:
        raise ValueError("pred: empty array")
    return p.astype(bool, copy=False), g.astype(bool, copy=False)


def foreground_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Jaccard |P & G| / |P | G| of two masks (1.0 when both are empty)."""
    p, g = _pair(pred, gt)
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else np.count_nonzero(p & g) / union


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice 2 |P & G| / (|P| + |G|) (1.0 when both are empty)."""
    p, g = _pair(pred, gt)
    total = np.count_nonzero(p) + np.count_nonzero(g)
    return 1.0 if total == 0 else 2 * np.count_nonzero(p & g) / total


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """3D 6-connected components: (labels int32 [Z, Y, X], count)."""
    labels, n = ndimage.label(np.asarray(mask, bool))
    return labels.astype(np.int32, copy=False), int(n)


def _iou_matrix(gt_lab: np.ndarray, n_gt: int, pred_lab: np.ndarray, n_pred: int) -> np.ndarray:
    """IoU of every (gt, pred) component pair, float64 [n_gt, n_pred]."""
    sel = (gt_lab > 0) | (pred_lab > 0)
    g, p = gt_lab[sel].astype(np.int64), pred_lab[sel].astype(np.int64)
    inter = np.bincount(g * (n_pred + 1) + p, minlength=(n_gt + 1) * (n_pred + 1)).reshape(n_gt + 1, n_pred + 1)
    size_g = np.bincount(gt_lab.ravel(), minlength=n_gt + 1)[1:]
    size_p = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)[1:]
    i = inter[1:, 1:].astype(np.float64)
    union = size_g[:, None] + size_p[None, :] - i
    return np.divide(i, union, out=np.zeros_like(i), where=union > 0)


def match_instances(iou: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by descending IoU, pairs with IoU >= threshold: [(gt, pred, iou)]
    with 0-based component indices. For threshold >= 0.5 the matching is unique anyway."""
    pairs = np.argwhere(iou >= threshold)
    order = np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable") if len(pairs) else []
    used_g, used_p, out = set(), set(), []
    for k in order:
        gi, pi = (int(v) for v in pairs[k])
        if gi not in used_g and pi not in used_p:
            used_g.add(gi)
            used_p.add(pi)
            out.append((gi, pi, float(iou[gi, pi])))
    return out


def instance_ap(pred: np.ndarray, gt: np.ndarray, thresholds: tuple[float, ...] = (0.5, 0.75)) -> dict[str, float]:
    """Instance "average precision" at IoU thresholds on 3D connected components, in the sense of
    the DSB 2018 / StarDist score (predictions carry no confidence to rank): AP@t = TP / (TP + FP + FN)
    with TP the one-to-one matches of IoU >= t. Returns {"ap50": ..., "ap75": ..., "n_gt", "n_pred"}
    (keys "ap{int(100 t)}"); 1.0 when both sides have no objects."""
    p, g = _pair(pred, gt)
    pl, n_p = connected_components(p)
    gl, n_g = connected_components(g)
    return {"n_gt": n_g, "n_pred": n_p, **_ap_at(_iou_matrix(gl, n_g, pl, n_p), thresholds)}


def _ap_at(iou: np.ndarray, thresholds: tuple[float, ...], suffix: str = "") -> dict[str, float]:
    """TP / (TP + FP + FN) at each threshold for an [n_gt, n_pred] IoU matrix, keyed "ap{100 t}{suffix}"."""
    n_g, n_p = iou.shape
    out: dict[str, float] = {}
    for t in thresholds:
        tp = len(match_instances(iou, t))
        denom = n_p + n_g - tp
        out[f"ap{round(100 * t)}{suffix}"] = 1.0 if denom == 0 else tp / denom
    return out


def instance_ap_ids(pred_ids: np.ndarray, gt: np.ndarray, min_size: int = 0,
                    thresholds: tuple[float, ...] = (0.5, 0.75)) -> dict[str, float]:
    """``instance_ap`` with the prediction's own instance ids as its instances (automatic mode's
    uint64 output), not the connected components of its mask: an id is one object whatever its
    connectivity, so two touching objects the ids keep apart count as two (their mask's components
    would merge them) and one id with a gap stays one. Ids of fewer than ``min_size`` voxels are
    dropped; the ground truth is its 3D components less those under ``min_size``, as ``evaluate``
    has them. Returns {"ap50_ids", "ap75_ids", "n_pred_ids"} (0 is background)."""
    ids = np.asarray(pred_ids)
    if ids.shape != np.shape(gt):
        raise ValueError(f"pred_ids: shape {ids.shape} differs from gt's {np.shape(gt)}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"pred_ids: expected integer instance ids, got {ids.dtype}")
    values, inverse, counts = np.unique(ids.ravel(), return_inverse=True, return_counts=True)
    keep = (values != 0) & (counts >= max(min_size, 1))
    new_id = np.zeros(len(values), np.int64)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1)
    pl = new_id[inverse].reshape(ids.shape)
    n_p = int(keep.sum())
    gl, n_g = connected_components(remove_small_components(gt, min_size))
    return {"n_pred_ids": n_p, **_ap_at(_iou_matrix(gl, n_g, pl, n_p), thresholds, "_ids")}


def evaluate_instances(inst: np.ndarray, gt: np.ndarray, min_size: int = 0) -> dict[str, float]:
    """``evaluate`` of an instance volume's mask (AP on its components, as every benchmark row) plus
    ``instance_ap_ids`` on its own ids (what automatic mode delivers)."""
    return evaluate(np.asarray(inst) > 0, gt, min_size) | instance_ap_ids(inst, gt, min_size)


def _matched_coverage(pred: np.ndarray, gt: np.ndarray, match_iou: float, cover: float):
    """Per GT component matched as ``flicker`` matches them: (0-based index, its bounding box,
    float [z] share of its cross-section the prediction covers (nan where it has none), bool [z]
    covered), z local to the box."""
    p, g = _pair(pred, gt)
    pl, n_p = connected_components(p)
    gl, n_g = connected_components(g)
    sel = gl > 0
    inter = np.bincount(gl[sel].astype(np.int64) * (n_p + 1) + pl[sel], minlength=(n_g + 1) * (n_p + 1))
    inter = inter.reshape(n_g + 1, n_p + 1)[1:, 1:]
    size_g = np.bincount(gl.ravel(), minlength=n_g + 1)[1:]
    size_p = np.bincount(pl.ravel(), minlength=n_p + 1)[1:]
    boxes = ndimage.find_objects(gl)
    for gi in range(n_g):
        touching = inter[gi] > 0
        i = inter[gi, touching].sum()
        if i == 0 or i / (size_g[gi] + size_p[touching].sum() - i) < match_iou:
            continue
        box = boxes[gi]
        obj = gl[box] == gi + 1
        covered_px = np.count_nonzero(obj & p[box], axis=(1, 2))
        area = np.count_nonzero(obj, axis=(1, 2))
        share = np.where(area > 0, covered_px / np.maximum(area, 1), np.nan)
        yield gi, box, share, (area > 0) & (covered_px >= cover * np.maximum(area, 1))


def _gaps(covered: np.ndarray, share: np.ndarray) -> np.ndarray:
    """Box-local z of the flicker slices: with a cross-section, uncovered, between covered slices."""
    zs = np.flatnonzero(covered)
    if len(zs) < 2:
        return zs[:0]
    inner = np.arange(zs[0], zs[-1] + 1)
    return inner[~np.isnan(share[inner]) & ~covered[inner]]


def flicker(pred: np.ndarray, gt: np.ndarray, match_iou: float = 0.5, cover: float = 0.5) -> dict[str, int]:
    """z-consistency of predictions for ground-truth objects matched at IoU >= ``match_iou``.

    A GT component is matched when its IoU with the union of the predicted components touching it
    is >= ``match_iou`` (a union, so that a prediction split in z by the very gaps being counted
    still matches). For each matched object, a slice z where it has a cross-section is *covered*
    when the predicted foreground covers at least ``cover`` of that cross-section; a flicker slice
    is an uncovered slice with covered slices of the same object both before and after it.
    Returns {"flicker_slices": total over objects, "flicker_objects": objects with >= 1 flicker
    slice, "matched": matched objects}.
    """
    total, objects, matched = 0, 0, 0
    for _, _, share, covered in _matched_coverage(pred, gt, match_iou, cover):
        matched += 1
        n = len(_gaps(covered, share))
        total += n
        objects += n > 0
    return {"flicker_slices": total, "flicker_objects": int(objects), "matched": matched}


def flicker_gaps(pred: np.ndarray, gt: np.ndarray, match_iou: float = 0.5, cover: float = 0.5) -> list[dict]:
    """Where ``flicker`` counts its slices: per matched GT object with at least one flicker slice,
    {"object": its 1-based component number (``connected_components`` order), "box": [z0, z1, y0,
    y1, x0, x1] (stop exclusive), "slices": the flicker slices (volume z), "cover": the share of
    the object's cross-section the prediction covers on each of them}."""
    out = []
    for gi, box, share, covered in _matched_coverage(pred, gt, match_iou, cover):
        gaps = _gaps(covered, share)
        if len(gaps):
            z0 = box[0].start
            out.append({"object": gi + 1, "box": [v for sl in box for v in (sl.start, sl.stop)],
                        "slices": [int(z0 + z) for z in gaps], "cover": [round(float(share[z]), 4) for z in gaps]})
    return out


def error_breakdown(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Where a mask's voxel errors are, for reading a fg-IoU: {"tp": true-positive voxels, "fp": false-positive voxels,
    "fp_false_objects": of them, those in predicted 3D components that touch no ground-truth voxel
    (objects that are not there at all, as opposed to boundaries drawn too wide), "fn": false
    negatives, "fn_missed_objects": of them, those in ground-truth components no predicted voxel
    touches, "largest_false_object": {"voxels", "box": [[z0, z1], [y0, y1], [x0, x1]]} or None}."""
    p, g = _pair(pred, gt)
    pl, n_p = connected_components(p)
    gl, n_g = connected_components(g)
    both = p & g
    real_p = np.zeros(n_p + 1, bool)
    real_p[np.unique(pl[both])] = True
    real_g = np.zeros(n_g + 1, bool)
    real_g[np.unique(gl[both])] = True
    real_p[0] = real_g[0] = True
    false_obj = ~real_p[pl]
    sizes = np.bincount(pl[false_obj], minlength=n_p + 1)
    largest = None
    if sizes.any():
        k = int(np.argmax(sizes))
        box = ndimage.find_objects(pl, max_label=k)[k - 1]
        largest = {"voxels": int(sizes[k]), "box": [[int(b.start), int(b.stop)] for b in box]}
    return {
        "tp": int(np.count_nonzero(both)),
        "fp": int(np.count_nonzero(p & ~g)),
        "fp_false_objects": int(np.count_nonzero(false_obj)),
        "fn": int(np.count_nonzero(g & ~p)),
        "fn_missed_objects": int(np.count_nonzero(~real_g[gl])),
        "largest_false_object": largest,
    }


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its 6-connected 3D components of fewer than ``min_size`` voxels."""
    if min_size < 0:
        raise ValueError(f"min_size: must be >= 0, got {min_size}")
    m = np.asarray(mask, bool)
    if min_size <= 1:
        return m
    lab, n = connected_components(m)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[lab]


def evaluate(pred: np.ndarray, gt: np.ndarray, min_size: int = 0) -> dict[str, float]:
    """All benchmark metrics for a predicted and a ground-truth mask, [Z, Y, X].

    ``min_size``: components smaller than this (voxels) are dropped from both sides before the
    instance metrics (AP, flicker): a voxel-wise prediction leaves specks that would each count as
    a false-positive instance, and Lucchi++'s labels hold a few one-voxel specks that no method
    could match. Foreground IoU and Dice are on the raw masks (``fg_iou``, ``dice``); the
    prediction's filtered mask is scored too (``fg_iou_filtered``, against the raw ground truth).
    ``errors``: ``error_breakdown`` of the raw masks."""
    raw = np.asarray(pred, bool)
    filtered = remove_small_components(raw, min_size)
    gt_f = remove_small_components(gt, min_size)
    ap = instance_ap(filtered, gt_f)
    fl = flicker(filtered, gt_f)
    return {
        "min_size": int(min_size),
        "fg_iou_filtered": foreground_iou(filtered, gt),
        "fg_iou": foreground_iou(raw, gt),
        "dice": dice(raw, gt),
        "ap50": ap["ap50"],
        "ap75": ap["ap75"],
        "n_gt": ap["n_gt"],
        "n_pred": ap["n_pred"],
        **fl,
        "errors": error_breakdown(raw, gt),
    }
