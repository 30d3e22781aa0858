"""`python -m spatialsam`: train-unet, export-unet, export-propagator, eval and adapt (dual-track) subcommands.

Data: Lucchi++ (`--split`, the default) or your own volume (`--image URL --labels URL`, see volume_io)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def parse_box(text: str | None) -> tuple[slice, slice, slice]:
    """"z0:z1,y0:y1,x0:x1" (empty bounds allowed, e.g. "0:32,:,:") -> slices; None -> everything."""
    if not text:
        return (slice(None),) * 3  # type: ignore[return-value]
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(f"box: expected 'z0:z1,y0:y1,x0:x1', got {text!r}")
    out = []
    for p in parts:
        a, sep, b = p.partition(":")
        if not sep:
            raise ValueError(f"box: expected start:stop per axis, got {p!r}")
        try:
            out.append(slice(int(a) if a else None, int(b) if b else None))
        except ValueError as e:
            raise ValueError(f"box: not an integer range {p!r}") from e
    return tuple(out)  # type: ignore[return-value]


def _load(split: str, data_root: str | None, box: str | None):
    from .data import load_lucchi

    v = load_lucchi(split, data_root)
    return v.crop(*parse_box(box))


@dataclass
class InputVolume:
    """What a subcommand trains or scores on: image uint8 [Z, Y, X] (the box), mask bool [Z, Y, X]
    (with annotated slices: nothing but those slices), voxel size (z, y, x) nm, a name for the
    provenance, the box's z-start in the source volume (absolute slice = z0 + index) and the
    annotated slices (absolute z-indices; None: dense labels)."""

    image: np.ndarray
    mask: np.ndarray
    voxel_size_nm: tuple[float, float, float]
    name: str
    z0: int
    slices: list[int] | None

    @property
    def box_slices(self) -> list[int] | None:
        """The annotated slices as indices into ``image``."""
        return None if self.slices is None else [z - self.z0 for z in self.slices]


def input_volume(a: argparse.Namespace, sparse: bool) -> InputVolume:
    """The data a subcommand names: Lucchi++ ``--split`` (default) or ``--image``/``--labels`` URLs
    (volume_io: zarr, n5, precomputed, tiff, png, h5), cut to ``--box``. ``sparse``: the labels count
    only on the annotated slices (``annotated_slices``), which are all that is read of them."""
    if a.image is None:
        for flag in ("labels", "voxel_size", "intensity_window"):
            if getattr(a, flag, None) is not None:
                raise ValueError(f"--{flag.replace('_', '-')}: only with --image (without it the data is Lucchi++ --split)")
        z0 = parse_box(a.box)[0].start or 0
        v = _load(a.split, a.data_root, a.box)
        slices = annotated_slices(a, v.image.shape[0], z0) if sparse else None
        mask = v.mask
        if slices is not None:
            rel = [z - z0 for z in slices]
            mask = np.zeros(v.mask.shape, bool)
            mask[rel] = v.mask[rel]
        return InputVolume(v.image, mask, v.voxel_size_nm, f"lucchi_pp/{a.split}" + (f"[{a.box}]" if a.box else ""), z0, slices)
    from .volume_io import intensity_window, open_volume, to_uint8, voxel_size

    if a.labels is None:
        raise ValueError("--labels: required with --image (the label volume: annotated slices or a dense ground truth)")
    img = open_volume(a.image, "--image")
    window = intensity_window(a.intensity_window) if a.intensity_window is not None else None
    to_uint8(np.zeros(0, img.dtype), window)  # a non-uint8 volume without a window fails before anything is read
    lab = open_volume(a.labels, "--labels")
    if tuple(lab.shape) != tuple(img.shape):
        raise ValueError(f"--labels: shape {tuple(lab.shape)} does not match --image shape {tuple(img.shape)}")
    vs = voxel_size(a.voxel_size.split(","), "z,y,x in nm", "--voxel-size") if a.voxel_size else (img.voxel_size_nm or lab.voxel_size_nm)
    if vs is None:
        raise ValueError("--voxel-size: neither --image nor --labels records a voxel size; give it as z,y,x in nm")
    box = img.bounds(parse_box(a.box), "--box")
    slices = annotated_slices(a, box[0].stop - box[0].start, box[0].start) if sparse else None
    image = to_uint8(img.read(box), window)
    if slices is None:
        mask = lab.read(box) > 0
    else:
        mask = np.zeros(image.shape, bool)
        mask[[z - box[0].start for z in slices]] = lab.read_slices(slices, box[1:]) > 0
    name = f"{a.image} (labels {a.labels})" + (f"[{a.box}]" if a.box else "") + (f" window {a.intensity_window}" if window else "")
    return InputVolume(image, mask, tuple(float(x) for x in vs), name, box[0].start, slices)  # type: ignore[arg-type]


def annotated_slices(a: argparse.Namespace, n_slices: int, z0: int) -> list[int]:
    """Absolute annotated z-indices: ``--slices`` (checked to lie in the box's z-range), else
    ``--budget`` slices of the box. With --image, one of the two must be given explicitly: a default
    budget would silently train on slices nobody annotated."""
    from .data import budget_slices, check_slices

    if a.slices:
        try:
            zs = [int(s) for s in a.slices.split(",")]
        except ValueError as e:
            raise ValueError(f"--slices: expected comma-separated integers, got {a.slices!r}") from e
        try:
            rel = check_slices([z - z0 for z in zs], n_slices)
        except ValueError as e:
            raise ValueError(f"--slices: {e} (z-indices of the volume; the box holds {z0}:{z0 + n_slices})") from e
        return [z + z0 for z in rel]
    if a.budget is None:
        if a.image is not None:
            raise ValueError("--slices: required with --image (the z-indices you annotated), or --budget to take evenly "
                             "spaced slices of a fully labelled volume")
        a.budget = "1/64"
    return [z + z0 for z in budget_slices(n_slices, a.budget)]


def parse_zyx(text: str, name: str) -> tuple[int, int, int]:
    """"32,48,48" -> (32, 48, 48)."""
    try:
        v = tuple(int(x) for x in text.split(","))
    except ValueError as e:
        raise ValueError(f"{name}: expected three comma-separated integers z,y,x, got {text!r}") from e
    if len(v) != 3 or min(v) < 0:
        raise ValueError(f"{name}: expected three non-negative integers z,y,x, got {text!r}")
    return v  # type: ignore[return-value]


def parse_seeds(text: str | None, name: str) -> list[int]:
    """"101,102" -> [101, 102]."""
    try:
        seeds = [int(x) for x in (text or "").split(",")]
    except ValueError as e:
        raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from e
    return seeds


def parse_pseudo_loss_weight(text: str) -> float | None:
    """--pseudo-loss-weight: a number in (0, 1], or "off" (one loss normalisation over annotated and
    pseudo-labelled voxels together, the unanchored SDF track)."""
    if text.strip().lower() == "off":
        return None
    try:
        w = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pseudo-loss-weight: expected a number in (0, 1] or 'off', got {text!r}") from None
    if not 0 < w <= 1:
        raise argparse.ArgumentTypeError(f"--pseudo-loss-weight: must be in (0, 1] or 'off', got {text!r}")
    return w


def add_sdf_track_args(p: argparse.ArgumentParser) -> None:
    """The dual-track SDF track's options (anchoring in rounds >= 1, the learning-rate schedule), shared by
    `adapt` and the benchmark."""
    from .dualtrack import DualTrackConfig
    from .train_unet import LR_SCHEDULES, TrainConfig

    d = DualTrackConfig.__dataclass_fields__
    p.add_argument("--pseudo-loss-weight", type=parse_pseudo_loss_weight, default=d["pseudo_loss_weight"].default,
                   help="SDF track, rounds >= 1: normalise the loss over annotated and pseudo-labelled voxels separately, "
                        "the pseudo-labels' part scaled by this in (0, 1]; 'off': one normalisation over both "
                        "(default %(default)s)")
    p.add_argument("--pseudo-band-nm", type=float, default=d["pseudo_band_nm"].default,
                   help="SDF track, rounds >= 1: pseudo-labelled voxels nearer than this to the pseudo mask's boundary "
                        "get weight 0; 0 = off (default %(default)s)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=TrainConfig.lr_schedule,
                   help="SDF track, every round it trains: the U-Net's learning rate held constant (default) or decayed "
                        "over the round's steps on a cosine to 0")
    p.add_argument("--crop-zyx", type=parse_crop_zyx, default=None,
                   help="every 3D U-Net trained (bootstrap and SDF track): training crops of z,y,x voxels instead of the "
                        "--unet-config's (unet3d_lucchi: 32,192,192); multiples of the network's pooling factor "
                        "(16,16,16 there). 32,128,128 makes a step about 2.5x cheaper (bench/unet_step_cost.py --crops)")


def parse_crop_zyx(text: str) -> tuple[int, int, int]:
    """--crop-zyx: three positive integers z,y,x."""
    try:
        v = parse_zyx(text, "--crop-zyx")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if min(v) < 1:
        raise argparse.ArgumentTypeError(f"--crop-zyx: every size must be >= 1, got {text!r}")
    return v


def crop_overrides(a: argparse.Namespace) -> dict:
    """The 3D U-Net config override --crop-zyx asks for ({} without it); ValueError naming --crop-zyx
    unless the crop is a valid input of --unet-config's network."""
    if a.crop_zyx is None:
        return {}
    from .config import load_train_config
    from .unet3d import UNetConfig, check_input_shape

    net = UNetConfig(**load_train_config(a.unet_config).unet)  # the network's config, without building its weights
    try:
        check_input_shape(net, a.crop_zyx)
    except ValueError:
        raise ValueError(f"--crop-zyx: {','.join(map(str, a.crop_zyx))} is not a valid crop of {a.unet_config!r}: "
                         f"each size must be a multiple of {net.size_multiple()}") from None
    return {"crop_zyx": tuple(a.crop_zyx)}


def sdf_track_overrides(a: argparse.Namespace) -> dict:
    """The U-Net config overrides add_sdf_track_args' options ask for (none for the defaults)."""
    from .train_unet import TrainConfig

    over = {"lr_schedule": a.lr_schedule} if a.lr_schedule != TrainConfig.lr_schedule else {}
    return {**over, **crop_overrides(a)}


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


def add_device_args(q: argparse.ArgumentParser) -> None:
    """--device and --loader-threads, shared by train-unet and adapt."""
    q.add_argument("--device", default="cpu", help="where the networks train: cpu (default), cuda or cuda:N")
    q.add_argument("--loader-threads", type=int, default=0,
                   help="threads cutting the U-Net's next crops while it trains (0 = in the loop, as on a CPU; "
                        "on a GPU a few keep it busy); with > 0 the crops come from per-step random streams")


def device_overrides(a: argparse.Namespace) -> dict:
    """The U-Net config overrides add_device_args' options ask for (none for the defaults)."""
    return {"loader_threads": a.loader_threads} if a.loader_threads else {}


def apply_device_args(a: argparse.Namespace) -> dict:
    """Select --device (ValueError naming it if unusable) and return the U-Net config overrides."""
    from .device import use_device

    if a.loader_threads < 0:
        raise ValueError(f"--loader-threads: must be >= 0, got {a.loader_threads}")
    use_device(a.device, "--device")
    return device_overrides(a)


def cmd_train_unet(a: argparse.Namespace) -> int:
    from .config import load_train_config
    from .data import budget_slices
    from .train_unet import ValData, make_train_data, train_unet

    over = apply_device_args(a)

    cfg = load_train_config(a.config, seed=a.seed, threads=a.threads, max_steps=a.max_steps, max_time_s=a.max_time, **over)
    if a.demo_data:
        from .data import load_demo_volumes, stack_volumes

        vol = stack_volumes(load_demo_volumes(a.demo_data, parse_seeds(a.demo_seeds, "demo-seeds")))
        data_name = f"demo generator (src/demo_volume.ts) seeds {a.demo_seeds}, stacked along z"
        slices = ann = None if a.budget in ("1", "1/1") else budget_slices(vol.image.shape[0], a.budget)
    else:
        vol = input_volume(a, sparse=bool(a.slices) or a.budget not in ("1", "1/1"))
        slices = vol.box_slices
        data_name = vol.name
        ann = vol.slices
    data = make_train_data(vol.image, vol.mask, vol.voxel_size_nm, slices, cfg.truncation_nm)
    val = None
    val_name = None
    if a.demo_data and a.val_demo_seeds:
        v = stack_volumes(load_demo_volumes(a.demo_data, parse_seeds(a.val_demo_seeds, "val-demo-seeds")))
        val = ValData(v.image, v.mask)
        val_name = f"demo generator seeds {a.val_demo_seeds}"
    elif a.val_split:
        box = a.val_box
        if a.val_context:
            if not box:
                raise SystemExit("--val-context: needs --val-box (the scored slices)")
            (z0, z1), rest = (int(v) for v in box.split(",")[0].split(":")), box.split(",")[1:]
            box = ",".join([f"{z0 - a.val_context}:{z1 + a.val_context}", *rest])
        v = _load(a.val_split, a.data_root, box)
        val = ValData(v.image, v.mask, a.val_context)
        val_name = f"lucchi_pp/{a.val_split}[{a.val_box or ':,:,:'}]" + (f", {a.val_context} slices of context on each side" if a.val_context else "")
    t0 = time.time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    # Provenance first, so a run stopped by a kill can still be exported (export-unet).
    run = {
        "annotated_slices": ann if ann is not None else "all",
        "budget": a.budget if not a.slices else f"{len(ann or [])} of {vol.image.shape[0]} slices",
        "data": data_name,
        "validation": val_name,
        "voxel_size_nm": list(vol.voxel_size_nm),
        "command": command_line(a),
    }
    _write_json(out / "run.json", run)
    summary = train_unet(data, cfg, out, val=val, progress=not a.no_progress)
    summary.update(run, wall_s_this_run=round(time.time() - t0, 1))
    _write_json(out / "summary.json", summary)
    print(json.dumps(summary))
    return 0


def run_summary(run: Path) -> dict:
    """Provenance (run.json) merged with summary.json of a finished run (the benchmark writes the two
    apart; train-unet's summary.json repeats run.json); for a run that was killed, summary.json's
    fields come from checkpoint.pt (step, early-stopping state, normalisation)."""
    prov = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else None
    if (run / "summary.json").exists():
        return {**(prov or {}), **json.loads((run / "summary.json").read_text())}
    import torch

    if prov is None or not (run / "checkpoint.pt").exists():
        raise FileNotFoundError(f"{run}: neither summary.json nor run.json + checkpoint.pt")
    ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    st = ck["state"]
    return {
        **prov,
        "step": st["step"],
        "best_val_iou": st["best_val_iou"] if st["best_step"] >= 0 else None,
        "best_step": st["best_step"],
        "stopped": "killed (exported from the last checkpoint)",
        "time_s": round(st["time_s"], 1),
        "mean": ck["norm"]["mean"],
        "std": ck["norm"]["std"],
    }


def cmd_export_unet(a: argparse.Namespace) -> int:
    from .export_unet import export_unet, onnx_parity, server_blocks
    from .train_unet import load_unet

    run = Path(a.run)
    r = adapt_round(run, a.round)
    if r is not None:
        weights, summary = adapt_summary(run, r, "unet")
        cfg = json.loads((weights.parent / "config.json").read_text())
    else:
        weights, summary, cfg = run / "best.pt", run_summary(run), json.loads((run / "config.json").read_text())
    model = load_unet(weights)
    training = {
        "data": summary["data"],
        "budget": summary["budget"],
        "annotated_slices": summary["annotated_slices"],
        "seed": cfg["seed"],
        "command": summary["command"],
        "time_s": summary["time_s"],
        "steps": summary["step"],
        "best_step": summary["best_step"],
        "stopped": summary["stopped"],
        "validation": summary.get("validation"),
        "sdf": {"truncation_nm": cfg["truncation_nm"], "transform": "sdf = clip(d_nm / T, -1, 1), d > 0 inside; inverse d_nm = T * sdf"},
        "metrics": {"val_fg_iou": summary.get("best_val_iou")},
    }
    if "dual_track" in summary:
        training.update(dual_track=summary["dual_track"], cpu_s=summary.get("cpu_s"))
    if summary["budget"] in ("1", "1/1"):
        training["note"] = "trained on all labels of its data: never a starting point for the sparse-budget methods (a)-(c)"
    if a.eval_split:
        from .metrics import evaluate
        from .train_unet import predict

        v = _load(a.eval_split, a.data_root, a.eval_box)
        s, _ = predict(model, v.image, summary["mean"], summary["std"])
        m = evaluate(s > 0, v.mask)
        training["metrics"].update({f"{a.eval_split}_{k}": v_ for k, v_ in m.items()})
        training["metrics"]["evaluated_on"] = f"lucchi_pp/{a.eval_split}[{a.eval_box or ':,:,:'}]"
    context = parse_zyx(a.context, "context") if a.context else None
    if a.patch:
        patch = parse_zyx(a.patch, "patch")
    elif context is None and model.cfg.spatial_dims == 3:
        # The server runs the graph on inputs of the patch's shape: by default the blocks every
        # evaluation here uses (train_unet.predict: 16-slice blocks, halo FAST_HALO_ZYX), since a
        # U-Net trained on thin crops scores worse on deeper inputs (models/bench/unet_blocks.py).
        context, patch = server_blocks(model.cfg)
    else:
        patch = tuple(cfg["crop_zyx"])
    if a.context:
        from .export_unet import blockwise_deviation
        from .train_unet import normalise_image

        # Blockwise with the chosen halo against one pass over a whole test slab.
        v = _load("test", a.data_root, "40:104,0:256,0:384")
        block = tuple(p - 2 * c for p, c in zip(patch, context))
        x = normalise_image(v.image, summary["mean"], summary["std"]).numpy()
        training["blockwise_check"] = blockwise_deviation(model, x, block, context)
    doc = export_unet(
        model,
        a.out,
        a.name,
        summary["mean"],
        summary["std"],
        tuple(summary["voxel_size_nm"]),
        patch,
        training,
        context,
    )
    mult = model.cfg.size_multiple()
    rng = np.random.default_rng(0)
    err = onnx_parity(model, Path(a.out) / "model.onnx", rng.normal(size=(1, 1, *(2 * m for m in mult))).astype(np.float32))
    print(json.dumps({"out": str(a.out), "sha256": doc["sha256"], "parity_max_abs": err, "metrics": training["metrics"]}))
    return 0 if err < 1e-4 else 1


def adapt_round(run: Path, round_index: int | None) -> int | None:
    """The finished round of an ``adapt`` folder (it holds state.json) that ``--round`` names (default:
    the last finished); None for any other run folder, where ``--round`` is refused."""
    if not (run / "state.json").exists():
        if round_index is not None:
            raise ValueError(f"--round: {run} is not an adapt folder (no state.json)")
        return None
    done = int(json.loads((run / "state.json").read_text())["done"])
    r = done if round_index is None else round_index
    if not 0 <= r <= done:
        raise ValueError(f"--round: {run} has finished rounds 0-{done}, got {r}")
    return r


def round_weights(run: Path, r: int) -> tuple[Path, float, float]:
    """(U-Net weights, normalisation mean, std) of finished round ``r`` of an adapt folder: the
    normalisation that round trained and predicted with (round 0 of a loop started from a bootstrap
    run: that run's)."""
    from .dualtrack import round_unet_path

    boot = json.loads((run / "config.json").read_text()).get("bootstrap_unet")
    weights = round_unet_path(run, r, Path(boot) if boot else None)
    if r == 0 and boot:  # the bootstrap run's own normalisation, which every round reuses
        s = run_summary(Path(boot))
        return weights, float(s["mean"]), float(s["std"])
    import torch

    norm = torch.load(weights.parent / "checkpoint.pt", map_location="cpu", weights_only=False)["norm"]
    return weights, float(norm["mean"]), float(norm["std"])


def eval_weights(run: Path, round_index: int | None) -> tuple[Path, float, float]:
    """(U-Net weights, normalisation mean, std) that ``eval --run`` scores: a train-unet run folder, or
    an ``adapt`` folder's round ``round_index`` (default: the last finished)."""
    r = adapt_round(run, round_index)
    if r is None:
        s = run_summary(run)
        return run / "best.pt", float(s["mean"]), float(s["std"])
    return round_weights(run, r)


def adapt_summary(run: Path, r: int, track: str) -> tuple[Path, dict]:
    """(weights, provenance) of finished round ``r`` of an ``adapt`` folder for export: ``track``
    "unet" -> the SDF track's best.pt with the normalisation it trained with, "propagator" -> the
    mask track's checkpoint. The provenance is run.json (data, annotated slices, budget, voxel size,
    command) plus the round, its time and the per-round log."""
    if not (run / "run.json").exists():
        raise FileNotFoundError(f"--run: {run / 'run.json'} not found (adapt folders record their data there since "
                                "2026-12-04; benchmark folders since then too)")
    rounds = [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines() if x.strip()][: r + 1]
    summary = {
        **json.loads((run / "run.json").read_text()),
        "time_s": rounds[-1]["time_s"],
        "cpu_s": rounds[-1].get("cpu_s"),
        "best_step": None,
        "stopped": f"dual-track round {r} (no validation: only the annotated slices are labelled)",
        "validation": None,
        "dual_track": {"round": r, "config": json.loads((run / "config.json").read_text()), "rounds": rounds},
    }
    if track == "propagator":
        return run / f"round_{r}" / "propagator" / "propagator_last.pt", summary
    import torch

    weights, mean, std = round_weights(run, r)
    summary.update(mean=mean, std=std, step=int(torch.load(weights, map_location="cpu", weights_only=False)["step"]))
    return weights, summary


def cmd_export_propagator(a: argparse.Namespace) -> int:
    from .export_propagator import check_parity, export_propagator
    from .train_propagator import load_checkpoint

    if (a.run is None) == (a.checkpoint is None):
        raise ValueError("--run: give either --run (an adapt folder) or --checkpoint (a propagator checkpoint .pt)")
    training: dict = {}
    voxel = None
    if a.run is not None:
        run = Path(a.run)
        r = adapt_round(run, a.round)
        if r is None:
            raise ValueError(f"--run: {run} is not an adapt folder (no state.json)")
        ckpt, training = adapt_summary(run, r, "propagator")
        voxel = training["voxel_size_nm"]
    else:
        if a.round is not None:
            raise ValueError("--round: only with --run")
        ckpt = Path(a.checkpoint)
    if not ckpt.exists():
        raise FileNotFoundError(f"--checkpoint: {ckpt} not found")
    model, meta = load_checkpoint(ckpt)
    training = {**meta, **training}
    export_propagator(model, a.out, training=training, voxel_size_nm=voxel, name=a.name)
    diffs = check_parity(model, a.out)
    worst = max(diffs.values())
    print(json.dumps({"out": str(a.out), "checkpoint": str(ckpt), "parity_max_abs": worst}))
    return 0 if worst < 1e-4 else 1


def cmd_eval(a: argparse.Namespace) -> int:
    from .metrics import evaluate
    from .train_unet import load_unet, predict

    if a.min_size < 0:
        raise ValueError(f"--min-size: must be >= 0, got {a.min_size}")
    run = Path(a.run)
    r = adapt_round(run, a.round)
    if a.auto and r is None:
        raise ValueError(f"--auto: {run} is not an adapt folder (no state.json): it holds no propagator")
    weights, mean, std = eval_weights(run, a.round)
    model = load_unet(weights)
    v = input_volume(a, sparse=False)
    s, _ = predict(model, v.image, mean, std)
    scores = evaluate(s > 0, v.mask, a.min_size)
    if a.auto:  # the round's propagator in automatic mode, as the benchmark's "(a) auto" / "(a) filled" rows
        from .dualtrack import segment_with_round
        from .predictor import fill_from_sdf

        from .metrics import evaluate_instances

        inst = segment_with_round(run, run / f"round_{r}" / "propagator" / "propagator_last.pt", v.image, s)
        scores["auto"] = evaluate_instances(inst, v.mask, a.min_size)
        scores["fill"] = evaluate_instances(fill_from_sdf(inst, s), v.mask, a.min_size)
    print(json.dumps(scores))
    return 0


def cmd_adapt(a: argparse.Namespace) -> int:
    from .dualtrack import DualTrackConfig, record_run, run_dualtrack

    over = {**apply_device_args(a), **sdf_track_overrides(a)}
    for flag in ("pretrained_unet", "pretrained_propagator"):
        if getattr(a, flag) is not None and not Path(getattr(a, flag)).is_file():
            raise ValueError(f"--{flag.replace('_', '-')}: {getattr(a, flag)} not found")
    vol = input_volume(a, sparse=True)
    slices = vol.box_slices
    assert slices is not None
    out = Path(a.out)
    cfg = DualTrackConfig(rounds=a.rounds, seed=a.seed, threads=a.threads, unet_config=a.unet_config, unet_overrides=over,
                          bootstrap_unet_steps=a.bootstrap_unet_steps, unet_steps=a.unet_steps,
                          bootstrap_mask_steps=a.bootstrap_mask_steps, mask_steps=a.mask_steps, propagator_memory=a.memory,
                          pseudo_loss_weight=a.pseudo_loss_weight, pseudo_band_nm=a.pseudo_band_nm)
    # Provenance (what export-unet / export-propagator record); a resumed run must be on the same data.
    record_run(out, {
        "data": vol.name,
        "annotated_slices": vol.slices,
        "budget": a.budget if not a.slices else f"{len(slices)} of {vol.image.shape[0]} slices",
        "voxel_size_nm": list(vol.voxel_size_nm),
        "command": command_line(a),
    }, "--out")
    # vol.mask holds the annotated slices only: nothing else of the labels was read.
    result = run_dualtrack(vol.image, vol.mask, slices, vol.voxel_size_nm, cfg, out, progress=not a.no_progress,
                           bootstrap_unet=a.bootstrap_unet, pretrained_unet=a.pretrained_unet,
                           pretrained_propagator=a.pretrained_propagator)
    print(json.dumps({k: v for k, v in result.items() if k != "pseudo"}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m spatialsam", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def data_args(q: argparse.ArgumentParser, split: str = "train") -> None:
        q.add_argument("--image", help="your EM volume (uint8, or any type with --intensity-window) instead of Lucchi++: zarr:///d/a.zarr, n5:///d/a.n5, "
                                       "precomputed:///d/em, tiff:///d/stack.tif, png:///d/slices/, h5:///d/a.h5#/raw "
                                       "(or a bare path); ?voxel_size_nm=z,y,x after the path overrides the file's")
        q.add_argument("--labels", help="with --image: the label volume (same forms, same shape; > 0 = mitochondrion)")
        q.add_argument("--voxel-size", help="with --image: z,y,x in nm (default: what the image or label file records)")
        q.add_argument("--intensity-window", help="with --image: LOW,HIGH, the raw values shown as black and white, mapped to "
                                                  "0..255 as the server maps them (required unless the image is uint8)")
        q.add_argument("--data-root", help="folder holding lucchi_pp/ (default: $SPATIALSAM_DATA or <repo>/../shared/data)")
        q.add_argument("--split", default=split, choices=["train", "test"], help=f"Lucchi++ split (default {split})")
        q.add_argument("--box", help="sub-volume z0:z1,y0:y1,x0:x1 (default: whole volume); only the box is read")
        q.add_argument("--no-progress", action="store_true", help="no tqdm bars")

    t = sub.add_parser("train-unet", help="train the 3D or 2D U-Net on Lucchi++ (full or sparse labels)")
    data_args(t)
    t.add_argument("--config", default="unet3d_lucchi", help="built-in config name or YAML path (default unet3d_lucchi)")
    t.add_argument("--budget", default="1", help='annotated fraction of slices, e.g. "1/64" (default 1 = all labels)')
    t.add_argument("--slices", help="annotated z-indices of the volume, comma separated (overrides --budget)")
    t.add_argument("--out", required=True, help="run folder: checkpoint.pt, best.pt, log.jsonl, summary.json; resumes if present")
    t.add_argument("--val-split", choices=["train", "test"], help="held-out split for early stopping")
    t.add_argument("--val-box", help="sub-volume of the validation split")
    t.add_argument("--val-context", type=int, default=0,
                   help="also read this many slices before and after --val-box's z-range as input (not scored)")
    t.add_argument("--demo-data", help="train on demo volumes written by server/bin/write_demo_training.ts (this folder) instead of Lucchi++")
    t.add_argument("--demo-seeds", help="with --demo-data: training seeds, e.g. 101,102,103")
    t.add_argument("--val-demo-seeds", help="with --demo-data: held-out seeds for early stopping, e.g. 201")
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int, help="torch.set_num_threads")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--max-time", type=float, help="training time budget in seconds")
    add_device_args(t)
    t.set_defaults(func=cmd_train_unet)

    e = sub.add_parser("export-unet", help="export a trained 3D U-Net run to ONNX + model.json")
    e.add_argument("--run", required=True, help="run folder written by train-unet, or an adapt folder (its SDF track)")
    e.add_argument("--round", type=int, help="adapt folder only: the round whose U-Net to export (default: the last finished)")
    e.add_argument("--out", required=True, help="model folder, e.g. models/sdf_unet3d_lucchi")
    e.add_argument("--name", required=True, help="manifest name")
    e.add_argument("--data-root")
    e.add_argument("--eval-split", choices=["train", "test"], help="also evaluate on this split and record the metrics")
    e.add_argument("--eval-box", help="sub-volume of the evaluation split")
    e.add_argument("--patch", help="patch_shape_zyx, the input shape the server runs the graph on, e.g. 48,320,320 (default: with "
                   "no --context either, a 16x256x256 block plus the evaluation halo 16,32,32, rounded up to the size multiple, "
                   "as train_unet.predict scores; else the training crop)")
    e.add_argument("--context", help="halo per side, e.g. 16,32,32 (default: with no --patch either, the evaluation halo above; "
                                     "with --patch, half the receptive field); when given, the deviation from whole-volume "
                                     "inference is measured on a Lucchi++ test slab and recorded")
    e.set_defaults(func=cmd_export_unet)

    x = sub.add_parser("export-propagator", help="export a propagator (an adapt folder's mask track) to ONNX + manifests")
    x.add_argument("--run", help="adapt folder: its mask track")
    x.add_argument("--round", type=int, help="with --run: the round (default: the last finished)")
    x.add_argument("--checkpoint", help="instead of --run: a checkpoint .pt written by train_propagator")
    x.add_argument("--out", required=True, help="output folder: three graphs + propagator.json")
    x.add_argument("--name", required=True, help="the propagator's name (a server with several picks by it)")
    x.set_defaults(func=cmd_export_propagator)

    v = sub.add_parser("eval", help="evaluate a trained U-Net run on a Lucchi++ split (JSON metrics)")
    data_args(v, "test")
    v.add_argument("--run", required=True, help="run folder written by train-unet, or an adapt folder (its SDF track)")
    v.add_argument("--round", type=int, help="adapt folder only: the round whose U-Net to score (default: the last finished)")
    v.add_argument("--min-size", type=int, default=0,
                   help="also score with 3D components under this many voxels removed (the benchmark's 1000)")
    v.add_argument("--auto", action="store_true",
                   help="adapt folder only: also score the round's propagator in automatic mode (seeds and SDF memory "
                        "from the round's U-Net): its masks alone (\"auto\") and with the SDF's unclaimed foreground filled (\"fill\")")
    v.set_defaults(func=cmd_eval)

    d = sub.add_parser("adapt", help="dual-track training from sparse slice annotations")
    data_args(d)
    d.add_argument("--budget", help="annotated fraction of the box's slices, evenly spaced (Lucchi++ default 1/64)")
    d.add_argument("--slices", help="the annotated z-indices of the volume, comma separated (overrides --budget; "
                                    "required with --image unless --budget is given)")
    d.add_argument("--out", required=True, help="run folder; resumes from its last finished round")
    from .dualtrack import DualTrackConfig

    dflt = DualTrackConfig.__dataclass_fields__
    d.add_argument("--rounds", type=int, default=dflt["rounds"].default, help="rounds after the bootstrap round (default %(default)s)")
    d.add_argument("--unet-config", default=dflt["unet_config"].default,
                   help="the SDF track's training config (name or YAML; default %(default)s)")
    d.add_argument("--bootstrap-unet-steps", type=int, default=1500, help="SDF-track steps in the bootstrap round")
    d.add_argument("--unet-steps", type=int, default=2400, help="SDF-track steps per later round")
    d.add_argument("--bootstrap-mask-steps", type=int, default=800, help="mask-track steps in the bootstrap round")
    d.add_argument("--mask-steps", type=int, default=400, help="mask-track steps per later round")
    d.add_argument("--memory", choices=["sdf", "mask"], default="sdf",
                   help="the propagator's memory: sdf (Spatial-SAM) or mask (SAM2's, the ablation)")
    d.add_argument("--bootstrap-unet", help="a finished train-unet run on the same annotated slices: round 0's SDF track")
    d.add_argument("--pretrained-unet", help="start round 0's SDF track from these U-Net weights (best.pt or checkpoint.pt "
                                             "of a train-unet run with the same --unet-config, e.g. on other data); "
                                             "declared in config.json and the exported manifests")
    d.add_argument("--pretrained-propagator", help="start round 0's mask track from this train_propagator checkpoint "
                                                   "(same --memory); declared likewise")
    add_sdf_track_args(d)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=1)
    add_device_args(d)
    d.set_defaults(func=cmd_adapt)
    return p


def command_line(a: argparse.Namespace) -> str:
    """The command that made a run, as recorded in its provenance (the arguments main parsed)."""
    return "python -m spatialsam " + " ".join(shlex.quote(x) for x in a.argv)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
