"""Where the budget benchmark's final U-Nets differ: the test volume's myelinated axon, and the train volume.

Most 3D U-Nets of the budget benchmark put their largest false object on one structure of the test
volume: a myelinated axon, a dark ring running through test z 0-118 at y 20-190, x 815-975. This
script says, from the images alone, that the train volume holds nothing like it (so no label on the
train volume, sparse, pseudo or more steps of either, can teach a network that it is background), and
scores run folders where that structure is not:

1. The darkest 3D structures of both volumes, on one threshold: voxels whose 9 x 9 in-plane mean
   intensity lies under the ``--percentile`` of both volumes pooled, 3D 6-connected components, the
   three largest per volume (voxels, z/y/x box, share of true mitochondrion voxels in them).
2. A fixed elliptic cylinder round the axon, derived from the test image alone: the median centre
   and median half extents of the darkest test component's cross-sections on z 0-90 (where its
   sheath is darkest), plus ``--pad`` pixels, through every z; the true voxels inside are counted.
3. ``--volume test``: each run folder given (``eval --run`` semantics: a train-unet folder's best.pt,
   an adapt folder's last finished round's U-Net, or ``--round N``'s) predicted on the whole test volume and scored on it whole and
   outside the cylinder (prediction and truth both cut to the outside): fg-IoU, AP@0.5 (components
   under ``--min-size`` dropped on both sides, as the benchmark), false voxels inside.
   A folder holding model.json (an exported U-Net such as the shipped (d), models/sdf_unet3d_lucchi)
   runs through onnxruntime block by block as the server runs it.
   With ``--auto``, an adapt folder's last propagator is scored the same way in automatic mode, filled
   as the server writes it (what the memory kind changes; ``eval --auto``'s "fill" row).
   ``--volume train``: the same runs on the volume their annotated slices came from, which is what
   ``adapt`` delivers on a user's own volume: fg-IoU off the annotated slices (the run's run.json
   names them) and AP@0.5 of the whole volume.

    cd models && SPATIALSAM_DATA=../../shared/data .venv/bin/python bench/final_unets.py \\
        --volume test --runs W/a_1_16 W/c_1_16 W/b_eq_1_16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from spatialsam.data import load_lucchi
from spatialsam.device import machine
from spatialsam.metrics import foreground_iou, instance_ap, remove_small_components

SMOOTH_PX = 9
FIT_Z = (0, 91)
MIN_SECTION_PX = 500  # cross-sections smaller than this (the sheath leaving the threshold) are not fitted


def smoothed(image: np.ndarray) -> np.ndarray:
    """In-plane mean intensity over SMOOTH_PX x SMOOTH_PX, float32 [Z, Y, X]."""
    return ndimage.uniform_filter(image.astype(np.float32), (1, SMOOTH_PX, SMOOTH_PX))


def pooled_threshold(smooth: list[np.ndarray], percentile: float) -> float:
    """The ``percentile`` of the smoothed intensities of all volumes together (every 7th voxel)."""
    if not 0 < percentile < 100:
        raise ValueError(f"percentile: must be in (0, 100), got {percentile}")
    return float(np.percentile(np.concatenate([s.ravel()[::7] for s in smooth]), percentile))


def darkest_components(smooth: np.ndarray, threshold: float, truth: np.ndarray | None = None, k: int = 3
                       ) -> tuple[np.ndarray, list[dict]]:
    """(labels of the dark 3D components, the ``k`` largest as {"voxels", "box" [[z0, z1], [y0, y1],
    [x0, x1]], "truth_share"}), largest first."""
    lab, _ = ndimage.label(smooth < threshold)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    boxes = ndimage.find_objects(lab)
    out = []
    for i in np.argsort(sizes)[::-1][:k]:
        if sizes[i] == 0:
            break
        box = boxes[i - 1]
        m = lab[box] == i
        share = float((truth[box] & m).sum() / m.sum()) if truth is not None else None
        out.append({"label": int(i), "voxels": int(sizes[i]), "box": [[s.start, s.stop] for s in box],
                    "truth_share": share})
    return lab, out


def axon_cylinder(component: np.ndarray, pad: float, fit_z: tuple[int, int] = FIT_Z) -> tuple[np.ndarray, dict]:
    """(bool [Y, X] ellipse, {"centre_yx", "radii_yx", "slices"}): median centre and half extents of
    ``component``'s (bool [Z, Y, X]) cross-sections on slices ``fit_z``, radii grown by ``pad``."""
    if pad < 0:
        raise ValueError(f"pad: must be >= 0, got {pad}")
    centres, halves = [], []
    for z in range(*fit_z):
        if z >= component.shape[0]:
            break
        ys, xs = np.nonzero(component[z])
        if len(ys) < MIN_SECTION_PX:
            continue
        centres.append(((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2))
        halves.append(((ys.max() - ys.min()) / 2, (xs.max() - xs.min()) / 2))
    if not centres:
        raise ValueError(f"component: no cross-section of at least {MIN_SECTION_PX} px on slices {fit_z}")
    (cy, cx), (ry, rx) = np.median(centres, 0), np.median(halves, 0) + pad
    yy, xx = np.ogrid[: component.shape[1], : component.shape[2]]
    ellipse = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return ellipse, {"centre_yx": [float(cy), float(cx)], "radii_yx": [float(ry), float(rx)], "slices": len(centres)}


def _ap50(pred: np.ndarray, truth: np.ndarray, min_size: int) -> float:
    """AP@0.5 after dropping components under ``min_size`` on both sides, as the benchmark scores it."""
    return instance_ap(remove_small_components(pred, min_size), remove_small_components(truth, min_size))["ap50"]


def score_outside(pred: np.ndarray, truth: np.ndarray, ellipse: np.ndarray, min_size: int) -> dict:
    """fg-IoU and AP@0.5 on the whole volume and outside the cylinder ``ellipse`` (bool [Y, X], every z),
    and the prediction's false voxels inside it."""
    out = ~ellipse[None]
    po, to = pred & out, truth & out
    return {"fg_iou": foreground_iou(pred, truth), "fg_iou_outside": foreground_iou(po, to),
            "ap50": _ap50(pred, truth, min_size), "ap50_outside": _ap50(po, to, min_size),
            "false_voxels_inside": int((pred & ~truth)[:, ellipse].sum())}


def predict_run(run: Path, image: np.ndarray, threads: int, round_index: int | None = None) -> np.ndarray:
    """The SDF [Z, Y, X] of ``run`` on ``image``: a train-unet or adapt folder as ``eval --run [--round]``
    predicts it (an adapt folder's round ``round_index``, default its last finished), or an exported model folder (model.json; e.g. the shipped (d), models/sdf_unet3d_lucchi) run
    through onnxruntime block by block as the server runs it (bench/unet_blocks.py)."""
    if (run / "model.json").is_file():
        from unet_blocks import normalised_input, onnx_runner, run_blocks, server_block_shape  # this folder's script

        man, fn = onnx_runner(run, threads)
        return run_blocks(fn, normalised_input(man, image), server_block_shape(man), tuple(man["context_zyx"]))
    from spatialsam.cli import eval_weights
    from spatialsam.train_unet import load_unet, predict

    weights, mean, std = eval_weights(run, round_index)
    return predict(load_unet(weights), image, mean, std)[0]


def automatic_mode_filled(run: Path, image: np.ndarray, sdf: np.ndarray, round_index: int | None = None
                          ) -> np.ndarray | None:
    """An adapt folder's propagator of round ``round_index`` (default: the last finished) in automatic mode on ``image`` with ``sdf`` as seeds and memory,
    the SDF's unclaimed foreground filled as the server writes it (``eval --auto``'s "fill" row), as a
    bool mask; None for any other folder (no propagator)."""
    from spatialsam.cli import adapt_round
    from spatialsam.dualtrack import segment_with_round
    from spatialsam.predictor import fill_from_sdf

    r = adapt_round(run, round_index)
    if r is None:
        return None
    inst = segment_with_round(run, run / f"round_{r}" / "propagator" / "propagator_last.pt", image, sdf)
    return fill_from_sdf(inst, sdf) > 0


def annotated_slices(run: Path) -> list[int]:
    """The annotated slices a benchmark or adapt folder trained from (its run.json)."""
    f = run / "run.json"
    if not f.is_file():
        raise ValueError(f"--runs: {f} not found (the run's annotated slices are read there)")
    slices = json.loads(f.read_text()).get("annotated_slices")
    if not isinstance(slices, list) or not all(isinstance(z, int) for z in slices):
        raise ValueError(f"--runs: {f} names no annotated_slices list (fully supervised runs have none to leave out)")
    return slices


def score_off_slices(pred: np.ndarray, truth: np.ndarray, slices: list[int], min_size: int) -> dict:
    """fg-IoU on the slices not in ``slices`` and AP@0.5 of the whole volume."""
    keep = np.ones(pred.shape[0], bool)
    keep[slices] = False
    return {"fg_iou_off": foreground_iou(pred[keep], truth[keep]), "ap50": _ap50(pred, truth, min_size)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="*", default=[], help="run folders to score (eval --run semantics)")
    p.add_argument("--volume", choices=("test", "train"), default="test", help="where to score the runs")
    p.add_argument("--auto", action="store_true",
                   help="--volume test: also score each adapt folder's last propagator in automatic mode, filled "
                        "as the server writes it (eval --auto's fill row)")
    p.add_argument("--round", type=int, default=None,
                   help="score this finished round of every run (adapt folders only; default: each one's last)")
    p.add_argument("--percentile", type=float, default=1.0)
    p.add_argument("--pad", type=float, default=8.0)
    p.add_argument("--min-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=None, help="data root (default: $SPATIALSAM_DATA or ../shared/data)")
    a = p.parse_args(argv)
    if a.min_size < 0:
        p.error("--min-size: must be >= 0")
    if a.threads < 1:
        p.error("--threads: must be >= 1")
    if a.auto and a.volume != "test":
        p.error("--auto: only with --volume test")
    runs = [Path(r) for r in a.runs]
    for r in runs:
        if not r.is_dir():
            p.error(f"--runs: {r} is not a folder")
    try:  # a train-volume score leaves out the run's annotated slices: read them all before any work
        slices_of = {r: annotated_slices(r) for r in runs} if a.volume == "train" else {}
        if a.round is not None:  # every run must hold the round asked for, before any work
            from spatialsam.cli import adapt_round

            for r in runs:
                adapt_round(r, a.round)
    except ValueError as e:
        p.error(str(e))
    vols = {split: load_lucchi(split, a.data) for split in ("train", "test")}
    smooth = {split: smoothed(v.image) for split, v in vols.items()}
    thr = pooled_threshold(list(smooth.values()), a.percentile)
    print(f"machine: {machine()}")
    print(f"dark: 9x9 mean intensity < {thr:.1f} (percentile {a.percentile} of both volumes)\n")
    print("| volume | darkest 3D structures: voxels, z / y / x box, share of true mitochondrion voxels |\n|---|---|")
    for split, sm in smooth.items():
        lab, comps = darkest_components(sm, thr, vols[split].mask)
        cells = "; ".join(f"{c['voxels']}, {'/'.join(f'{b0}-{b1}' for b0, b1 in c['box'])}, {c['truth_share']:.2f}"
                          for c in comps)
        print(f"| {split} | {cells} |")
        if split == "test":
            axon = lab == comps[0]["label"]
        del lab
    del smooth
    ellipse, fit = axon_cylinder(axon, a.pad)
    truth = vols["test"].mask
    inside = truth[:, ellipse]
    zs = np.flatnonzero(inside.any(1))
    print(f"\ncylinder round the darkest test structure: {json.dumps(fit)}; {int(ellipse.sum())} px per slice; "
          f"true voxels inside {int(inside.sum())} of {int(truth.sum())}"
          + (f" (z {zs[0]}-{zs[-1]})" if len(zs) else ""))
    if not runs:
        return 0
    torch.set_num_threads(a.threads)
    if a.volume == "test":
        print("\n| run (test volume) | fg-IoU | fg-IoU outside | AP@0.5 | AP@0.5 outside | false voxels inside |\n"
              "|---|---|---|---|---|---|")
    else:
        print("\n| run (train volume) | annotated slices | fg-IoU off them | AP@0.5 |\n|---|---|---|---|")
    vol = vols[a.volume]
    for r in runs:
        name = str(r) + ("" if a.round is None else f" round {a.round}")
        sdf = predict_run(r, vol.image, a.threads, a.round)
        pred = sdf > 0
        if a.volume == "test":
            rows = [(name, pred)]
            if a.auto and (auto := automatic_mode_filled(r, vol.image, sdf, a.round)) is not None:
                rows.append((f"{name}, its propagator: automatic mode filled", auto))
            for name, mask in rows:
                s = score_outside(mask, truth, ellipse, a.min_size)
                print(f"| {name} | {s['fg_iou']:.3f} | {s['fg_iou_outside']:.3f} | {s['ap50']:.3f} | "
                      f"{s['ap50_outside']:.3f} | {s['false_voxels_inside']} |", flush=True)
        else:
            s = score_off_slices(pred, vol.mask, slices_of[r], a.min_size)
            print(f"| {name} | {len(slices_of[r])} | {s['fg_iou_off']:.3f} | {s['ap50']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
