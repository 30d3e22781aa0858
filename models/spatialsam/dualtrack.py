"""Dual-track training from sparse slice annotations (`python -m spatialsam adapt`).

Tracks: the SDF track is the 3D U-Net (train_unet.py); the mask track is the SAM2-style
propagator with SDF memory (train_propagator.py, by the propagator's owners). Data flow:

  round 0 (bootstrap): U-Net on the annotated slices only -> SDF; propagator trained on the
      annotated slices with that SDF as memory; pseudo-labels = propagate_volume from the
      annotated slices, kept where it agrees with the U-Net.
  round r >= 1: SDF track: U-Net (continued from round r-1) on the pseudo-labels' 3D SDF,
      weighted by confidence, annotated slices weighted highest; mask track: propagator
      (continued) on the pseudo-labels with the *current* U-Net's SDF as memory; refresh the
      pseudo-labels from both tracks' agreement.

Pseudo-labels: P_u = sigmoid(U-Net fg logit), P_p = propagated probability. Foreground where
both > 0.5; confidence = min(|2 P_u - 1|, |2 P_p - 1|) where they agree, 0 where they disagree;
weight = pseudo_weight * confidence, background weights then scaled down (never up) so that the
pseudo-labels' weighted background/foreground ratio is at most the annotated slices'; annotated
slices: their labels with weight annotated_weight.
Only ``labels`` on ``annotated_slices`` are ever read.

On disk (``out_dir``): round_<r>/unet/ (a train_unet run), round_<r>/propagator/ (mask-track
checkpoint), round_<r>/pseudo.npz, state.json (last finished round), rounds.jsonl (per-round
metrics). A killed run resumes inside the unfinished round (both trainers resume themselves).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .atomic_files import replace_with, write_text
from .data import check_slices, check_volume
from .metrics import foreground_iou
from .sdf import sdf_target
from .train_unet import TrainConfig, TrainData, make_train_data, predict, train_unet
from .unet3d import UNet, UNetConfig


@dataclass
class DualTrackConfig:
    """Dual-track schedule as data. Compute per round: unet_steps U-Net crops and mask_steps
    propagator batches; bootstrap (round 0) uses the same step counts."""

    rounds: int = 3  # rounds after the bootstrap
    seed: int = 0
    threads: int = 1
    # The unet3d_lucchi architecture (see configs/unet3d_lucchi.yaml for why no normalisation).
    unet: dict = field(default_factory=lambda: {"channels": [8, 16, 32, 64], "pool": [[2, 2, 2], [2, 2, 2], [2, 2, 2]], "norm": "none"})
    unet_crop_zyx: tuple[int, int, int] = (32, 96, 96)
    unet_batch_size: int = 1
    unet_steps: int = 300
    unet_lr: float = 1e-3
    propagator: str = "compact"
    mask_steps: int = 300
    mask_batch_size: int = 4
    mask_crop: int = 128
    mask_run_length: int = 6
    annotated_weight: float = 1.0
    pseudo_weight: float = 0.5
    truncation_nm: float = 100.0

    def __post_init__(self) -> None:
        self.unet_crop_zyx = tuple(int(c) for c in self.unet_crop_zyx)  # type: ignore[assignment]
        for name in ("rounds", "unet_steps", "mask_steps", "threads"):
            if int(getattr(self, name)) < (0 if name == "rounds" else 1):
                raise ValueError(f"{name}: out of range ({getattr(self, name)})")
        if not 0 < self.pseudo_weight <= self.annotated_weight:
            raise ValueError("pseudo_weight: must be in (0, annotated_weight]")

    def unet_train_config(self, round_index: int) -> TrainConfig:
        return TrainConfig(
            model="unet3d",
            unet=dict(self.unet),
            crop_zyx=self.unet_crop_zyx,
            batch_size=self.unet_batch_size,
            lr=self.unet_lr,
            max_steps=self.unet_steps,
            checkpoint_every=max(1, min(50, self.unet_steps)),
            seed=self.seed * 1000 + round_index,
            threads=self.threads,
            truncation_nm=self.truncation_nm,
        )


def agreement_pseudo_labels(
    p_unet: np.ndarray,
    p_prop: np.ndarray,
    labels: np.ndarray,
    annotated_slices: list[int],
    annotated_weight: float = 1.0,
    pseudo_weight: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """(pseudo mask bool [Z, Y, X], weight float32 [Z, Y, X]) from both tracks' probabilities
    (float32 [Z, Y, X] in [0, 1]); see the module docstring for the rule."""
    if p_unet.shape != p_prop.shape or labels.shape != p_unet.shape:
        raise ValueError(f"p_prop: shapes {p_unet.shape}, {p_prop.shape}, labels {labels.shape} differ")
    fg_u, fg_p = p_unet > 0.5, p_prop > 0.5
    agree = fg_u == fg_p
    conf = np.minimum(np.abs(2 * p_unet - 1), np.abs(2 * p_prop - 1)).astype(np.float32)
    weight = np.where(agree, pseudo_weight * conf, 0.0).astype(np.float32)
    mask = fg_u & fg_p
    # Keep the annotated slices' class ratio: a weak mask track "agrees" on background wherever it
    # did not reach, and unbalanced background weight drove the U-Net to predict background only.
    ann = np.zeros(mask.shape[0], bool)
    ann[annotated_slices] = True
    lab = labels[annotated_slices] > 0
    ratio = (lab.size - lab.sum()) / max(int(lab.sum()), 1)
    wf = float(weight[~ann][mask[~ann]].sum())
    wb = float(weight[~ann][~mask[~ann]].sum())
    if wb > 0:
        scale = min(1.0, ratio * wf / wb)
        weight[~ann] = np.where(mask[~ann], weight[~ann], weight[~ann] * scale)
    mask[annotated_slices] = lab
    weight[annotated_slices] = annotated_weight
    return mask, weight


def _unet_probability(model: UNet, image: np.ndarray, mean: float, std: float) -> tuple[np.ndarray, np.ndarray]:
    """(normalised SDF float32 [Z, Y, X], foreground probability float32 [Z, Y, X])."""
    sdf, logit = predict(model, image, mean, std)
    return sdf, (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)


def run_dualtrack(
    image: np.ndarray,
    labels: np.ndarray,
    annotated_slices: list[int],
    voxel_size_nm: tuple[float, float, float],
    cfg: DualTrackConfig,
    out_dir: Path | str,
    progress: bool = True,
    eval_mask: np.ndarray | None = None,
    _kill_after_round: int | None = None,
) -> dict:
    """Run (or resume) the dual-track loop. image uint8 [Z, Y, X]; labels [Z, Y, X] (bool or ids;
    read only on ``annotated_slices``). ``eval_mask`` (optional, bool [Z, Y, X]) is used only to
    log the pseudo-labels' and both tracks' fg-IoU per round, never for training.

    Returns {"rounds": finished rounds incl. bootstrap, "unet": path of the final U-Net weights
    (best.pt), "propagator": path of the final propagator checkpoint, "mean", "std", "metrics":
    last round's metrics, "time_s"}.
    """
    from .propagator import build_propagator, load_propagator_config
    from .train_propagator import TrainConfig as MaskTrainConfig
    from .train_propagator import load_checkpoint, propagate_volume, train_mask_track

    check_volume(image, "image")
    if image.dtype != np.uint8:
        raise ValueError(f"image: expected uint8, got {image.dtype}")
    if labels.shape != image.shape:
        raise ValueError(f"labels: shape {labels.shape} does not match image shape {image.shape}")
    if eval_mask is not None and eval_mask.shape != image.shape:
        raise ValueError(f"eval_mask: shape {eval_mask.shape} does not match image shape {image.shape}")
    slices = check_slices(annotated_slices, image.shape[0])
    if not any((labels[z] > 0).any() for z in slices):
        raise ValueError("labels: no foreground on any annotated slice; nothing to propagate")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    state_path, log_path = out / "state.json", out / "rounds.jsonl"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"done": -1, "time_s": 0.0}
    if state["done"] < 0:
        write_text(out / "config.json", json.dumps({**asdict(cfg), "annotated_slices": slices}, indent=1))
        if log_path.exists():
            log_path.unlink()
    sparse = make_train_data(image, labels > 0, voxel_size_nm, slices, cfg.truncation_nm)
    mean, std = float(sparse.mean), float(sparse.std)  # type: ignore[arg-type]
    ann_labels = np.zeros(image.shape, np.uint8)
    ann_labels[slices] = labels[slices] > 0

    t0 = time.monotonic() - state["time_s"]
    total = cfg.rounds + 1
    bar = tqdm(total=total, initial=state["done"] + 1, desc="dual-track rounds", disable=not progress)
    metrics: dict = {}
    for r in range(state["done"] + 1, total):
        rdir = out / f"round_{r}"
        rdir.mkdir(exist_ok=True)
        # SDF track.
        if r == 0:
            data, init = sparse, None
        else:
            prev = np.load(out / f"round_{r - 1}" / "pseudo.npz")
            target = sdf_target(prev["mask"], voxel_size_nm, cfg.truncation_nm)
            data = TrainData(image, target, prev["weight"], mean, std)
            init = torch.load(out / f"round_{r - 1}" / "unet" / "best.pt", weights_only=False)["model"]
        u = train_unet(data, cfg.unet_train_config(r), rdir / "unet", progress=progress, init_weights=init)
        ck = torch.load(rdir / "unet" / "best.pt", weights_only=False)
        unet = UNet(UNetConfig(**ck["unet_config"]))
        unet.load_state_dict(ck["model"])
        sdf, p_unet = _unet_probability(unet, image, mean, std)
        # Mask track, with the current U-Net's SDF as memory.
        if r == 0:
            prop = build_propagator(load_propagator_config(cfg.propagator, memory="sdf", seed=cfg.seed))
        else:
            prop, _ = load_checkpoint(out / f"round_{r - 1}" / "propagator" / "propagator_last.pt")
        if r == 0:
            mtrain_labels, mweights = ann_labels, sparse.weight
        else:
            mtrain_labels, mweights = prev["mask"].astype(np.uint8), prev["weight"]
        mcfg = MaskTrainConfig(
            steps=cfg.mask_steps,
            batch_size=cfg.mask_batch_size,
            crop=cfg.mask_crop,
            run_length=cfg.mask_run_length,
            seed=cfg.seed * 1000 + r,
            ckpt_every=max(1, min(50, cfg.mask_steps)),
        )
        hist = train_mask_track(prop, image, sdf, mtrain_labels, mweights, mcfg, ckpt_dir=rdir / "propagator", progress=progress)
        prop.eval()
        with torch.no_grad():
            p_prop = propagate_volume(prop, image, sdf, slices, ann_labels, crop=cfg.mask_crop)
        mask, weight = agreement_pseudo_labels(p_unet, p_prop, ann_labels, slices, cfg.annotated_weight, cfg.pseudo_weight)
        replace_with(rdir / "pseudo.npz", lambda tmp: np.savez_compressed(tmp, mask=mask, weight=weight), suffix=".tmp.npz")
        metrics = {
            "round": r,
            "time_s": round(time.monotonic() - t0, 1),
            "unet_steps": u["step"],
            "mask_steps": len(hist),
            "mask_loss_last": float(np.mean([h["loss"] for h in hist[-10:]])) if hist else None,
            "pseudo_fg_fraction": float(mask.mean()),
            "agreement": float(((p_unet > 0.5) == (p_prop > 0.5)).mean()),
            "mean_weight": float(weight.mean()),
        }
        if eval_mask is not None:
            metrics.update(
                pseudo_iou=foreground_iou(mask, eval_mask),
                unet_iou=foreground_iou(sdf > 0, eval_mask),
                prop_iou=foreground_iou(p_prop > 0.5, eval_mask),
            )
        with open(log_path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        state = {"done": r, "time_s": metrics["time_s"]}
        write_text(state_path, json.dumps(state, indent=1))
        bar.update(1)
        if _kill_after_round is not None and r == _kill_after_round:
            bar.close()
            return {"rounds": r + 1, "killed": True}
    bar.close()
    last = out / f"round_{total - 1}"
    if not metrics and log_path.exists():
        metrics = json.loads(log_path.read_text().splitlines()[-1])
    return {
        "rounds": total,
        "unet": str(last / "unet" / "best.pt"),
        "propagator": str(last / "propagator" / "propagator_last.pt"),
        "mean": mean,
        "std": std,
        "metrics": metrics,
        "time_s": state["time_s"],
    }
