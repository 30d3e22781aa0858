"""Dual-track training from sparse slice annotations (`python -m spatialsam adapt`).

Tracks: the SDF track is the 3D U-Net (train_unet.py); the mask track is the SAM2-style
propagator with SDF memory (train_propagator.py). Data flow:

  round 0 (bootstrap): SDF track: U-Net on the annotated slices only (or a finished run of the
      same, e.g. the benchmark's method (b)) -> SDF and foreground probability P_u of the whole
      volume. Mask track: the propagator learns to follow objects through z on the U-Net's
      confident masks (annotated slices: their labels, weighted highest), with that SDF as memory.
      Then every object of the annotated slices is prompted by its true mask and propagated
      through the volume both ways -> P_p. Pseudo-labels from both (below).
  round r >= 1: SDF track: U-Net (continued) on the 3D SDF of round r-1's pseudo-labels,
      confidence weighted; mask track: propagator (continued) on those pseudo-labels with the
      *current* U-Net's SDF as memory; propagate from the annotated slices again; new pseudo-labels.

Pseudo-labels (``fuse_pseudo_labels``): each track corrects the other where it is the stronger one.
The U-Net draws the boundaries (its mask beats the propagated one voxel for voxel: Lucchi++ train,
1/64, bootstrap round: fg-IoU 0.796 vs 0.757; the propagator's masks miss parts, recall 0.82-0.88),
the mask track decides which objects are real: mitochondria are long in z, so nearly every
mitochondrion crosses an annotated slice (98.8% of Lucchi++ train's foreground voxels lie in 3D
objects touching slices 27, 82, 137) and the propagator carries those objects' true masks through z.
So the pseudo mask is the U-Net's mask (P_u > 0.5) restricted to its 3D components that overlap a
propagated object (P_p > 0.5); components no propagated object reaches become background (on
Lucchi++ that removed 537 of the U-Net's 660 false objects and 2 true ones of 5 voxels: fg-IoU 0.796
-> 0.809). Weight: pseudo_weight * |2 P_u - 1|, times disagreement_weight where the two tracks
disagree on a voxel; dropped components count fully as background; annotated slices keep their
labels with weight annotated_weight (the highest). Only ``labels`` on ``annotated_slices`` are read.
With ``pseudo_loss_weight`` set, the SDF track of rounds >= 1 normalises its loss over annotated and
pseudo-labelled voxels separately (train_unet.TrainData.anchor_slices); ``pseudo_band_nm`` zeroes
the pseudo-labels' weight near their own boundary (``sdf_track_weight``).

On disk (``out_dir``): round_<r>/unet/ (a train_unet run; absent in round 0 with a bootstrap
U-Net), round_<r>/propagator/ (mask-track checkpoint), round_<r>/pseudo.npz, state.json (last
finished round), rounds.jsonl (per-round metrics; parts_s: wall seconds of the round's parts),
config.json. A killed run resumes inside the unfinished round (both trainers resume themselves).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.special import expit
from tqdm import tqdm

from .atomic_files import replace_with, write_text
from .data import check_slices, check_volume
from .metrics import foreground_iou
from .sdf import sdf_target
from .train_unet import TrainConfig, TrainData, load_unet, make_train_data, predict, train_unet


@dataclass
class DualTrackConfig:
    """Dual-track schedule as data. The SDF track trains with the named U-Net config (plus
    ``unet_overrides``) for ``bootstrap_unet_steps`` steps in round 0 and ``unet_steps`` in each
    later round; the mask track for ``bootstrap_mask_steps`` / ``mask_steps`` batches."""

    # Rounds after the bootstrap. Lucchi++ 1/64, learned stem, anchored (seed 0, 2026-12-03): test fg-IoU
    # 0.870 after one round, 0.869 after two (another run), 0.889 after three.
    rounds: int = 3
    seed: int = 0
    threads: int = 1
    # The learned 2x2x2 stem: on Lucchi++ it lifted every 3D U-Net (the sparse (b) 0.751 -> 0.780, the fully
    # supervised (d) 0.862 -> 0.903).
    unet_config: str = "unet3d_lucchi_learned"
    unet_overrides: dict = field(default_factory=dict)
    bootstrap_unet_steps: int = 1500
    # Later rounds: with the bootstrap's 1500 the SDF track gets 3900 steps, about as many as the fully
    # supervised U-Net's 4024-step run (it early-stopped at 6150, best at 5063). Lucchi++ 1/64, one round:
    # 600 steps gave test fg-IoU 0.768 (train U-Net 0.858), 2400 gave 0.820 (train 0.884); the sparse
    # U-Net alone trained the same 3900 steps scored 0.833, so the gain is the length, not the labels.
    unet_steps: int = 2400
    propagator: str = "compact"
    # "sdf" (Spatial-SAM) or "mask": SAM2's memory of the propagator's own masks, for the ablation
    # (the U-Net's SDF then reaches the mask track only through the pseudo-labels).
    propagator_memory: str = "sdf"
    bootstrap_mask_steps: int = 800
    mask_steps: int = 400
    mask_batch_size: int = 4
    mask_crop: int = 128
    mask_run_length: int = 6
    annotated_weight: float = 1.0
    pseudo_weight: float = 0.5
    disagreement_weight: float = 0.5
    # Rounds >= 1, SDF track. None: one loss normalised over annotated and pseudo-labelled voxels
    # together (the annotated slices then get a few % of it); a number: the two are normalised
    # separately and the pseudo-labels' loss is scaled by it, half the crops hold an annotated slice
    # (train_unet.TrainData.anchor_slices). With pseudo_band_nm 20 ("anchored") it lifted one-round
    # Lucchi++ 1/64 from 0.842 to 0.870 (learned stem).
    pseudo_loss_weight: float | None = 0.5
    # Rounds >= 1, SDF track: pseudo-labelled voxels nearer than this to the pseudo mask's boundary
    # get weight 0 (the boundary is where the pseudo-labels are least sure; the annotated slices
    # teach it). 0 = off.
    pseudo_band_nm: float = 20.0
    # Round 0's mask-track labels: 3D components of the U-Net's mask smaller than this are dropped
    # (specks of a young U-Net are not objects to follow).
    min_object_voxels: int = 1000

    def __post_init__(self) -> None:
        for name in ("rounds", "bootstrap_unet_steps", "unet_steps", "bootstrap_mask_steps", "mask_steps", "threads"):
            if int(getattr(self, name)) < (0 if name == "rounds" else 1):
                raise ValueError(f"{name}: out of range ({getattr(self, name)})")
        if not 0 < self.pseudo_weight <= self.annotated_weight:
            raise ValueError("pseudo_weight: must be in (0, annotated_weight]")
        if self.propagator_memory not in ("sdf", "mask"):
            raise ValueError(f"propagator_memory: must be 'sdf' or 'mask', got {self.propagator_memory!r}")
        if not 0 <= self.disagreement_weight <= 1:
            raise ValueError("disagreement_weight: must be in [0, 1]")
        if self.pseudo_loss_weight is not None and not 0 < self.pseudo_loss_weight <= 1:
            raise ValueError(f"pseudo_loss_weight: must be in (0, 1] or None, got {self.pseudo_loss_weight}")
        if self.pseudo_band_nm < 0:
            raise ValueError(f"pseudo_band_nm: must be >= 0, got {self.pseudo_band_nm}")
        # The truncation comes from the U-Net's config file: read only when a band is asked for.
        if self.pseudo_band_nm > 0 and self.pseudo_band_nm >= (t := self.unet_truncation_nm()):
            raise ValueError(f"pseudo_band_nm: must be below the SDF truncation {t} nm, got {self.pseudo_band_nm}")

    def unet_truncation_nm(self) -> float:
        return float(self.unet_train_config(0).truncation_nm)

    def unet_train_config(self, round_index: int) -> TrainConfig:
        from .config import load_train_config

        steps = self.bootstrap_unet_steps if round_index == 0 else self.unet_steps
        over = {"max_steps": steps, "seed": self.seed * 1000 + round_index, "threads": self.threads,
                "checkpoint_every": max(1, min(50, steps)), **self.unet_overrides}
        return load_train_config(self.unet_config, **over)


def unet_pseudo_labels(
    p_unet: np.ndarray,
    labels: np.ndarray,
    annotated_slices: list[int],
    annotated_weight: float = 1.0,
    pseudo_weight: float = 0.5,
    min_object_voxels: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Round 0's labels for the mask track: (mask bool [Z, Y, X], weight float32 [Z, Y, X]) from
    the U-Net's probability alone: P_u > 0.5 without 3D components under ``min_object_voxels``,
    weight pseudo_weight * |2 P_u - 1|; annotated slices keep their labels with annotated_weight."""
    if labels.shape != p_unet.shape:
        raise ValueError(f"labels: shape {labels.shape} does not match p_unet shape {p_unet.shape}")
    mask = p_unet > 0.5
    if min_object_voxels > 0:
        comps, n = ndimage.label(mask)
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        mask = (sizes >= min_object_voxels)[comps] & mask
    weight = (pseudo_weight * np.abs(2 * p_unet - 1)).astype(np.float32)
    mask[annotated_slices] = labels[annotated_slices] > 0
    weight[annotated_slices] = annotated_weight
    return mask, weight


def fuse_pseudo_labels(
    p_unet: np.ndarray,
    p_prop: np.ndarray,
    labels: np.ndarray,
    annotated_slices: list[int],
    annotated_weight: float = 1.0,
    pseudo_weight: float = 0.5,
    disagreement_weight: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """(pseudo mask bool [Z, Y, X], weight float32 [Z, Y, X]) from the U-Net's probability P_u
    and the propagated probability P_p (float32 [Z, Y, X] in [0, 1]); see the module docstring."""
    if p_unet.shape != p_prop.shape or labels.shape != p_unet.shape:
        raise ValueError(f"p_prop: shapes {p_unet.shape}, {p_prop.shape}, labels {labels.shape} differ")
    fg_u, fg_p = p_unet > 0.5, p_prop > 0.5
    comps, n = ndimage.label(fg_u)
    carried = np.zeros(n + 1, bool)
    carried[np.unique(comps[fg_p])] = True
    carried[0] = False
    mask = carried[comps]
    dropped = fg_u & ~mask
    weight = pseudo_weight * np.abs(2 * p_unet - 1)
    weight = np.where(mask == fg_p, weight, disagreement_weight * weight)
    weight = np.where(dropped, pseudo_weight, weight).astype(np.float32)
    mask[annotated_slices] = labels[annotated_slices] > 0
    weight[annotated_slices] = annotated_weight
    return mask, weight


def sdf_track_weight(weight: np.ndarray, target: np.ndarray, annotated_slices: list[int], band_nm: float,
                     truncation_nm: float) -> np.ndarray:
    """The SDF track's voxel weights in rounds >= 1: the pseudo-labels' ``weight``, 0 within
    ``band_nm`` of the pseudo mask's boundary (``target``: its SDF normalised with ``truncation_nm``)
    outside the annotated slices."""
    if band_nm <= 0:
        return weight
    near = np.abs(target) < band_nm / truncation_nm
    near[annotated_slices] = False
    return np.where(near, 0.0, weight).astype(np.float32)


def mask_track_crop(crop: int, shape_zyx: tuple[int, ...]) -> int:
    """The mask track's square crop side on a volume of ``shape_zyx``: ``crop`` (DualTrackConfig.mask_crop),
    shrunk to the slice's smaller side rounded down to the propagator's stride (16)."""
    return min(crop, min(shape_zyx[1:]) // 16 * 16)


def segment_with_round(run: str | Path, propagator: str | Path, image: np.ndarray, sdf: np.ndarray) -> np.ndarray:
    """A dual-track run's propagator checkpoint ``propagator`` in automatic mode on ``image``, seeds and SDF
    memory from ``sdf`` (normalised, [Z, Y, X]), at the crop its mask track trained on (``run``'s
    config.json): the uint64 instance volume of the propagated masks alone (``fill=False``; the
    benchmark's "auto" row, ``predictor.fill_from_sdf`` of it the "filled" one)."""
    from .predictor import segment_volume
    from .train_propagator import load_checkpoint

    prop, _ = load_checkpoint(propagator)
    crop = mask_track_crop(int(json.loads((Path(run) / "config.json").read_text())["mask_crop"]), sdf.shape)
    with torch.no_grad():
        return segment_volume(prop, image, np.ascontiguousarray(sdf), crop=crop, fill=False)


def _unet_probability(model, image: np.ndarray, mean: float, std: float) -> tuple[np.ndarray, np.ndarray]:
    """(normalised SDF float32 [Z, Y, X], foreground probability float32 [Z, Y, X])."""
    sdf, logit = predict(model, image, mean, std)
    return sdf, expit(logit).astype(np.float32)


def run_dualtrack(
    image: np.ndarray,
    labels: np.ndarray,
    annotated_slices: list[int],
    voxel_size_nm: tuple[float, float, float],
    cfg: DualTrackConfig,
    out_dir: Path | str,
    progress: bool = True,
    eval_mask: np.ndarray | None = None,
    bootstrap_unet: Path | str | None = None,
    pretrained_unet: Path | str | None = None,
    pretrained_propagator: Path | str | None = None,
    _kill_after_round: int | None = None,
) -> dict:
    """Run (or resume) the dual-track loop. image uint8 [Z, Y, X]; labels [Z, Y, X] (bool or ids;
    read only on ``annotated_slices``). ``eval_mask`` (optional, bool [Z, Y, X]) is used only to
    log the pseudo-labels' and both tracks' fg-IoU per round, never for training.
    ``bootstrap_unet``: a finished U-Net run (folder with best.pt and summary.json) trained on
    these annotated slices only, used as round 0's SDF track instead of training one.
    ``pretrained_unet`` (a U-Net .pt holding "model": best.pt or checkpoint.pt of a train_unet run
    with the same architecture) and ``pretrained_propagator`` (a train_propagator checkpoint with this
    run's memory kind) are where round 0's two tracks start instead of random weights, e.g. networks
    trained on another dataset; both are declared in config.json ("pretrained": path, sha256 and what
    the file says it was trained on) and so in the exported manifests.

    Returns {"rounds": finished rounds incl. bootstrap, "unet": path of the final U-Net weights
    (best.pt), "propagator": path of the final propagator checkpoint, "mean", "std", "metrics":
    last round's metrics, "time_s": wall seconds, "cpu_s": CPU seconds of the finished rounds (None for
    runs written before it was recorded)}.
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
    # Both tracks cut training crops from the volume: check they fit before anything trains. The mask
    # track's square crop shrinks to the slice (a multiple of the propagator's stride, 16).
    unet_crop = tuple(cfg.unet_train_config(0).crop_zyx)
    if any(c > n for c, n in zip(unet_crop, image.shape)):
        raise ValueError(f"image: shape {image.shape} is smaller than the SDF track's training crop {unet_crop} "
                         f"({cfg.unet_config}); use a larger box or a U-Net config whose crop_zyx fits")
    mask_crop = mask_track_crop(cfg.mask_crop, image.shape)
    if mask_crop < 32:
        raise ValueError(f"image: slices {image.shape[1]} x {image.shape[2]} are too small for the mask track "
                         "(at least 32 x 32)")
    if not any((labels[z] > 0).any() for z in slices):
        raise ValueError("labels: no foreground on any annotated slice; nothing to propagate")
    boot = Path(bootstrap_unet) if bootstrap_unet is not None else None
    if boot is not None and not (boot / "best.pt").exists():
        raise ValueError(f"bootstrap_unet: {boot / 'best.pt'} not found")
    if boot is not None and pretrained_unet is not None:
        raise ValueError("pretrained_unet: not with bootstrap_unet (round 0's SDF track is then the bootstrap run)")
    pretrained, unet_init, prop_init = load_pretrained(pretrained_unet, pretrained_propagator, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    state_path, log_path = out / "state.json", out / "rounds.jsonl"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"done": -1, "time_s": 0.0}
    if state["done"] >= 0:  # config.json was written when the run started
        started = json.loads((out / "config.json").read_text()).get("pretrained") or {}
        if started != pretrained:
            raise ValueError(f"pretrained_unet: {out} was started from pretrained weights {started or 'none'}, "
                             f"resumed with {pretrained or 'none'}")
    if state["done"] < 0:
        doc = {**asdict(cfg), "annotated_slices": slices, "bootstrap_unet": str(boot) if boot else None,
               "pretrained": pretrained}
        write_text(out / "config.json", json.dumps(doc, indent=1))
        if log_path.exists():
            log_path.unlink()
    # Round 0's own SDF-track data (and the normalisation every round uses), unless a bootstrap run
    # brings both; dropped after round 0 (two float32 maps of the whole volume).
    sparse = None
    if boot is not None:
        summary = json.loads((boot / "summary.json").read_text())
        mean, std = float(summary["mean"]), float(summary["std"])
    else:
        sparse = make_train_data(image, labels > 0, voxel_size_nm, slices, cfg.unet_train_config(0).truncation_nm)
        mean, std = float(sparse.mean), float(sparse.std)  # type: ignore[arg-type]
    ann_labels = np.zeros(image.shape, np.uint8)
    ann_labels[slices] = labels[slices] > 0

    t0 = time.monotonic() - state["time_s"]
    c0 = time.process_time() - state.get("cpu_s", 0.0)
    total = cfg.rounds + 1
    bar = tqdm(total=total, initial=state["done"] + 1, desc="dual-track rounds", disable=not progress)
    metrics: dict = {}
    prev_mask = prev_weight = None  # the last finished round's pseudo-labels: the next round's labels
    if 0 <= state["done"] < total - 1:
        with np.load(out / f"round_{state['done']}" / "pseudo.npz") as prev:
            prev_mask, prev_weight = prev["mask"], prev["weight"]
    for r in range(state["done"] + 1, total):
        rdir = out / f"round_{r}"
        rdir.mkdir(exist_ok=True)
        parts = _PartTimer()
        # SDF track.
        ucfg = cfg.unet_train_config(r)
        unet_steps = 0
        if r == 0 and boot is not None:
            unet_path = boot / "best.pt"
        else:
            if r == 0:
                data, init = sparse, unet_init
            else:
                with parts("sdf_targets"):
                    target = sdf_target(prev_mask, voxel_size_nm, ucfg.truncation_nm)
                    data = TrainData(image, target, sdf_track_weight(prev_weight, target, slices, cfg.pseudo_band_nm, ucfg.truncation_nm), mean, std,
                                     **({} if cfg.pseudo_loss_weight is None else
                                        {"anchor_slices": tuple(slices), "pseudo_loss_weight": cfg.pseudo_loss_weight}))
                    del target
                init = torch.load(round_unet_path(out, r - 1, boot), map_location="cpu", weights_only=False)["model"]
            with parts("unet_train"):
                unet_steps = train_unet(data, ucfg, rdir / "unet", progress=progress, init_weights=init)["step"]
            data = sparse = None  # the SDF track's targets and weights are not needed past here
            unet_path = rdir / "unet" / "best.pt"
        with parts("unet_predict"):
            sdf, p_unet = _unet_probability(load_unet(unet_path), image, mean, std)
        # Mask track, with the current U-Net's SDF as memory.
        if r == 0:
            prop = prop_init if prop_init is not None else build_propagator(
                load_propagator_config(cfg.propagator, memory=cfg.propagator_memory, seed=cfg.seed))
            m_labels, m_weights = unet_pseudo_labels(p_unet, ann_labels, slices, cfg.annotated_weight,
                                                     cfg.pseudo_weight, cfg.min_object_voxels)
        else:
            prop, _ = load_checkpoint(out / f"round_{r - 1}" / "propagator" / "propagator_last.pt")
            m_labels, m_weights = prev_mask, prev_weight
        mcfg = MaskTrainConfig(
            steps=cfg.bootstrap_mask_steps if r == 0 else cfg.mask_steps,
            batch_size=cfg.mask_batch_size,
            crop=mask_crop,
            run_length=cfg.mask_run_length,
            seed=cfg.seed * 1000 + r,
            ckpt_every=max(1, min(50, cfg.mask_steps)),
        )
        with parts("mask_train"):
            hist = train_mask_track(prop, image, sdf, m_labels.astype(np.uint8), m_weights, mcfg,
                                    ckpt_dir=rdir / "propagator", progress=progress)
        m_labels = m_weights = prev_mask = prev_weight = None
        prop.eval()
        with parts("propagate"), torch.no_grad():
            p_prop = propagate_volume(prop, image, sdf, slices, ann_labels, crop=mask_crop)
        with parts("pseudo_labels"):
            mask, weight = fuse_pseudo_labels(p_unet, p_prop, ann_labels, slices, cfg.annotated_weight,
                                              cfg.pseudo_weight, cfg.disagreement_weight)
            replace_with(rdir / "pseudo.npz", lambda tmp: np.savez_compressed(tmp, mask=mask, weight=weight), suffix=".tmp.npz")
        metrics = {
            "round": r,
            "time_s": round(time.monotonic() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1),
            "unet_steps": unet_steps,
            "mask_steps": len(hist),
            "mask_loss_last": float(np.mean([h["loss"] for h in hist[-10:]])) if hist else None,
            "pseudo_fg_fraction": float(mask.mean()),
            "agreement": float(((p_unet > 0.5) == (p_prop > 0.5)).mean()),
            "mean_weight": float(weight.mean()),
            "parts_s": parts.seconds,
        }
        if eval_mask is not None:
            metrics.update(
                pseudo_iou=foreground_iou(mask, eval_mask),
                unet_iou=foreground_iou(sdf > 0, eval_mask),
                prop_iou=foreground_iou(p_prop > 0.5, eval_mask),
            )
        with open(log_path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        state = {"done": r, "time_s": metrics["time_s"], "cpu_s": metrics["cpu_s"]}
        write_text(state_path, json.dumps(state, indent=1))
        bar.update(1)
        # The next round starts from these pseudo-labels; the rest of this round's maps go now,
        # before the next round allocates its own.
        prev_mask, prev_weight = mask, weight
        del sdf, p_unet, p_prop, mask, weight
        if _kill_after_round is not None and r == _kill_after_round:
            bar.close()
            return {"rounds": r + 1, "killed": True}
    bar.close()
    last = out / f"round_{total - 1}"
    if not metrics and log_path.exists():
        metrics = json.loads(log_path.read_text().splitlines()[-1])
    return {
        "rounds": total,
        "unet": str(round_unet_path(out, total - 1, boot)),
        "propagator": str(last / "propagator" / "propagator_last.pt"),
        "mean": mean,
        "std": std,
        "metrics": metrics,
        "time_s": state["time_s"],
        "cpu_s": state.get("cpu_s"),
    }


def record_run(out: Path, run: dict, field: str = "out_dir") -> dict:
    """The loop's provenance, ``out/run.json`` (data, annotated_slices, budget, voxel_size_nm, command:
    what export-unet / export-propagator put in the manifests): written for a new folder; for a folder
    that has one, checked to be on the same data (ValueError naming ``field``) and kept as it is."""
    path = out / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        for k in ("data", "annotated_slices", "voxel_size_nm"):
            if old.get(k) != run[k]:
                raise ValueError(f"{field}: {out} holds a run with {k} {old.get(k)!r}, not {run[k]!r}; resume it with "
                                 "the same data or choose another folder")
        return old
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(run, indent=2))
    return run


def load_pretrained(unet: Path | str | None, propagator: Path | str | None, cfg: DualTrackConfig
                    ) -> tuple[dict, dict | None, object | None]:
    """(declaration for config.json, U-Net state_dict or None, propagator module or None); checks that
    the U-Net weights fit the SDF track's architecture and the propagator has the run's memory kind."""
    from .atomic_files import sha256_file
    from .train_propagator import load_checkpoint
    from .train_unet import build_model

    declared: dict = {}
    unet_state = prop = None
    if unet is not None:
        path = Path(unet)
        if not path.is_file():
            raise ValueError(f"pretrained_unet: {path} not found (a best.pt or checkpoint.pt of a train-unet run)")
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ck, dict) or "model" not in ck:
            raise ValueError(f"pretrained_unet: {path} holds no 'model' state_dict")
        try:
            build_model(cfg.unet_train_config(0)).load_state_dict(ck["model"])
        except RuntimeError as e:
            raise ValueError(f"pretrained_unet: {path} does not fit the SDF track's U-Net ({cfg.unet_config}): "
                             f"{str(e).splitlines()[0]}") from e
        unet_state = ck["model"]
        run = path.parent / "run.json"
        declared["unet"] = {"path": str(path), "sha256": sha256_file(path), "step": ck.get("step"),
                            "trained_on": json.loads(run.read_text()).get("data") if run.exists() else None}
    if propagator is not None:
        path = Path(propagator)
        if not path.is_file():
            raise ValueError(f"pretrained_propagator: {path} not found (a train_propagator checkpoint .pt)")
        try:
            prop, meta = load_checkpoint(path)
        except (KeyError, RuntimeError, TypeError) as e:
            raise ValueError(f"pretrained_propagator: {path} is not a propagator checkpoint: {e}") from e
        if prop.cfg.memory != cfg.propagator_memory:
            raise ValueError(f"pretrained_propagator: {path} has {prop.cfg.memory!r} memory, this run "
                             f"{cfg.propagator_memory!r}")
        declared["propagator"] = {"path": str(path), "sha256": sha256_file(path), "step": meta.get("step"),
                                  "config": prop.cfg.name, "trained_on": meta.get("data")}
    return declared, unet_state, prop


class _PartTimer:
    """Wall seconds of a round's parts, as this process ran them (a resumed round counts only the
    parts after the resume): ``with parts("name"): ...``; ``seconds`` maps name -> seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            if torch.cuda.is_available() and torch.get_default_device().type == "cuda":
                torch.cuda.synchronize()
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - start, 1)


def round_unet_path(out: Path, r: int, boot: Path | None) -> Path:
    """Round r's U-Net weights: its own run, or the bootstrap run for round 0 when one was given."""
    return boot / "best.pt" if r == 0 and boot is not None else out / f"round_{r}" / "unet" / "best.pt"
