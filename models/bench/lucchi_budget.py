"""Lucchi++ annotation-budget benchmark: train each method from a budget of annotated train slices,
evaluate on the whole test volume (fg-IoU, Dice, AP@0.5/0.75 on 3D connected components, flicker),
write a markdown table and JSON.

Methods: (a) dual-track (final 3D U-Net), (b) 3D U-Net on the annotated slices only, (b2) 2D U-Net
on the annotated slices, (c) propagator with SAM2's mask memory trained on the annotated slices,
applied in automatic mode with seeds from (b)'s SDF, (d) 3D U-Net on all 165 train slices with
early stopping on a crop of the test volume (an optimistic upper bound).

    models/.venv/bin/python models/bench/lucchi_budget.py --quick            # smoke run, minutes
    nice -n 10 models/.venv/bin/python models/bench/lucchi_budget.py \
        --budgets 1/64,1/16,1/4 --minutes 20 --work /work/runs/bench         # hours on this CPU

Every model trains in its own resumable run folder under --work; a re-run skips finished ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spatialsam.config import load_train_config
from spatialsam.data import Volume, budget_slices, load_lucchi
from spatialsam.dualtrack import DualTrackConfig, run_dualtrack
from spatialsam.metrics import evaluate
from spatialsam.train_unet import ValData, load_unet, make_train_data, predict, train_unet

METHODS = ("a", "b", "b2", "c", "d")
NAMES = {
    "a": "(a) dual-track (3D U-Net after adaptation)",
    "b": "(b) 3D U-Net, annotated slices only",
    "b2": "(b2) 2D U-Net, annotated slices only",
    "c": "(c) propagator, mask memory (seeds from (b))",
    "d": "(d) 3D U-Net, all 165 train slices",
}
QUICK_BOX = (slice(0, 32), slice(256, 448), slice(256, 448))  # has mitochondria in both splits
VAL_BOX = (slice(58, 106), slice(192, 576), slice(256, 768))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _unet(kind: str, vol: Volume, slices: list[int] | None, run: Path, a: argparse.Namespace, val: ValData | None):
    """Train (or resume) one U-Net run; return (model, mean, std, summary)."""
    name = "unet3d_lucchi" if kind == "unet3d" else "unet2d_lucchi"
    over: dict = {"seed": a.seed, "threads": a.threads, "max_time_s": a.minutes * 60}
    if a.quick:
        over.update(max_steps=a.quick_steps, val_every=max(1, a.quick_steps // 2), checkpoint_every=5)
        over["crop_zyx"] = (16, 64, 64) if kind == "unet3d" else (1, 96, 96)
    elif a.steps:
        over["max_steps"] = a.steps
    cfg = load_train_config(name, **over)
    data = make_train_data(vol.image, vol.mask, vol.voxel_size_nm, slices, cfg.truncation_nm)
    summary = train_unet(data, cfg, run, val=val, progress=not a.no_progress)
    return load_unet(run / "best.pt"), data.mean, data.std, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few steps per model on a 32x192x192 crop of each split (smoke run)")
    p.add_argument("--quick-steps", type=int, default=6)
    p.add_argument("--budgets", default="1/64", help="comma separated, e.g. 1/64,1/16,1/4")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--minutes", type=float, default=20.0, help="wall-time budget per model")
    p.add_argument("--steps", type=int, help="step cap per U-Net (default: the config's)")
    p.add_argument("--rounds", type=int, default=2, help="dual-track rounds after the bootstrap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root")
    p.add_argument("--work", default="/tmp/spatialsam_bench", help="run folders (resumable)")
    p.add_argument("--d-run", help="use this finished train-unet run folder as (d) instead of training one")
    p.add_argument("--out", help="folder for results.json and results.md (default: <work>)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    methods = [m for m in a.methods.split(",") if m]
    if any(m not in METHODS for m in methods):
        p.error(f"--methods: choose from {METHODS}")
    work = Path(a.work)
    out = Path(a.out) if a.out else work
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    train, test = load_lucchi("train", a.data_root), load_lucchi("test", a.data_root)
    if a.quick:
        train, test = train.crop(*QUICK_BOX), test.crop(*QUICK_BOX)
    val_src = test if a.quick else test.crop(*VAL_BOX)
    val = ValData(val_src.image, val_src.mask)
    rows: list[dict] = []
    results_path = out / "results.json"

    def record(method: str, budget: str, slices, pred: np.ndarray, t: float, extra: dict) -> None:
        m = evaluate(pred, test.mask)
        row = {"method": method, "name": NAMES[method], "budget": budget, "annotated_slices": slices,
               "train_s": round(t, 1), **m, **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)
        _write(results_path, json.dumps({"quick": a.quick, "rows": rows}, indent=1))

    if "d" in methods:
        t0 = time.time()
        if a.d_run:
            model, s = load_unet(Path(a.d_run) / "best.pt"), json.loads((Path(a.d_run) / "summary.json").read_text())
            mean, std, summ = s["mean"], s["std"], s
        else:
            model, mean, std, summ = _unet("unet3d", train, None, work / "d", a, val)
        sdf, _ = predict(model, test.image, mean, std)
        record("d", "1", "all", sdf > 0, summ.get("time_s", time.time() - t0),
               {"steps": summ["step"], "best_step": summ["best_step"], "stopped": summ["stopped"]})

    for budget in a.budgets.split(","):
        slices = budget_slices(train.image.shape[0], budget)
        tag = budget.replace("/", "_")
        b_model = None
        if "b" in methods or "c" in methods:
            b_model, mean, std, summ = _unet("unet3d", train, slices, work / f"b_{tag}", a, None)
            b_sdf, _ = predict(b_model, test.image, mean, std)
            if "b" in methods:
                record("b", budget, slices, b_sdf > 0, summ["time_s"], {"steps": summ["step"]})
        if "b2" in methods:
            m2, mean, std, summ = _unet("unet2d", train, slices, work / f"b2_{tag}", a, None)
            s2, _ = predict(m2, test.image, mean, std)
            record("b2", budget, slices, s2 > 0, summ["time_s"], {"steps": summ["step"]})
        if "c" in methods:
            from spatialsam.predictor import segment_volume
            from spatialsam.propagator import build_propagator, load_propagator_config
            from spatialsam.train_propagator import TrainConfig as MaskTrainConfig
            from spatialsam.train_propagator import train_mask_track

            t0 = time.time()
            prop = build_propagator(load_propagator_config("compact", memory="mask", seed=a.seed))
            ann = np.zeros(train.mask.shape, np.uint8)
            ann[slices] = train.mask[slices]
            w = np.zeros(train.mask.shape, np.float32)
            w[slices] = 1.0
            steps = a.quick_steps if a.quick else 100_000
            mcfg = MaskTrainConfig(steps=steps, seed=a.seed, max_minutes=a.minutes, crop=64 if a.quick else 128)
            zero_sdf = np.zeros(train.mask.shape, np.float32)  # mask memory: the SDF input is unused
            hist = train_mask_track(prop, train.image, zero_sdf, ann, w, mcfg, ckpt_dir=work / f"c_{tag}", progress=not a.no_progress)
            with torch.no_grad():
                inst = segment_volume(prop.eval(), test.image, np.ascontiguousarray(b_sdf), crop=64 if a.quick else 128)
            record("c", budget, slices, inst > 0, time.time() - t0, {"steps": len(hist)})
        if "a" in methods:
            t0 = time.time()
            labels = np.zeros(train.mask.shape, bool)
            labels[slices] = train.mask[slices]
            cfg = DualTrackConfig(rounds=a.rounds, seed=a.seed, threads=a.threads)
            if a.quick:
                cfg = DualTrackConfig(rounds=1, seed=a.seed, threads=a.threads, unet_crop_zyx=(16, 64, 64),
                                      unet_steps=a.quick_steps, mask_steps=a.quick_steps, mask_crop=64, mask_batch_size=2)
            res = run_dualtrack(train.image, labels, slices, train.voxel_size_nm, cfg, work / f"a_{tag}", progress=not a.no_progress)
            model = load_unet(res["unet"])
            sa, _ = predict(model, test.image, res["mean"], res["std"])
            record("a", budget, slices, sa > 0, res["time_s"] or time.time() - t0, {"rounds": res["rounds"]})

    _write(out / "results.md", table(rows, a, sys.argv))
    print((out / "results.md").read_text())
    return 0


def table(rows: list[dict], a: argparse.Namespace, argv: list[str]) -> str:
    head = "| method | budget | annotated slices | fg-IoU | Dice | AP@0.5 | AP@0.75 | flicker slices (objects / matched) | train s |"
    lines = [
        f"Lucchi++ budget benchmark{' (QUICK smoke run: crops, a few steps; numbers mean nothing)' if a.quick else ''}.",
        f"Command: `{' '.join(argv)}`",
        "",
        head,
        "|" + "---|" * 9,
    ]
    for r in rows:
        sl = r["annotated_slices"]
        sl = sl if isinstance(sl, str) else ",".join(map(str, sl)) if len(sl) <= 12 else f"{len(sl)} slices"
        lines.append(
            f"| {r['name']} | {r['budget']} | {sl} | {r['fg_iou']:.3f} | {r['dice']:.3f} | {r['ap50']:.3f} | {r['ap75']:.3f} "
            f"| {r['flicker_slices']} ({r['flicker_objects']} / {r['matched']}) | {r['train_s']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
