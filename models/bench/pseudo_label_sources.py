"""What each track puts into a dual-track round's pseudo-labels, scored against the training volume's true labels.

The loop's pseudo mask is the U-Net's mask (P_u > 0.5) without the 3D components that no propagated
object reaches (``dualtrack.fuse_pseudo_labels``): the mask track decides which objects are real, the
U-Net draws every boundary. This takes one finished round of a dual-track folder (``adapt`` or the
benchmark's a_1_64 / c_1_64), recomputes the round's two maps on the Lucchi++ train volume (or the
``--box`` of it that the run trained on: the benchmark's ``--quick`` runs train on
``0:32,256:448,256:448``), reads the round's pseudo mask (``round_<r>/pseudo.npz``, what the next
round's SDF track learns from) and prints three tables:

- per distance from the nearest annotated slice: fg-IoU, precision and recall of the U-Net's mask,
  the propagated masks (``P_p > 0.5``), the pseudo mask, and the nearest annotated slice's true mask
  copied unchanged (what a mask track that only carried the annotation along z would give);
- what the mask track changed off the annotated slices: voxels of the U-Net's mask the fusion
  removed (and how many of them are truly background) or added, against the U-Net's own false
  positives and false negatives there;
- other fusion rules on the same two maps (``rules``), scored on the whole volume as the loop's
  per-round metrics score the pseudo-labels (annotated slices set to their labels).

    models/.venv/bin/python models/bench/pseudo_label_sources.py --run runs/bench/a_1_64 --round 0 --data-root ../shared/data

The true labels are read for scoring only, as the loop's own per-round metrics do. --cache DIR keeps
the two maps as .npy there and reuses them (for a box of the same shape).

--truth-steps N adds one row that the loop can never have: a mask track of the run's kind (its memory,
crop, run length, seed; from scratch, or from the pretrained propagator its config.json declares, as
its round 0 started) trained for N steps on the true labels of every slice of the
volume (weight 1), with the round's U-Net SDF as memory, then propagated from the annotated slices as
the round's was. It asks whether perfect labels would make the mask track a better source of
boundaries than the U-Net it reads (an oracle for this question only; with --cache its masks are
kept there too, as ``p_truth_<N>.npy`` (``p_truth_<N>_pretrained.npy``), and the SDF as ``sdf.npy``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.special import expit

from spatialsam.atomic_files import write_text
from spatialsam.cli import adapt_round, parse_box, round_weights
from spatialsam.data import load_lucchi
from spatialsam.dualtrack import fuse_pseudo_labels, mask_track_crop
from spatialsam.metrics import error_breakdown
from spatialsam.predictor import propagate_volume
from spatialsam.propagator import build_propagator, load_propagator_config
from spatialsam.train_propagator import TrainConfig as MaskTrainConfig
from spatialsam.train_propagator import load_checkpoint, train_mask_track
from spatialsam.train_unet import load_unet, predict

# Distance bins (slices from the nearest annotated slice), lower bound inclusive, upper exclusive.
BINS = ((1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 10**9))


def maps(run: Path, r: int, image: np.ndarray, slices: list[int], annotated: np.ndarray, crop: int,
         cache: Path | None, keep_sdf: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(P_u, P_p, SDF or None): round r's U-Net foreground probability, its propagator's propagated masks
    from the annotated slices (max over objects), float32 [Z, Y, X], as ``run_dualtrack`` makes them,
    and the U-Net's normalised SDF when ``keep_sdf`` (cached as sdf.npy beside the two maps)."""
    names = ("p_u", "p_p", "sdf") if keep_sdf else ("p_u", "p_p")
    if cache is not None and all((cache / f"{n}.npy").exists() for n in names):
        got = [np.load(cache / f"{n}.npy") for n in names]
        if all(g.shape == image.shape for g in got):
            return got[0], got[1], got[2] if keep_sdf else None
    weights, mean, std = round_weights(run, r)
    sdf, logit = predict(load_unet(weights), image, mean, std)
    p_u = expit(logit).astype(np.float32)
    prop, _ = load_checkpoint(run / f"round_{r}" / "propagator" / "propagator_last.pt")
    prop.eval()
    with torch.no_grad():
        p_p = propagate_volume(prop, image, sdf, slices, annotated, crop=crop)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for n, m in zip(names, (p_u, p_p, sdf)):
            np.save(cache / f"{n}.npy", m)
    return p_u, p_p, sdf if keep_sdf else None


def pretrained_propagator(cfg: dict) -> Path | None:
    """The propagator checkpoint a run's config.json declares it started from (adapt
    --pretrained-propagator), checked against the sha256 it recorded; None if it declares none."""
    from spatialsam.atomic_files import sha256_file

    pre = (cfg.get("pretrained") or {}).get("propagator")
    if not pre:
        return None
    path = Path(pre["path"])
    if not path.is_file() or sha256_file(path) != pre["sha256"]:
        raise SystemExit(f"--truth-steps: the run started from the pretrained propagator {path}, which is "
                         f"{'not there' if not path.is_file() else 'no longer the file it recorded (sha256 differs)'}")
    return path


def truth_trained(cfg: dict, image: np.ndarray, sdf: np.ndarray, truth: np.ndarray, slices: list[int],
                  annotated: np.ndarray, crop: int, steps: int, cache: Path | None, pre: Path | None) -> np.ndarray:
    """Propagated masks (float32 [Z, Y, X]) of a mask track of the run's kind trained for ``steps`` steps
    on ``truth`` everywhere (weight 1), with ``sdf`` as memory (see --truth-steps): from scratch, or from
    ``pre`` (``pretrained_propagator(cfg)``), as the run's round 0 started."""
    name = f"p_truth_{steps}{'_pretrained' if pre else ''}.npy"
    if cache is not None and (cache / name).exists():
        p = np.load(cache / name)
        if p.shape == image.shape:
            return p
    if pre:
        prop, _ = load_checkpoint(pre)
    else:
        prop = build_propagator(load_propagator_config(cfg["propagator"], memory=cfg["propagator_memory"],
                                                       seed=int(cfg["seed"])))
    mcfg = MaskTrainConfig(steps=steps, batch_size=int(cfg["mask_batch_size"]), crop=crop,
                           run_length=int(cfg["mask_run_length"]), seed=int(cfg["seed"]) * 1000)
    train_mask_track(prop, image, sdf, truth.astype(np.uint8), np.ones(truth.shape, np.float32), mcfg)
    prop.eval()
    with torch.no_grad():
        p = propagate_volume(prop, image, sdf, slices, annotated, crop=crop)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cache / name, p)
    return p


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """fg-IoU, precision, recall of bool masks (None where undefined)."""
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    return {"iou": tp / (tp + fp + fn) if tp + fp + fn else None, "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None}


def nearest_annotated(n: int, slices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(distance to the nearest annotated slice, that slice) for every z in 0..n-1 (ties: the lower)."""
    s = np.asarray(sorted(slices))
    d = np.abs(np.arange(n)[:, None] - s[None])
    return d.min(axis=1), s[d.argmin(axis=1)]


def rules(p_u: np.ndarray, p_p: np.ndarray, annotated: np.ndarray, slices: list[int]) -> dict[str, np.ndarray]:
    """Pseudo masks by other rules than the loop's, from the same two maps (annotated slices keep their
    labels in each): the loop's (``fuse_pseudo_labels``), the U-Net's 3D components kept only where at least
    a share of their voxels is propagated, the U-Net's 2D components kept per slice where a propagated
    mask touches them, and the mean of both probabilities above 0.5."""
    unet, prop = p_u > 0.5, p_p > 0.5
    comps, n = ndimage.label(unet)
    size = np.bincount(comps.ravel(), minlength=n + 1)
    covered = np.bincount(comps[prop], minlength=n + 1)
    out = {"the loop's (a component any propagated voxel reaches)": fuse_pseudo_labels(p_u, p_p, annotated, slices)[0]}
    for share in (0.1, 0.3):
        keep = covered >= np.maximum(1, share * size)
        keep[0] = False
        out[f"components at least {share:.0%} propagated"] = keep[comps]
    per_slice = np.zeros_like(unet)
    for z in range(unet.shape[0]):
        c2, n2 = ndimage.label(unet[z])
        keep = np.zeros(n2 + 1, bool)
        keep[np.unique(c2[prop[z]])] = True
        keep[0] = False
        per_slice[z] = keep[c2]
    out["2D components a propagated mask touches, per slice"] = per_slice
    out["mean of both probabilities > 0.5"] = (p_u + p_p) / 2 > 0.5
    for m in out.values():
        m[slices] = annotated[slices] > 0
    return out


def _cell(s: dict) -> str:
    if s["iou"] is None:
        return "-"
    prec = "-" if s["precision"] is None else f"{s['precision']:.2f}"
    return f"{s['iou']:.3f} ({prec} / {s['recall']:.2f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a dual-track folder (adapt, or the benchmark's a_1_64 / c_1_64)")
    p.add_argument("--round", type=int, default=None, help="the round to look at (default: the last finished)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--box", default=None, help="z0:z1,y0:y1,x0:x1 of the train volume the run trained on (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the tables as JSON here")
    p.add_argument("--truth-steps", type=int, default=None,
                   help="also train a mask track this many steps on the true labels (an oracle row; see above)")
    a = p.parse_args(argv)
    if a.truth_steps is not None and a.truth_steps < 1:
        raise SystemExit(f"--truth-steps: must be at least 1, got {a.truth_steps}")
    run = Path(a.run)
    try:
        r = adapt_round(run, a.round)
        box = parse_box(a.box)
    except ValueError as e:
        raise SystemExit(str(e) if str(e).startswith("--") else f"--{e}") from None
    if r is None:
        raise SystemExit(f"--run: {run} is not a dual-track folder (no state.json)")
    cfg = json.loads((run / "config.json").read_text())
    # Checked (sha256 of the file) once, before anything is computed.
    pre = pretrained_propagator(cfg) if a.truth_steps is not None else None
    slices = [int(z) for z in cfg["annotated_slices"]]
    vol = load_lucchi("train", a.data_root)
    image, truth = np.ascontiguousarray(vol.image[box]), vol.mask[box] > 0
    with np.load(run / f"round_{r}" / "pseudo.npz") as f:
        pseudo = f["mask"]
    if pseudo.shape != image.shape:
        raise SystemExit(f"--box: the run's pseudo-labels are {pseudo.shape}, the box {a.box or 'all'} is {image.shape}; "
                         "give the box the run trained on")
    torch.set_num_threads(a.threads)
    annotated = np.zeros(image.shape, np.uint8)
    annotated[slices] = truth[slices]
    crop = mask_track_crop(int(cfg["mask_crop"]), image.shape)
    p_u, p_p, sdf = maps(run, r, image, slices, annotated, crop, a.cache, keep_sdf=a.truth_steps is not None)
    unet, prop = p_u > 0.5, p_p > 0.5
    dist, near = nearest_annotated(image.shape[0], slices)
    sources = {"U-Net (P_u > 0.5)": unet, "propagated (P_p > 0.5)": prop, "pseudo mask (the loop's)": pseudo,
               "nearest annotated slice, copied": truth[near]}
    if a.truth_steps is not None:
        p_t = truth_trained(cfg, image, sdf, truth, slices, annotated, crop, a.truth_steps, a.cache, pre)
        start = ", from its pretrained propagator" if pre else ""
        sources[f"propagated, mask track trained on the true labels ({a.truth_steps} steps{start})"] = p_t > 0.5
    sdf = None
    in_bin = {(lo, hi): (dist >= lo) & (dist < hi) for lo, hi in BINS}
    bins = [b for b in BINS if in_bin[b].any()]
    off = dist > 0

    print(f"# {run} round {r}, Lucchi++ train{'' if a.box is None else f' box {a.box}'}; annotated slices {slices}")
    print("fg-IoU (precision / recall) by distance from the nearest annotated slice\n")
    names = [f"{lo}" if hi == lo + 1 else (f"{lo}+" if hi >= 10**9 else f"{lo}-{hi - 1}") for lo, hi in bins]
    print("| source | " + " | ".join(f"{n} ({int(in_bin[b].sum())} slices)" for n, b in zip(names, bins))
          + " | all unannotated slices |")
    print("|---|" + "---|" * (len(bins) + 1))
    table = {}
    for name, m in sources.items():
        cells = [scores(m[in_bin[b]], truth[in_bin[b]]) for b in bins]
        cells.append(scores(m[off], truth[off]))
        table[name] = dict(zip([*names, "all"], cells))
        print(f"| {name} | " + " | ".join(_cell(c) for c in cells) + " |")

    u, t, ps = unet[off], truth[off], pseudo[off]
    changes = {"unet_voxels": int(u.sum()), "unet_fp": int((u & ~t).sum()), "unet_fn": int((~u & t).sum()),
               "removed": int((u & ~ps).sum()), "removed_truly_background": int((u & ~ps & ~t).sum()),
               "added": int((ps & ~u).sum()), "added_truly_foreground": int((ps & ~u & t).sum())}
    print("\nWhat the fusion changed in the U-Net's mask, off the annotated slices (voxels)\n")
    print("| U-Net mask | its false positives | its false negatives | removed (truly background) | added (truly foreground) |")
    print("|---|---|---|---|---|")
    print(f"| {changes['unet_voxels']} | {changes['unet_fp']} | {changes['unet_fn']} | {changes['removed']} "
          f"({changes['removed_truly_background']}) | {changes['added']} ({changes['added_truly_foreground']}) |")

    print("\nOther fusion rules on the same maps, the whole volume (annotated slices keep their labels)\n")
    print("| rule | fg-IoU | precision | recall | false positives (in false objects) | false negatives (in missed objects) |")
    print("|---|---|---|---|---|---|")
    rule_rows = {}
    for name, m in rules(p_u, p_p, annotated, slices).items():
        s, e = scores(m, truth), error_breakdown(m, truth)
        rule_rows[name] = {**s, **{k: e[k] for k in ("fp", "fp_false_objects", "fn", "fn_missed_objects")}}
        print(f"| {name} | {s['iou']:.4f} | {s['precision']:.3f} | {s['recall']:.3f} | {e['fp']} ({e['fp_false_objects']}) | "
              f"{e['fn']} ({e['fn_missed_objects']}) |")
    if a.json is not None:
        write_text(a.json, json.dumps({"run": str(run), "round": r, "box": a.box, "annotated_slices": slices,
                                       "by_distance": table, "changes": changes, "rules": rule_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
