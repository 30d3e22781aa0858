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

Methods may run as parallel processes (one core each) sharing --work, each with its own --out
(methods c and b share (b)'s run folder: run them in the same process or after it), then
``--merge OUT1/results.json OUT2/results.json --out DIR`` writes one table. Budgets are in CPU
time of the training process (``--minutes``, ``--d-minutes``) or steps, never wall time, so a
busy machine changes how long a run takes but not what it learns.

Every model trains in its own resumable run folder under --work; a re-run skips finished ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


class Clock:
    """CPU seconds of this process (all threads) and wall seconds since creation. CPU time is the
    honest cost on a shared machine; wall time is what a user waits."""

    def __init__(self) -> None:
        self.cpu0, self.wall0 = time.process_time(), time.monotonic()

    def cpu(self) -> float:
        return time.process_time() - self.cpu0

    def wall(self) -> float:
        return time.monotonic() - self.wall0


def _box_text(box: tuple[slice, ...]) -> str:
    return ",".join(f"{b.start}:{b.stop}" for b in box)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _unet(kind: str, vol: Volume, slices: list[int] | None, run: Path, a: argparse.Namespace, val: ValData | None, minutes: float):
    """Train (or resume) one U-Net run; return (model, mean, std, summary)."""
    name = "unet3d_lucchi" if kind == "unet3d" else "unet2d_lucchi"
    over: dict = {"seed": a.seed, "threads": a.threads, "max_cpu_s": minutes * 60}
    if a.quick:
        over.update(max_steps=a.quick_steps, val_every=max(1, a.quick_steps // 2), checkpoint_every=5)
        over["crop_zyx"] = (16, 64, 64) if kind == "unet3d" else (1, 96, 96)
    elif a.steps:
        over["max_steps"] = a.steps
    cfg = load_train_config(name, **over)
    data = make_train_data(vol.image, vol.mask, vol.voxel_size_nm, slices, cfg.truncation_nm)
    # Provenance in the train-unet CLI's format, so `python -m spatialsam export-unet --run` can ship it.
    run.mkdir(parents=True, exist_ok=True)
    _write(run / "run.json", json.dumps({
        "annotated_slices": slices if slices is not None else "all",
        "budget": "1" if slices is None else f"{len(slices)}/{vol.image.shape[0]} slices",
        "data": "lucchi_pp/train" + (" (quick crop)" if a.quick else ""),
        "validation": f"lucchi_pp/test[{_box_text(VAL_BOX)}]" if val is not None and not a.quick else None,
        "voxel_size_nm": list(vol.voxel_size_nm),
        "command": " ".join(sys.argv),
    }, indent=2))
    summary = train_unet(data, cfg, run, val=val, progress=not a.no_progress)
    return load_unet(run / "best.pt"), data.mean, data.std, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few steps per model on a 32x192x192 crop of each split (smoke run)")
    p.add_argument("--quick-steps", type=int, default=6)
    p.add_argument("--budgets", default="1/64", help="comma separated, e.g. 1/64,1/16,1/4")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--minutes", type=float, default=20.0,
                   help="training budget per U-Net in CPU minutes of this process (not wall time: the machine is shared)")
    p.add_argument("--d-minutes", type=float, default=60.0,
                   help="(d): CPU-minute cap; it stops earlier once validation fg-IoU stops improving (patience in its config)")
    p.add_argument("--mask-steps", type=int, default=600, help="propagator steps: (c) in all, (a) per round")
    p.add_argument("--unet-steps", type=int, default=300, help="(a): U-Net steps per dual-track round")
    p.add_argument("--steps", type=int, help="step cap per U-Net (default: the config's)")
    p.add_argument("--rounds", type=int, default=2, help="dual-track rounds after the bootstrap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root")
    p.add_argument("--work", default="/tmp/spatialsam_bench", help="run folders (resumable)")
    p.add_argument("--d-run", help="use this finished train-unet run folder as (d) instead of training one")
    p.add_argument("--out", help="folder for results.json and results.md (default: <work>)")
    p.add_argument("--min-size", type=int, default=1000,
                   help="components below this many voxels are dropped (prediction and ground truth) before AP and flicker")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--merge", nargs="+", metavar="RESULTS_JSON", help="only write one table (to --out/results.md) from these runs")
    a = p.parse_args(argv)
    if a.merge:
        print(merge(a.merge, Path(a.out or a.work) / "results.md"))
        return 0
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
    run = {"command": " ".join(sys.argv), "machine": machine(), "quick": a.quick, "threads": a.threads, "min_size": a.min_size}
    results_path = out / "results.json"

    def record(method: str, budget: str, slices, pred: np.ndarray, clock: Clock, extra: dict) -> None:
        m = evaluate(pred, test.mask, a.min_size)
        row = {"method": method, "name": NAMES[method], "budget": budget, "annotated_slices": slices,
               "cpu_min": round(clock.cpu() / 60, 1), "wall_min": round(clock.wall() / 60, 1), **m, **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)
        _write(results_path, json.dumps({"run": run, "rows": rows}, indent=1))

    if "d" in methods:
        clock = Clock()
        if a.d_run:
            model, s = load_unet(Path(a.d_run) / "best.pt"), json.loads((Path(a.d_run) / "summary.json").read_text())
            mean, std, summ = s["mean"], s["std"], s
        else:
            model, mean, std, summ = _unet("unet3d", train, None, work / "d", a, val, a.d_minutes)
        sdf, _ = predict(model, test.image, mean, std)
        record("d", "1", "all", sdf > 0, clock,
               {"steps": summ["step"], "best_step": summ["best_step"], "stopped": summ["stopped"], "train_cpu_s": summ.get("cpu_s")})

    for budget in a.budgets.split(","):
        slices = budget_slices(train.image.shape[0], budget)
        tag = budget.replace("/", "_")
        b_model = None
        if "b" in methods or "c" in methods:
            clock = Clock()
            b_model, mean, std, summ = _unet("unet3d", train, slices, work / f"b_{tag}", a, None, a.minutes)
            b_sdf, _ = predict(b_model, test.image, mean, std)
            if "b" in methods:
                record("b", budget, slices, b_sdf > 0, clock, {"steps": summ["step"], "train_cpu_s": summ.get("cpu_s")})
        if "b2" in methods:
            clock = Clock()
            m2, mean, std, summ = _unet("unet2d", train, slices, work / f"b2_{tag}", a, None, a.minutes)
            s2, _ = predict(m2, test.image, mean, std)
            record("b2", budget, slices, s2 > 0, clock, {"steps": summ["step"], "train_cpu_s": summ.get("cpu_s")})
        if "c" in methods:
            from spatialsam.predictor import segment_volume
            from spatialsam.propagator import build_propagator, load_propagator_config
            from spatialsam.train_propagator import TrainConfig as MaskTrainConfig
            from spatialsam.train_propagator import train_mask_track

            clock = Clock()
            prop = build_propagator(load_propagator_config("compact", memory="mask", seed=a.seed))
            ann = np.zeros(train.mask.shape, np.uint8)
            ann[slices] = train.mask[slices]
            w = np.zeros(train.mask.shape, np.float32)
            w[slices] = 1.0
            steps = a.quick_steps if a.quick else a.mask_steps
            mcfg = MaskTrainConfig(steps=steps, seed=a.seed, crop=64 if a.quick else 128)
            zero_sdf = np.zeros(train.mask.shape, np.float32)  # mask memory: the SDF input is unused
            hist = train_mask_track(prop, train.image, zero_sdf, ann, w, mcfg, ckpt_dir=work / f"c_{tag}", progress=not a.no_progress)
            with torch.no_grad():
                inst = segment_volume(prop.eval(), test.image, np.ascontiguousarray(b_sdf), crop=64 if a.quick else 128)
            record("c", budget, slices, inst > 0, clock, {"steps": len(hist)})
        if "a" in methods:
            clock = Clock()
            labels = np.zeros(train.mask.shape, bool)
            labels[slices] = train.mask[slices]
            cfg = DualTrackConfig(rounds=a.rounds, seed=a.seed, threads=a.threads, unet_steps=a.unet_steps, mask_steps=a.mask_steps)
            if a.quick:
                cfg = DualTrackConfig(rounds=1, seed=a.seed, threads=a.threads, unet_crop_zyx=(16, 64, 64),
                                      unet_steps=a.quick_steps, mask_steps=a.quick_steps, mask_crop=64, mask_batch_size=2)
            res = run_dualtrack(train.image, labels, slices, train.voxel_size_nm, cfg, work / f"a_{tag}", progress=not a.no_progress)
            model = load_unet(res["unet"])
            sa, _ = predict(model, test.image, res["mean"], res["std"])
            record("a", budget, slices, sa > 0, clock, {"rounds": res["rounds"], "round_metrics": res["metrics"]})

    _write(out / "results.md", table(rows, [run]))
    print((out / "results.md").read_text())
    return 0


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}"


def table(rows: list[dict], runs: list[dict]) -> str:
    """Markdown table of result rows; ``runs``: {"command", "machine", "quick", "threads", "min_size"} per invocation."""
    head = "| method | budget | annotated slices | fg-IoU | Dice | AP@0.5 | AP@0.75 | flicker slices (objects / matched) | CPU min (wall min) |"
    quick = any(r["quick"] for r in runs)
    lines = [f"Lucchi++ budget benchmark{' (QUICK smoke run: crops, a few steps; numbers mean nothing)' if quick else ''}."]
    for r in runs:
        lines.append(f"Command: `{r['command']}` ({r['machine']}, {r['threads']} thread(s) per model).")
    lines += [
        f"AP and flicker on 3D 6-connected components after dropping components under {runs[0]['min_size']} voxels on "
        "both sides; fg-IoU and Dice on the raw masks. CPU minutes: training plus prediction on the test volume, "
        "this process only (the machine was shared).",
        "",
        head,
        "|" + "---|" * 9,
    ]
    for r in rows:
        sl = r["annotated_slices"]
        sl = sl if isinstance(sl, str) else ",".join(map(str, sl)) if len(sl) <= 12 else f"{len(sl)} slices"
        lines.append(
            f"| {r['name']} | {r['budget']} | {sl} | {r['fg_iou']:.3f} | {r['dice']:.3f} | {r['ap50']:.3f} | {r['ap75']:.3f} "
            f"| {r['flicker_slices']} ({r['flicker_objects']} / {r['matched']}) | {r['cpu_min']} ({r['wall_min']}) |"
        )
    return "\n".join(lines) + "\n"


def merge(paths: list[str], out: Path) -> str:
    """One table from several runs' results.json (e.g. methods run as parallel processes)."""
    rows, runs = [], []
    for p in paths:
        d = json.loads(Path(p).read_text())
        rows += d["rows"]
        runs.append(d["run"])
    order = {m: i for i, m in enumerate(("d", "a", "b", "b2", "c"))}
    rows.sort(key=lambda r: (r["budget"] != "1", r["budget"], order[r["method"]]))
    text = table(rows, runs)
    _write(out, text)
    return text


if __name__ == "__main__":
    sys.exit(main())
