"""Lucchi++ annotation-budget benchmark: train each method from a budget of annotated train slices,
evaluate on the whole test volume (fg-IoU, Dice, AP@0.5/0.75 on 3D connected components, flicker),
write a markdown table and JSON.

Methods (every 3D U-Net is the same config, `unet3d_lucchi_learned` unless --unet-config names another; each method
trains in its own resumable run folder under --work, and a re-run skips what is finished):
  (d)  3D U-Net on all 165 train slices, early-stopped on a slab of the test volume (test slices
       40-87, with 16 slices of context on each side): an optimistic upper bound.
  (b)  3D U-Net on the annotated slices only (fixed step budget, no validation).
  (b=) the control of equal compute: (b)'s run continued (from its last checkpoint, as the same
       run would go on) to as many steps as (a)'s SDF track trains in all: --b-steps plus
       --rounds x --unet-steps. Without it the table credits the dual-track with what is only
       longer training.
  (b2) 2D U-Net on the annotated slices only, applied slice by slice.
  (a)  Spatial-SAM dual-track (dualtrack.py) with its defaults (three rounds, anchored SDF track), its
       round 0 SDF track being (b)'s run. Scored twice:
       "a" = its final 3D U-Net (the SDF track), "a_auto" = its final propagator (the mask track)
       in automatic mode (predictor.segment_volume) with seeds and SDF memory from that U-Net, its
       propagated masks alone (fill=False: what the mask track itself finds), "a_fill" = the same
       with the SDF's unclaimed foreground filled, as the server's automatic mode writes it.
  (c)  The same dual-track loop with SAM2's mask memory in the propagator instead of SDF memory
       (the ablation), scored the same three ways ("c", "c_auto", "c_fill").

    models/.venv/bin/python models/bench/lucchi_budget.py --quick --work /tmp/bench_quick   # smoke run, minutes
    nice models/.venv/bin/python models/bench/lucchi_budget.py --jobs 2 --work /work/runs/bench  # the 1/64 comparison

``--jobs 2`` runs the methods in two worker processes (one thread each) along ``--lanes`` (default
"b,a,c:d,b2,b_eq": (a) and (c) start from (b)'s run; (d), the longest, runs beside them) and merges
their results. With the defaults the 1/64 comparison costs about 1050 training CPU-minutes on a
2-core x86 CPU with bf16 in hardware (2026-12-03/04: (b) 49, (a) 257 more, (c) about as much, (b=)
about 235 more than (b), (d) 253, (b2) 10), so about 9-10 h wall in two lanes there; on a CPU without
bf16 (float32, channels-last) a step costs about twice as much.
Budgets are steps and CPU minutes of the training process, never wall time, so a busy machine
changes how long a run takes but not what it learns; the CPU minutes are caps, and a row whose run
a cap ended before its steps is footnoted under the table ("Cut short").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from spatialsam.atomic_files import replace_with
from spatialsam.cli import add_sdf_track_args, apply_device_args, crop_overrides, device_overrides, sdf_track_overrides
from spatialsam.config import load_train_config
from spatialsam.data import Volume, budget_slices, load_lucchi
from spatialsam.device import machine
from spatialsam.dualtrack import DualTrackConfig, load_pretrained, record_run, run_dualtrack
from spatialsam.metrics import evaluate
from spatialsam.train_unet import ValData, load_unet, make_train_data, predict, train_unet

METHODS = ("a", "b", "b_eq", "b2", "c", "d")
NAMES = {
    "a": "(a) Spatial-SAM dual-track: final 3D U-Net (SDF track)",
    "a_auto": "(a) Spatial-SAM dual-track: final propagator (mask track), automatic mode",
    "a_fill": "(a) Spatial-SAM dual-track: automatic mode as the server writes it (unclaimed SDF foreground filled)",
    "b": "(b) 3D U-Net, annotated slices only",
    "b_eq": "(b=) 3D U-Net, annotated slices only, as many steps as (a)'s SDF track",
    "b2": "(b2) 2D U-Net, annotated slices only",
    "c": "(c) dual-track with mask memory: final 3D U-Net",
    "c_auto": "(c) dual-track with mask memory: final propagator, automatic mode",
    "c_fill": "(c) dual-track with mask memory: automatic mode as the server writes it (unclaimed SDF foreground filled)",
    "d": "(d) 3D U-Net, all 165 train slices",
}
ROW_ORDER = ("d", "a", "a_auto", "a_fill", "b", "b_eq", "b2", "c", "c_auto", "c_fill")
QUICK_BOX = (slice(0, 32), slice(256, 448), slice(256, 448))  # has mitochondria in both splits
VAL_BOX = (slice(40, 88), slice(None), slice(None))
VAL_CONTEXT = 16
VAL_SLAB = slice(VAL_BOX[0].start - VAL_CONTEXT, VAL_BOX[0].stop + VAL_CONTEXT)  # (d)'s validation input
DEFAULT_LANES = "b,a,c:d,b2,b_eq"


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
    return ",".join(f"{b.start or 0}:{'' if b.stop is None else b.stop}" for b in box)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _unet(kind: str, vol: Volume, slices: list[int] | None, run: Path, a: argparse.Namespace, val: ValData | None,
          minutes: float, steps: int | None, quick_steps: int | None = None):
    """Train (or resume) one U-Net run; return (model, mean, std, summary). With --quick the run
    takes ``quick_steps`` steps (default --quick-steps) instead of ``steps``."""
    name = a.unet_config if kind == "unet3d" else "unet2d_lucchi"
    over: dict = {"seed": a.seed, "threads": a.threads, "max_cpu_s": minutes * 60, "max_steps": steps, **device_overrides(a)}
    if a.quick:
        over.update(max_steps=quick_steps or a.quick_steps, val_every=max(1, a.quick_steps // 2), checkpoint_every=5)
        over["crop_zyx"] = (16, 64, 64) if kind == "unet3d" else (1, 96, 96)
    if kind == "unet3d":  # (b), (b=) and (d) train on the crops (a)'s and (c)'s SDF track trains on
        over.update(crop_overrides(a))
    cfg = load_train_config(name, **over)
    if (run / "config.json").exists():  # a re-run resumes or reuses this folder: only with the same network and crops
        saved = json.loads((run / "config.json").read_text())
        mine = json.loads(json.dumps(asdict(cfg)))
        if saved.get("unet") != mine["unet"]:
            raise ValueError(f"--unet-config: {run} holds a run of another network than {name!r}; use another --work")
        if saved.get("crop_zyx") != mine["crop_zyx"]:
            raise ValueError(f"--crop-zyx: {run} holds a run on {saved.get('crop_zyx')} crops, not {mine['crop_zyx']}; "
                             "use another --work")
    if (run / "summary.json").exists():  # finished earlier: a re-run skips it
        summary = json.loads((run / "summary.json").read_text())
        return load_unet(run / "best.pt"), summary["mean"], summary["std"], {**summary, "max_steps": cfg.max_steps}
    data = make_train_data(vol.image, vol.mask, vol.voxel_size_nm, slices, cfg.truncation_nm)
    # Provenance in the train-unet CLI's format, so `python -m spatialsam export-unet --run` can ship it.
    run.mkdir(parents=True, exist_ok=True)
    _write(run / "run.json", json.dumps({
        "annotated_slices": slices if slices is not None else "all",
        "budget": "1" if slices is None else f"{len(slices)}/{vol.image.shape[0]} slices",
        "data": "lucchi_pp/train" + (" (quick crop)" if a.quick else ""),
        "validation": (f"lucchi_pp/test[{_box_text(VAL_BOX)}], {VAL_CONTEXT} slices of context on each side"
                       if val is not None and not a.quick else None),
        "voxel_size_nm": list(vol.voxel_size_nm),
        "command": " ".join(sys.argv),
    }, indent=2))
    summary = train_unet(data, cfg, run, val=val, progress=not a.no_progress)
    if summary["stopped"] != "sigterm":  # stopped at a deadline, not finished: a re-run resumes it
        _write(run / "summary.json", json.dumps(summary, indent=1))
    return load_unet(run / "best.pt"), data.mean, data.std, {**summary, "max_steps": cfg.max_steps}


def equal_compute_steps(a: argparse.Namespace) -> tuple[int, int]:
    """(steps, quick steps) of (b=): what (a)'s SDF track trains in all, its bootstrap being (b)."""
    return a.b_steps + a.rounds * a.unet_steps, a.quick_steps * 2  # --quick runs one round of quick_steps


def continue_run(src: Path, dst: Path) -> None:
    """Start the run folder ``dst`` as a continuation of the finished run ``src``: its checkpoint
    (weights, optimiser, EMA, RNG states, step and CPU counters) and log, so training ``dst`` to
    more steps continues that run (bit-exact in fp32; under bf16 as exact as bf16 is, see
    models/README "Training"). Does nothing once ``dst`` has a checkpoint of its own (a killed
    continuation resumes from that)."""
    if (dst / "checkpoint.pt").exists() or (dst / "summary.json").exists():
        return
    if not (src / "summary.json").exists():
        raise ValueError(f"continue_run: {src} is not a finished run (no summary.json)")
    dst.mkdir(parents=True, exist_ok=True)
    if (src / "log.jsonl").exists():  # a run may end before logging a loss
        replace_with(dst / "log.jsonl", lambda tmp: shutil.copyfile(src / "log.jsonl", tmp))
    # The checkpoint last: it marks dst as started.
    replace_with(dst / "checkpoint.pt", lambda tmp: shutil.copyfile(src / "checkpoint.pt", tmp))


def dualtrack_config(memory: str, a: argparse.Namespace) -> DualTrackConfig:
    """(a) (memory "sdf") or (c) (memory "mask"): the dual-track schedule these arguments ask for."""
    kw: dict = dict(rounds=a.rounds, seed=a.seed, threads=a.threads, unet_steps=a.unet_steps, mask_steps=a.mask_steps,
                    bootstrap_mask_steps=a.bootstrap_mask_steps, propagator_memory=memory, unet_config=a.unet_config,
                    pseudo_loss_weight=a.pseudo_loss_weight, pseudo_band_nm=a.pseudo_band_nm)
    if a.quick:
        kw.update(rounds=1, unet_steps=a.quick_steps, mask_steps=a.quick_steps, bootstrap_mask_steps=a.quick_steps,
                  unet_overrides={"crop_zyx": (16, 64, 64)}, mask_crop=64, mask_batch_size=2, min_object_voxels=100)
    over = {**device_overrides(a), **sdf_track_overrides(a)}
    if over:
        kw["unet_overrides"] = {**kw.get("unet_overrides", {}), **over}
    return DualTrackConfig(**kw)


def _dualtrack(memory: str, train: Volume, slices: list[int], b_run: Path, run: Path, a: argparse.Namespace) -> dict:
    labels = np.zeros(train.mask.shape, bool)
    labels[slices] = train.mask[slices]
    # adapt's provenance, so export-unet / export-propagator --run ship the run
    record_run(run, {"data": "lucchi_pp/train" + (" (quick crop)" if a.quick else ""), "annotated_slices": slices,
                     "budget": f"{len(slices)}/{train.image.shape[0]} slices", "voxel_size_nm": list(train.voxel_size_nm),
                     "command": " ".join(sys.argv)}, "--work")
    # The train labels of the unannotated slices are read only to log the pseudo-labels' quality.
    return run_dualtrack(train.image, labels, slices, train.voxel_size_nm, dualtrack_config(memory, a), run,
                         progress=not a.no_progress, eval_mask=train.mask, bootstrap_unet=b_run,
                         pretrained_propagator=pretrained_propagator(memory, a))


def pretrained_propagator(memory: str, a: argparse.Namespace) -> str | None:
    """The checkpoint (a) (memory "sdf") or (c) (memory "mask") starts its mask track from, if given."""
    return a.pretrained_propagator_sdf if memory == "sdf" else a.pretrained_propagator_mask


def pretrained_name(run: Path) -> str:
    """' (propagator pretrained on <dataset/split>)' when the dual-track folder declares one, else ''."""
    pre = (json.loads((run / "config.json").read_text()).get("pretrained") or {}).get("propagator")
    if not pre:
        return ""
    # What its training recorded ("cdeep3m_mito_sbem/train (shared data layout), ..."), else the file.
    return f" (propagator pretrained on {pre['trained_on'].split(' ')[0] if pre.get('trained_on') else pre['path']})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few steps per model on a 32x192x192 crop of each split (smoke run)")
    p.add_argument("--quick-steps", type=int, default=6)
    p.add_argument("--budgets", default="1/64", help="comma separated, e.g. 1/64,1/16,1/4")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--jobs", type=int, default=1, help="worker processes; > 1 runs the methods along --lanes in parallel")
    p.add_argument("--lanes", default=DEFAULT_LANES,
                   help=f"with --jobs > 1: colon-separated lanes of methods, each run in order by one worker (default {DEFAULT_LANES})")
    p.add_argument("--minutes", type=float, default=150.0,
                   help="(b), (b2): CPU-minute cap of each U-Net's training, a safety ceiling: their budget is steps. "
                        "CPU time per step rises about 15%% when both cores are busy (a 45-minute cap once stopped "
                        "(b) at step 1439 of 1500; the learned stem's (b) takes about 49 CPU-min with 2 threads on a CPU "
                        "with bf16 in hardware, 69 in float32 on one without, where the old cap of 75 stopped a float32 "
                        "run without channels-last at step 1231)")
    p.add_argument("--b-steps", type=int, default=1500, help="(b): training steps (no validation: fixed budget)")
    p.add_argument("--b-eq-minutes", type=float, default=540.0,
                   help="(b=): CPU minutes it may spend beyond --minutes (it continues (b)'s run, whose CPU counts), a safety "
                        "ceiling: its budget is steps (8700 with the defaults, about 1.9 CPU-s each with the learned stem on a CPU "
                        "with bf16 in hardware, about twice that without)")
    p.add_argument("--b2-steps", type=int, default=2000, help="(b2): training steps (no validation: fixed budget)")
    p.add_argument("--d-minutes", type=float, default=600.0,
                   help="(d): CPU-minute cap; it stops earlier once validation fg-IoU stops improving (patience in its config; "
                        "on 2026-12-03 after 224 CPU-min, best at step 5063 of 6150; with unet3d_lucchi_learned after 253 CPU-min, "
                        "best at 5550 of 6750, on CPUs with bf16 in hardware; about twice that without)")
    p.add_argument("--rounds", type=int, default=DualTrackConfig.rounds,
                   help="(a), (c): dual-track rounds after the bootstrap (default %(default)s). Anchored, learned stem "
                        "(2026-12-03): a second round moved the train pseudo-labels 0.899 -> 0.909 and test fg-IoU "
                        "0.856 -> 0.869 for about 83 more CPU-min, a third 0.869 -> 0.889 for 76 more, one run "
                        "(unanchored, a second moved them 0.868 -> 0.863). Each round costs about 80 CPU-min")
    p.add_argument("--unet-steps", type=int, default=2400,
                   help="(a), (c): U-Net steps per dual-track round (with (b)'s 1500: 3900, about as many as (d) trains)")
    p.add_argument("--mask-steps", type=int, default=400, help="(a), (c): propagator steps per round after the bootstrap")
    p.add_argument("--bootstrap-mask-steps", type=int, default=800, help="(a), (c): propagator steps in the bootstrap round")
    p.add_argument("--unet-config", default=DualTrackConfig.unet_config,
                   help="config of every 3D U-Net ((b), (b=), (d) and the SDF track of (a), (c)); default %(default)s, "
                        "unet3d_lucchi for the earlier 10 nm average-pool stem")
    add_sdf_track_args(p)  # (a), (c): --pseudo-loss-weight, --pseudo-band-nm (anchoring; 'off' / 0 for the unanchored loop), --lr-schedule
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root")
    p.add_argument("--work", default="/tmp/spatialsam_bench", help="run folders (resumable)")
    p.add_argument("--d-run", help="use this finished train-unet run folder as (d) instead of training one")
    p.add_argument("--out", help="folder for results.json and results.md (default: <work>)")
    p.add_argument("--min-size", type=int, default=1000,
                   help="components below this many voxels are dropped (prediction and ground truth) before AP and flicker")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default="cpu",
                   help="where the networks train and predict: cpu (default), cuda or cuda:N. Budgets stay steps; the "
                        "CPU-minute caps are safety ceilings only, so a GPU run learns what a CPU run learns, not bit for bit")
    p.add_argument("--loader-threads", type=int, default=0,
                   help="threads that cut every 3D/2D U-Net's next crops while it trains (TrainConfig.loader_threads; "
                        "0, the default, draws them in the loop as every measured CPU run did). For a GPU, whose step "
                        "otherwise waits about 0.1 s for the CPU's crops (H200, 2026-12-04: (b) 0.125 s/step, CPU-bound)")
    p.add_argument("--train-only", action="store_true",
                   help="train (or resume) every method's run folders under --work and stop: no test-volume prediction "
                        "(the test volume is read only for (d)'s validation). A later run with the same --work, on any "
                        "machine, skips the finished training and only predicts and scores (for a GPU machine without the "
                        "test volume, or a CPU one without the GPU)")
    p.add_argument("--pretrained-propagator-sdf", metavar="CKPT",
                   help="(a): start round 0's mask track from this train_propagator checkpoint (SDF memory), e.g. one "
                        "pretrained on other EM data (train_propagator --dataset cdeep3m_mito_sbem --xy-nm 5); declared in "
                        "the run folder, and the rows' names say so. No checkpoint that saw Lucchi++ labels belongs here")
    p.add_argument("--pretrained-propagator-mask", metavar="CKPT",
                   help="(c): the same for the mask-memory propagator (train_propagator --memory mask)")
    p.add_argument("--lane-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--merge", nargs="+", metavar="RESULTS_JSON", help="only write one table (to --out/results.md) from these runs")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.merge:
        print(merge(a.merge, Path(a.out or a.work) / "results.md"))
        return 0
    methods = [m for m in a.methods.split(",") if m]
    if any(m not in METHODS for m in methods):
        p.error(f"--methods: choose from {METHODS}")
    try:
        apply_device_args(a)  # --device, --loader-threads: checked before anything is written
    except ValueError as e:
        p.error(str(e))
    for memory, flag in (("sdf", "--pretrained-propagator-sdf"), ("mask", "--pretrained-propagator-mask")):
        if (path := pretrained_propagator(memory, a)) is not None:
            try:  # the checks adapt makes (a checkpoint, this memory kind), before anything trains
                load_pretrained(None, path, DualTrackConfig(propagator_memory=memory))
            except ValueError as e:
                p.error(f"{flag}: {str(e).removeprefix('pretrained_propagator: ')}")
    work = Path(a.work)
    out = Path(a.out) if a.out else work
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if a.jobs > 1:
        return run_lanes(a, methods, work, out, argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(a.threads)

    train = load_lucchi("train", a.data_root)
    # --train-only reads of the test volume only (d)'s validation slab (slices from test_z0 on).
    test_z0 = VAL_SLAB.start if a.train_only and not a.quick else 0
    test = load_lucchi("test", a.data_root, slice(test_z0, VAL_SLAB.stop if test_z0 else None)) \
        if not a.train_only or "d" in methods else None
    if a.quick:
        train = train.crop(*QUICK_BOX)
        test = test.crop(*QUICK_BOX) if test is not None else None
        val = ValData(test.image, test.mask) if test is not None else None
    else:
        val = None
        if test is not None:
            v = test.crop(slice(VAL_SLAB.start - test_z0, VAL_SLAB.stop - test_z0), *VAL_BOX[1:])
            val = ValData(v.image, v.mask, VAL_CONTEXT)
    rows: list[dict] = []
    run = {"command": " ".join(sys.argv), "machine": machine(torch.get_default_device()), "quick": a.quick, "threads": a.threads, "min_size": a.min_size,
           "seed": a.seed, "unet_config": a.unet_config, "pseudo_loss_weight": a.pseudo_loss_weight, "pseudo_band_nm": a.pseudo_band_nm,
           "lr_schedule": a.lr_schedule}
    results_path = out / "results.json"

    def record(method: str, budget: str, slices, pred: np.ndarray, clock: Clock, train: tuple[float, float], extra: dict) -> None:
        """``clock``: started before this method's test-volume prediction; ``train``: (CPU s, wall s)
        of its training as its run folders record them (so a resumed or skipped run counts in full)."""
        m = evaluate(pred, test.mask, a.min_size)
        row = {"method": method, "name": NAMES[method] + extra.get("name_suffix", ""), "budget": budget, "annotated_slices": slices,
               "cpu_min": round((train[0] + clock.cpu()) / 60, 1), "wall_min": round((train[1] + clock.wall()) / 60, 1),
               "train_cpu_min": round(train[0] / 60, 1), **m, **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)
        _write(results_path, json.dumps({"run": run, "rows": rows}, indent=1))

    if "d" in methods:
        if a.d_run:
            model, s = load_unet(Path(a.d_run) / "best.pt"), json.loads((Path(a.d_run) / "summary.json").read_text())
            mean, std, summ = s["mean"], s["std"], s
        else:
            model, mean, std, summ = _unet("unet3d", train, None, work / "d", a, val, a.d_minutes, None)
    if "d" in methods and not a.train_only:
        clock = Clock()
        sdf, _ = predict(model, test.image, mean, std)
        record("d", "1", "all", sdf > 0, clock, _spent(summ), {**_stop(summ), "best_step": summ["best_step"],
                                                               "best_val_iou": summ.get("best_val_iou")})

    for budget in a.budgets.split(","):
        slices = budget_slices(train.image.shape[0], budget)
        tag = budget.replace("/", "_")
        b_run = work / f"b_{tag}"
        if a.lane_worker and "b" not in methods and any(m in methods for m in ("a", "c", "b_eq")):
            # Another lane trains (b); this one only starts from it once it is finished.
            while not (b_run / "summary.json").exists():
                time.sleep(30)
        if any(m in methods for m in ("b", "b_eq", "a", "c")):
            b_model, mean, std, b_summ = _unet("unet3d", train, slices, b_run, a, None, a.minutes, a.b_steps)
            if "b" in methods and not a.train_only:
                clock = Clock()
                b_sdf, _ = predict(b_model, test.image, mean, std)
                record("b", budget, slices, b_sdf > 0, clock, _spent(b_summ), _stop(b_summ))
        if "b_eq" in methods:
            eq_run = work / f"b_eq_{tag}"
            continue_run(b_run, eq_run)
            steps, quick_steps = equal_compute_steps(a)
            m_eq, mean, std, summ = _unet("unet3d", train, slices, eq_run, a, None, a.minutes + a.b_eq_minutes, steps,
                                          quick_steps)
            if not a.train_only:
                clock = Clock()
                s_eq, _ = predict(m_eq, test.image, mean, std)
                record("b_eq", budget, slices, s_eq > 0, clock, _spent(summ), _stop(summ))
        if "b2" in methods:
            m2, mean, std, summ = _unet("unet2d", train, slices, work / f"b2_{tag}", a, None, a.minutes, a.b2_steps)
            if not a.train_only:
                clock = Clock()
                s2, _ = predict(m2, test.image, mean, std)
                record("b2", budget, slices, s2 > 0, clock, _spent(summ), _stop(summ))
        for method, memory in (("a", "sdf"), ("c", "mask")):
            if method not in methods:
                continue
            from spatialsam.dualtrack import segment_with_round
            from spatialsam.predictor import fill_from_sdf

            res = _dualtrack(memory, train, slices, b_run, work / f"{method}_{tag}", a)
            if a.train_only:
                continue
            clock = Clock()
            sdf, _ = predict(load_unet(res["unet"]), test.image, res["mean"], res["std"])
            # Round 0's SDF track is (b)'s run: its training is part of this method's cost. Runs
            # written before the dual-track loop recorded CPU time count its wall time instead.
            b_cpu, b_wall = _spent(b_summ)
            dt_cpu = res.get("cpu_s") if res.get("cpu_s") is not None else res["time_s"]
            extra = {"rounds": res["rounds"], "round_metrics": res["metrics"], "dualtrack_time_s": res["time_s"],
                     "dualtrack_cpu_s": res.get("cpu_s"), "b_train_cpu_min": round(b_cpu / 60, 1),
                     "name_suffix": pretrained_name(work / f"{method}_{tag}")}
            spent = (b_cpu + dt_cpu, b_wall + res["time_s"])
            record(method, budget, slices, sdf > 0, clock, spent, extra)
            inst = segment_with_round(work / f"{method}_{tag}", res["propagator"], test.image, sdf)
            record(f"{method}_auto", budget, slices, inst > 0, clock, spent, extra)
            record(f"{method}_fill", budget, slices, fill_from_sdf(inst, sdf) > 0, clock, spent, extra)

    if a.train_only:
        print(f"--train-only: run folders under {work} are trained; run again without it to score them", flush=True)
        return 0
    _write(out / "results.md", table(rows, [run]))
    print((out / "results.md").read_text())
    return 0


def _stop(summary: dict) -> dict:
    """A U-Net row's steps and why its run ended (``table`` footnotes runs a budget cut short)."""
    return {"steps": summary["step"], "stopped": summary.get("stopped"), "max_steps": summary.get("max_steps")}


_CUT = {"max_cpu": "its CPU budget", "max_time": "its time budget", "sigterm": "SIGTERM", "max_steps": "its step ceiling"}


def cut_short(rows: list[dict]) -> list[str]:
    """Markdown lines naming the rows whose training a CPU or time budget (or SIGTERM) ended before
    its step count or, for (d), anything but early stopping ended: their scores are of a shorter run
    than the method asks for (the CPU caps were set on faster CPUs than some machines the benchmark
    runs on; a config's max_steps can end (d) before its validation score stops improving)."""
    notes = []
    for r in rows:
        why = _CUT.get(r.get("stopped") or "")
        if why is None:
            continue
        if r["method"] == "d":
            flag = "max_steps in --unet-config" if r["stopped"] == "max_steps" else "--d-minutes"
            notes.append(f"{r['name']} ({r['budget']}) stopped by {why} at step {r['steps']}, before its validation "
                         f"score stopped improving (raise {flag})")
        elif r.get("max_steps") and r["steps"] < r["max_steps"]:
            flag = "--b-eq-minutes" if r["method"] == "b_eq" else "--minutes"
            notes.append(f"{r['name']} ({r['budget']}) stopped by {why} at step {r['steps']} of {r['max_steps']} (raise {flag})")
    return ["", "**Cut short:** " + "; ".join(notes) + "."] if notes else []


def _spent(summary: dict) -> tuple[float, float]:
    """(CPU s, wall s) of a U-Net run's training from its summary.json (all its processes)."""
    return float(summary.get("cpu_s") or 0.0), float(summary.get("time_s") or 0.0)


def run_lanes(a: argparse.Namespace, methods: list[str], work: Path, out: Path, argv: list[str]) -> int:
    """Run each lane of methods in its own worker process (this script with --jobs 1 and --methods
    set to the lane), all lanes at once, then merge their results into <out>/results.md."""
    lanes = [[m for m in lane.split(",") if m in methods] for lane in a.lanes.split(":")]
    lanes = [lane for lane in lanes if lane]
    missing = sorted(set(methods) - {m for lane in lanes for m in lane})
    if missing:
        raise SystemExit(f"--lanes: methods {missing} are in no lane")
    if len(lanes) > a.jobs:
        raise SystemExit(f"--lanes: {len(lanes)} lanes for --jobs {a.jobs}")
    base = []
    skip = False
    for tok in argv:  # this invocation's arguments minus the ones the workers get their own values of
        if skip:
            skip = False
            continue
        name = tok.split("=")[0]
        if name in ("--jobs", "--lanes", "--methods", "--out"):
            skip = "=" not in tok
            continue
        base.append(tok)
    procs = []
    for i, lane in enumerate(lanes):
        lane_out = out / f"lane_{i}"
        lane_out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, *base, "--jobs", "1", "--lane-worker", "--methods", ",".join(lane), "--out", str(lane_out)]
        log = open(lane_out / "log.txt", "w")
        procs.append((lane, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        print(f"lane {i}: {','.join(lane)} -> {lane_out / 'log.txt'}", flush=True)
    failed = []
    for lane, proc, log in procs:
        if proc.wait() != 0:
            failed.append(",".join(lane))
        log.close()
    results = [str(out / f"lane_{i}" / "results.json") for i in range(len(lanes)) if (out / f"lane_{i}" / "results.json").exists()]
    if results:
        print(merge(results, out / "results.md"))
    if failed:
        print(f"lanes failed: {failed} (see their log.txt)", file=sys.stderr)
        return 1
    return 0


def table(rows: list[dict], runs: list[dict]) -> str:
    """Markdown table of result rows; ``runs``: {"command", "machine", "quick", "threads", "min_size"} per invocation."""
    head = "| method | budget | annotated slices | fg-IoU | Dice | AP@0.5 | AP@0.75 | flicker slices (objects / matched) | CPU min (wall min) |"
    quick = any(r["quick"] for r in runs)
    lines = [f"Lucchi++ budget benchmark{' (QUICK smoke run: crops, a few steps; numbers mean nothing)' if quick else ''}."]
    for r in runs:
        lines.append(f"Command: `{r['command']}` ({r['machine']}, {r['threads']} thread(s) per model).")
    lines += [
        f"AP and flicker on 3D 6-connected components after dropping components under {runs[0]['min_size']} voxels on "
        "both sides; fg-IoU and Dice on the raw masks. CPU and wall minutes: training as the run folders record it "
        "(all processes of a resumed run) plus prediction on the test volume; (a) and (c) include (b)'s training, "
        "which is their round 0 SDF track; each automatic-mode row adds that pass to its method's time.",
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
    lines += cut_short(rows)
    lines += errors_table(rows)
    return "\n".join(lines) + "\n"


def errors_table(rows: list[dict]) -> list[str]:
    """Markdown lines: where each method's voxel errors are (metrics.error_breakdown), including
    what its fg-IoU would be without its largest false object; [] when no row has the breakdown
    (results written before it existed)."""
    rows = [r for r in rows if r.get("errors")]
    if not rows:
        return []
    lines = ["", "Where the errors are (raw masks): false-positive voxels and the share of them in predicted objects "
             "that touch no true mitochondrion; false negatives and the share in true objects missed entirely; the "
             "largest false object (voxels, z/y/x box of the test volume) and the fg-IoU without it (a diagnostic, "
             "not a score: no method knows which object that is).", "",
             "| method | budget | FP voxels (in false objects) | FN voxels (in missed objects) | largest false object | fg-IoU without it |",
             "|" + "---|" * 6]
    for r in rows:
        e = r["errors"]
        big = e["largest_false_object"]
        size = big["voxels"] if big else 0
        where = f"{size}, " + " / ".join(f"{a}-{b}" for a, b in big["box"]) if big else "none"
        without = e["tp"] / max(e["tp"] + e["fp"] + e["fn"] - size, 1)
        lines.append(f"| {r['name']} | {r['budget']} | {e['fp']} ({e['fp_false_objects'] / max(e['fp'], 1):.0%}) "
                     f"| {e['fn']} ({e['fn_missed_objects'] / max(e['fn'], 1):.0%}) | {where} | {without:.3f} |")
    return lines


def run_seed(run: dict) -> int:
    """The seed of a benchmark invocation: recorded in its run (since 2026-12-05), else its command's
    ``--seed`` (else the default, 0)."""
    if "seed" in run:
        return int(run["seed"])
    words = run["command"].split()
    for i, w in enumerate(words):
        if w == "--seed" and i + 1 < len(words):
            return int(words[i + 1])
        if w.startswith("--seed="):
            return int(w.split("=", 1)[1])
    return 0


def spread_table(rows: list[dict]) -> list[str]:
    """Markdown lines: for each method and budget with more than one row (other seeds or repeats),
    the mean and range of its scores; [] when every method has one row. Rows carry "seed" (merge)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:  # a pretrained propagator's (a) or (c) is another method than the same without it
        groups.setdefault((r["method"], r.get("name_suffix", ""), r["budget"]), []).append(r)
    many = [(k, g) for k, g in groups.items() if len(g) > 1]
    if not many:
        return []

    def stat(g: list[dict], key: str, fmt: str) -> str:
        v = np.array([r[key] for r in g], float)
        return f"{v.mean():{fmt}} ({v.min():{fmt}}-{v.max():{fmt}})"

    lines = ["", "Across runs (mean, and the range between the lowest and highest run):", "",
             "| method | budget | runs (seeds) | fg-IoU | Dice | AP@0.5 | AP@0.75 | flicker slices |", "|" + "---|" * 8]
    for (method, suffix, budget), g in many:
        seeds = ", ".join(str(r["seed"]) for r in g)
        lines.append(f"| {NAMES[method]}{suffix} | {budget} | {len(g)} ({seeds}) | {stat(g, 'fg_iou', '.3f')} | {stat(g, 'dice', '.3f')} "
                     f"| {stat(g, 'ap50', '.3f')} | {stat(g, 'ap75', '.3f')} | {stat(g, 'flicker_slices', '.1f')} |")
    return lines


def merge(paths: list[str], out: Path) -> str:
    """One table from several runs' results.json (e.g. methods run as parallel processes, or seeds):
    each row names its seed when the runs have more than one; methods with several rows get their
    mean and range."""
    rows, runs = [], []
    for p in paths:
        d = json.loads(Path(p).read_text())
        seed = run_seed(d["run"])
        rows += [{**r, "seed": seed} for r in d["rows"]]
        runs.append(d["run"])
    if len({r["seed"] for r in rows}) > 1:
        rows = [{**r, "name": f"{r['name']}, seed {r['seed']}"} for r in rows]
    order = {m: i for i, m in enumerate(ROW_ORDER)}
    rows.sort(key=lambda r: (r["budget"] != "1", r["budget"], order[r["method"]], r.get("name_suffix", ""), r["seed"]))
    text = table(rows, runs)
    spread = spread_table(rows)
    if spread:
        text += "\n".join(spread) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, text)
    return text


if __name__ == "__main__":
    sys.exit(main())
