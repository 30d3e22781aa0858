"""Where automatic mode's propagated masks lose an object that the U-Net's SDF keeps.

On Lucchi++ the dual-track propagator's masks alone (``segment_volume(..., fill=False)``) flicker
(47-65 slices on the three seeds of (a)) while the final U-Net does not (0). This takes one
dual-track folder (``adapt`` or the benchmark's (a)/(c)), predicts the round's SDF on a Lucchi++
split, runs automatic mode with that round's propagator, and prints two tables:

- per flicker gap of the masks (``metrics.flicker_gaps``, after dropping components under
  --min-size on both sides as the benchmark does): the gap's slices, how much of the true
  cross-section the masks and the U-Net cover there, the seeds whose masks touch the object (start
  slice, how far the gap is from it) and how much of the gap lies inside their crop windows;
- per seed: its SDF component's z-range against the z-range its mask reached, i.e. how many of the
  component's slices the propagation never covered (it stops after `patience` slices without a mask).

    models/.venv/bin/python models/bench/automatic_mode_gaps.py --run runs/bench/a_1_64 --data-root ../shared/data

--cache DIR keeps the SDF and the masks as .npy there and reuses them on the next call.

--reprompt COVER tries one remedy and scores it (masks alone, against segment_volume's masks alone):
each seed propagates on its own (as segment_volume's one-object path), and on a slice where its mask
covers less than COVER of the 2D parts of its SDF component's cross-section that touch its last
mask, it is prompted again there with the deepest point of those parts (and their box unless
--reprompt-prompt point), the automatic counterpart of a correction click. Not used by
segment_volume or the server: an experiment (models/README.md, "Where automatic mode's masks lose
objects").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from spatialsam.cli import adapt_round, parse_box, round_weights
from spatialsam.data import load_lucchi
from spatialsam.metrics import evaluate, flicker, flicker_gaps, remove_small_components
from spatialsam.predictor import Predictor, _seed_prompt, sdf_seeds, segment_volume
from spatialsam.train_propagator import load_checkpoint
from spatialsam.train_unet import load_unet, predict


def _ranges(zs: list[int]) -> str:
    """[3, 4, 5, 9] -> "3-5, 9"."""
    out, start = [], None
    for i, z in enumerate(zs):
        if start is None:
            start = z
        if i + 1 == len(zs) or zs[i + 1] != z + 1:
            out.append(f"{start}-{z}" if z != start else f"{z}")
            start = None
    return ", ".join(out)


def predictions(run: Path, r: int, image: np.ndarray, crop: int, cache: Path | None) -> tuple[np.ndarray, np.ndarray, object]:
    """(SDF of round r's U-Net, automatic-mode masks alone, the round's propagator) on `image`."""
    prop, _ = load_checkpoint(run / f"round_{r}" / "propagator" / "propagator_last.pt")
    if cache is not None and (cache / "sdf.npy").exists() and (cache / "inst.npy").exists():
        return np.load(cache / "sdf.npy"), np.load(cache / "inst.npy"), prop
    weights, mean, std = round_weights(run, r)
    sdf, _ = predict(load_unet(weights), image, mean, std)
    with torch.no_grad():
        inst = segment_volume(prop, image, np.ascontiguousarray(sdf), crop=crop, fill=False)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cache / "sdf.npy", sdf)
        np.save(cache / "inst.npy", inst)
    return sdf, inst, prop


def reprompted(prop, image: np.ndarray, sdf: np.ndarray, comps: np.ndarray, seeds: list, crop: int, cover: float,
               box: bool, patience: int = 3, min_px: int = 200) -> tuple[np.ndarray, dict]:
    """Automatic mode's masks alone with SDF-guided re-prompts (see --reprompt): uint64 instances
    (highest logit wins, as segment_volume) and {"reprompts", "region_cover", "outside_component"}
    (medians over the re-prompts: share of the prompted parts the new mask covers, share of the new
    mask outside the SDF component)."""
    pred = Predictor(prop)
    best = np.zeros(sdf.shape, np.float32)
    out = np.zeros(sdf.shape, np.uint64)
    after = []
    for k, (z0, x, y, seed_box) in enumerate(seeds, start=1):
        win, prompt = _seed_prompt(seed_box, x, y, sdf.shape[1:], crop, prop.stride)
        lab = comps[z0, int(y), int(x)]
        st = pred.init_state(np.ascontiguousarray(image[:, win[0], win[1]]), np.ascontiguousarray(sdf[:, win[0], win[1]]))
        first = pred.add_prompts(st, z0, 1, **prompt)[1]
        for direction in ("forward", "backward"):
            misses, last = 0, first
            for z, masks in pred.propagate(st, start_z=z0, direction=direction):
                m = masks[1]
                cross = comps[z, win[0], win[1]] == lab
                if z != z0 and last.any() and cross.sum() >= min_px:
                    parts, _ = ndimage.label(cross)
                    touch = np.unique(parts[last & (parts > 0)])
                    region = np.isin(parts, touch[touch > 0])
                    if region.sum() >= min_px and (m & region).sum() < cover * region.sum():
                        ys, xs = np.nonzero(region)
                        yy, xx = np.unravel_index(int(np.argmax(np.where(region, sdf[z, win[0], win[1]], -np.inf))), region.shape)
                        kw: dict = {"points": [[float(xx), float(yy)]], "labels": [1]}
                        if box and xs.max() > xs.min() and ys.max() > ys.min():
                            kw["box"] = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
                        m = pred.add_prompts(st, z, 1, **kw)[1]
                        after.append(((m & region).sum() / region.sum(), (m & ~cross).sum() / max(1, m.sum())))
                lg = pred.mask_logits(st, 1, z)
                b, o = best[z, win[0], win[1]], out[z, win[0], win[1]]
                take = (lg > b) | ((lg == b) & (o > k))
                b[take] = lg[take]
                o[take] = k
                if m.any():
                    last = m
                misses = 0 if m.any() else misses + 1
                if misses >= patience:
                    break
    a = np.array(after) if after else np.full((1, 2), np.nan)
    return out, {"reprompts": len(after), "region_cover": float(np.median(a[:, 0])), "outside_component": float(np.median(a[:, 1]))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a dual-track folder (adapt, or the benchmark's a_1_64 / c_1_64)")
    p.add_argument("--round", type=int, default=None, help="the round to look at (default: the last finished)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--box", default=None, help="z0:z1,y0:y1,x0:x1: only this sub-volume (default: the whole split)")
    p.add_argument("--min-size", type=int, default=1000, help="components under this many voxels dropped (both sides)")
    p.add_argument("--crop", type=int, default=128, help="automatic mode's crop window (the benchmark's 128)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--reprompt", type=float, default=None, metavar="COVER",
                   help="also try SDF-guided re-prompts below this cover (0 < COVER <= 1) and score them")
    p.add_argument("--reprompt-prompt", choices=("box", "point"), default="box")
    p.add_argument("--json", type=Path, default=None, help="also write both tables as JSON here")
    a = p.parse_args(argv)
    if a.reprompt is not None and not 0 < a.reprompt <= 1:
        raise SystemExit(f"--reprompt: expected a cover in (0, 1], got {a.reprompt}")
    run = Path(a.run)
    try:
        r = adapt_round(run, a.round)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if r is None:
        raise SystemExit(f"--run: {run} is not a dual-track folder (no state.json)")
    try:
        box = parse_box(a.box)
    except ValueError as e:
        raise SystemExit(f"--{e}") from None
    torch.set_num_threads(a.threads)
    vol = load_lucchi(a.split, a.data_root)
    image, truth = vol.image[box], vol.mask[box]
    if 0 in image.shape:
        raise SystemExit(f"--box: {a.box} holds no voxel of the {a.split} volume {vol.image.shape}")
    sdf, inst, prop = predictions(run, r, np.ascontiguousarray(image), a.crop, a.cache)

    gt = remove_small_components(truth > 0, a.min_size)
    masks = remove_small_components(inst > 0, a.min_size)
    unet = remove_small_components(sdf > 0, a.min_size)
    seeds = sdf_seeds(sdf)
    comps, _ = ndimage.label(sdf > 0)
    windows = [_seed_prompt(box, x, y, sdf.shape[1:], a.crop, prop.stride)[0] for _, x, y, box in seeds]
    gl, _ = ndimage.label(gt)

    print(f"# {run} round {r}, Lucchi++ {a.split}{'' if a.box is None else f' box {a.box}'}; components under {a.min_size} voxels dropped on both sides")
    fm, fu = flicker(masks, gt), flicker(unet, gt)
    print(f"flicker slices (objects / matched): masks alone {fm['flicker_slices']} ({fm['flicker_objects']} / {fm['matched']}), "
          f"U-Net {fu['flicker_slices']} ({fu['flicker_objects']} / {fu['matched']})\n")
    print("| GT object (z range) | flicker slices | masks cover | U-Net covers | seeds on the object (start z) | "
          "slices from the nearest start | inside their windows |")
    print("|---|---|---|---|---|---|---|")
    gap_rows = []
    for g in flicker_gaps(masks, gt):
        z0, z1, y0, y1, x0, x1 = g["box"]
        obj = gl[z0:z1, y0:y1, x0:x1] == g["object"]
        ids = sorted(int(i) for i in np.unique(inst[z0:z1, y0:y1, x0:x1][obj]) if i)
        starts = [seeds[i - 1][0] for i in ids]
        win = np.zeros(sdf.shape[1:], bool)
        for i in ids:
            win[windows[i - 1]] = True
        u_cover, inside = [], []
        for z in g["slices"]:
            cross = np.zeros(sdf.shape[1:], bool)
            cross[y0:y1, x0:x1] = obj[z - z0]
            area = cross.sum()
            u_cover.append(float((cross & unet[z]).sum() / area))
            inside.append(float((cross & win).sum() / area))
        dist = [min(abs(z - s) for s in starts) for z in g["slices"]] if starts else []
        row = {"object": g["object"], "z": [z0, z1 - 1], "slices": g["slices"], "masks_cover": float(np.mean(g["cover"])),
               "unet_cover": float(np.mean(u_cover)), "seeds": dict(zip(ids, starts)), "distance": [min(dist), max(dist)] if dist else None,
               "inside_windows": float(np.mean(inside))}
        gap_rows.append(row)
        print(f"| {g['object']} ({z0}-{z1 - 1}) | {_ranges(g['slices'])} ({len(g['slices'])}) | {row['masks_cover']:.2f} | "
              f"{row['unet_cover']:.2f} | {', '.join(f'{i} ({s})' for i, s in zip(ids, starts)) or '-'} | "
              f"{'-' if not dist else f'{min(dist)}-{max(dist)}'} | {row['inside_windows']:.2f} |")

    print("\n| seed | start z | its SDF component's z range | z range its mask reached | component slices not reached |")
    print("|---|---|---|---|---|")
    seed_rows, short_total, comp_total = [], 0, 0
    # z extents from one pass each (a component is connected, so its slices are one run)
    comp_boxes = ndimage.find_objects(comps)
    mask_boxes = ndimage.find_objects(inst.astype(np.int32))
    for k, (z, x, y, _) in enumerate(seeds, start=1):
        cb = comp_boxes[comps[z, int(y), int(x)] - 1][0]
        cz = np.arange(cb.start, cb.stop)
        mb = mask_boxes[k - 1] if k <= len(mask_boxes) else None
        mz = np.arange(mb[0].start, mb[0].stop) if mb is not None else np.arange(0)
        reached = set(range(int(mz[0]), int(mz[-1]) + 1)) if len(mz) else set()
        short = int(sum(1 for zz in cz if zz not in reached))
        short_total += short
        comp_total += len(cz)
        seed_rows.append({"seed": k, "start": z, "component_z": [int(cz[0]), int(cz[-1])],
                          "mask_z": [int(mz[0]), int(mz[-1])] if len(mz) else None, "not_reached": short})
        if short:
            print(f"| {k} | {z} | {cz[0]}-{cz[-1]} | {'-' if not len(mz) else f'{mz[0]}-{mz[-1]}'} | {short} |")
    print(f"\n{len(seeds)} seeds; {sum(1 for s in seed_rows if s['not_reached'])} stop short of their SDF component: "
          f"{short_total} of its {comp_total} component-slices never reached by the mask.")
    result = {"run": str(run), "round": r, "split": a.split, "flicker_masks": fm, "flicker_unet": fu, "gaps": gap_rows,
              "seeds": seed_rows}
    if a.reprompt is not None:
        inst2, stats = reprompted(prop, np.ascontiguousarray(image), sdf, comps, seeds, a.crop, a.reprompt, a.reprompt_prompt == "box")
        print(f"\nRe-prompts below cover {a.reprompt} ({a.reprompt_prompt}): {stats['reprompts']}; after one the mask covers a median "
              f"{stats['region_cover']:.2f} of the prompted parts, {stats['outside_component']:.2f} of it outside the SDF component.")
        print("| masks alone | fg-IoU | Dice | AP@0.5 | AP@0.75 | flicker (objects / matched) |\n|---|---|---|---|---|---|")
        for name, v in (("segment_volume", inst), ("with re-prompts", inst2)):
            e = evaluate(v > 0, truth > 0, a.min_size)
            stats[name] = {key: e[key] for key in ("fg_iou", "dice", "ap50", "ap75", "flicker_slices", "flicker_objects", "matched")}
            print(f"| {name} | {e['fg_iou']:.3f} | {e['dice']:.3f} | {e['ap50']:.3f} | {e['ap75']:.3f} | "
                  f"{e['flicker_slices']} ({e['flicker_objects']} / {e['matched']}) |")
        result["reprompt"] = {"cover": a.reprompt, "prompt": a.reprompt_prompt, **stats}
    if a.json is not None:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
