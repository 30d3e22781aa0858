"""Mask-track training of the propagator: sample an object and a run of consecutive slices, simulate
prompts on the first slice, propagate through the run with the memory bank, and learn from focal +
dice (masks), MSE (IoU head) and BCE (presence head), per-voxel weighted. Seeded, atomically
checkpointed, resumable.

Used by the dual-track loop (train_mask_track, propagate_volume) and as a CLI that trains the default
propagator on Lucchi++ train with GT SDF memory:
    nice -n 10 models/.venv/bin/python -m spatialsam.train_propagator --minutes 30 \
        --ckpt-dir .cache/propagator_lucchi --export models/propagator_lucchi
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from spatialsam.atomic_files import torch_save
from spatialsam.device import to_device
from spatialsam.image_encoder import ImageFeatures
from spatialsam.memory import MemoryBankTensors
from spatialsam.predictor import MASK_PROMPT_LOGIT, propagate_volume
from spatialsam.prompt_encoder import LABEL_BOX_BR, LABEL_BOX_TL, LABEL_NEG, LABEL_PAD, LABEL_POS
from spatialsam.propagator import Propagator, PropagatorConfig, build_propagator

__all__ = ["TrainConfig", "train_mask_track", "propagate_volume", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "propagator_last.pt"


@dataclass
class TrainConfig:
    """Mask-track training hyper-parameters."""

    steps: int = 2000
    batch_size: int = 4
    crop: int = 128  # square crop side, multiple of 16
    run_length: int = 6  # slices per sampled run (first one prompted)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    teacher_forcing: float = 0.5  # probability that memory encodes the (corrupted) GT mask, else the prediction
    corrupt_mask: bool = True  # dilate/erode/punch holes in teacher-forced memory masks
    min_area: int = 16  # an object's cross-section on the first slice must have this many pixels
    max_points: int = 3  # clicks per simulated prompt (padded to max_points + 1)
    # Share of the extra clicks that are negatives on another object in the crop (0: negatives only
    # in a ring around the target). Crowded slices (the demo volume) need it: a click on the object
    # next door must remove that one, and the SDF memory is positive on every object alike.
    p_neg_other: float = 0.0
    p_sdf_drop: float = 0.1  # memory/current SDF replaced by zeros ("unknown"): keeps the image pathway alive
    p_sdf_degrade: float = 0.5  # boundary shift U(-0.15, 0.15) + noise N(0, 0.05): the U-Net's SDF is not the GT's
    p_box: float = 0.35
    p_mask: float = 0.15
    w_focal: float = 20.0
    w_dice: float = 1.0
    w_iou: float = 1.0
    w_presence: float = 1.0
    seed: int = 0
    ckpt_every: int = 50
    max_minutes: float | None = None  # stop (after a checkpoint) once this much wall time has passed


def save_checkpoint(path: Path, model: Propagator, opt: torch.optim.Optimizer | None, step: int,
                    tcfg: TrainConfig, history: list[dict[str, float]], meta: dict[str, Any] | None = None) -> None:
    torch_save({
        "model": model.state_dict(), "optimizer": opt.state_dict() if opt else None, "step": step,
        "propagator_config": dataclasses.asdict(model.cfg), "train_config": dataclasses.asdict(tcfg),
        "history": history, "meta": meta or {},
    }, path)


def load_checkpoint(path: str | Path) -> tuple[Propagator, dict[str, Any]]:
    """(model in eval mode, metadata: step, train config, meta) from a checkpoint file."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = build_propagator(PropagatorConfig(**ck["propagator_config"]))
    model.load_state_dict(ck["model"])
    meta = dict(ck.get("meta", {}))
    meta.update({"step": ck["step"], "train_config": ck["train_config"]})
    return model.eval(), meta


# ---- sampling -----------------------------------------------------------------------------------------
@dataclass
class Objects:
    """3D instances of the (pseudo)labels: comps int32 [Z, Y, X], per object its per-slice area."""

    comps: np.ndarray
    areas: list[np.ndarray]  # areas[i][z] = pixels of object i+1 on slice z
    slices: list[tuple[slice, slice, slice]]


def find_objects(labels: np.ndarray) -> Objects:
    """Instances: 3D connected components of labels > 0 for 0/1 labels; given ids (made consecutive)
    for instance labels."""
    lab = np.asarray(labels)
    if lab.dtype == bool or lab.max() <= 1:
        comps = ndimage.label(lab > 0)[0]
    else:
        comps = np.unique(lab, return_inverse=True)[1].reshape(lab.shape)
        if not (lab == 0).any():  # with background present, id 0 is the smallest value and maps to 0
            comps = comps + 1
    comps = comps.astype(np.int32)
    sls = ndimage.find_objects(comps)
    areas = []
    for i, sl in enumerate(sls, start=1):
        a = np.zeros(lab.shape[0], np.int64)
        if sl is not None:
            a[sl[0]] = (comps[sl] == i).sum(axis=(1, 2))
        areas.append(a)
    return Objects(comps, areas, sls)  # type: ignore[arg-type]


@dataclass
class Batch:
    """images [B, T, 1, S, S] normalised, sdf [B, T, 1, S, S], gt [B, T, 1, S, S] 0/1, weights
    [B, T, 1, S, S], dz_sign [B] (+1 run goes to higher z), point_coords [B, K, 2], point_labels
    [B, K], mask_input [B, 1, S/4, S/4], has_mask [B]."""

    images: torch.Tensor
    sdf: torch.Tensor
    gt: torch.Tensor
    weights: torch.Tensor
    dz_sign: torch.Tensor
    point_coords: torch.Tensor
    point_labels: torch.Tensor
    mask_input: torch.Tensor
    has_mask: torch.Tensor


def _simulate_prompt(rng: np.random.Generator, m: np.ndarray, tcfg: TrainConfig, others: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Clicks/box (coords [K, 2], labels [K], K = max_points + 1) or a mask prompt from GT mask m [S, S];
    others [S, S]: the other objects on the slice (negative clicks there with p_neg_other)."""
    k = tcfg.max_points + 1
    coords = np.zeros((k, 2), np.float32)
    labels = np.full(k, LABEL_PAD, np.float32)
    ys, xs = np.nonzero(m)
    u = rng.random()
    if u < tcfg.p_mask:
        return coords, labels, m
    if u < tcfg.p_mask + tcfg.p_box:
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        w, h = x1 - x0 + 1, y1 - y0 + 1
        j = rng.normal(0, 0.1, 4) * np.array([w, h, w, h])
        s = m.shape[0] - 1
        box = np.clip(np.array([x0, y0, x1, y1]) + j, 0, s)
        coords[0], coords[1] = box[:2], np.maximum(box[2:], box[:2] + 1)
        labels[0], labels[1] = LABEL_BOX_TL, LABEL_BOX_BR
        return coords, labels, None
    # Clicks: the first positive prefers the interior (distance-weighted), others pos/neg at random.
    dist = ndimage.distance_transform_edt(m)[ys, xs]
    i = rng.choice(len(ys), p=dist / dist.sum())
    coords[0], labels[0] = (xs[i], ys[i]), LABEL_POS
    n = int(rng.integers(1, tcfg.max_points + 1))
    ring = ndimage.binary_dilation(m, iterations=6) & ~m
    for j in range(1, n):
        # rng is drawn only when the option is on, so runs without it repeat earlier ones exactly.
        if tcfg.p_neg_other > 0 and others is not None and others.any() and rng.random() < tcfg.p_neg_other:
            oy, ox = np.nonzero(others)
            q = rng.integers(len(oy))
            coords[j], labels[j] = (ox[q], oy[q]), LABEL_NEG
        elif rng.random() < 0.5 and ring.any():
            ry, rx = np.nonzero(ring)
            q = rng.integers(len(ry))
            coords[j], labels[j] = (rx[q], ry[q]), LABEL_NEG
        else:
            q = rng.integers(len(ys))
            coords[j], labels[j] = (xs[q], ys[q]), LABEL_POS
    return coords, labels, None


def sample_batch(rng: np.random.Generator, image: np.ndarray, sdf: np.ndarray, objs: Objects,
                 weights: np.ndarray, tcfg: TrainConfig, model: Propagator) -> Batch:
    """A batch of runs: an object (uniform over objects with a big enough cross-section), a first
    slice where it is present, a direction, T consecutive slices, a crop around it; random flips and
    transposes shared by the run; a simulated prompt on the first slice."""
    z_n, y_n, x_n = image.shape
    s, t = tcfg.crop, tcfg.run_length
    if y_n < s or x_n < s:
        raise ValueError(f"image: slices {y_n} x {x_n} are smaller than the crop {s}")
    if z_n < t:
        raise ValueError(f"image: {z_n} slices, fewer than run_length {t}")
    cands = [i for i, a in enumerate(objs.areas) if (a >= tcfg.min_area).any()]
    if not cands:
        raise ValueError("labels: no object with a cross-section of at least min_area pixels")
    out: dict[str, list[Any]] = {k: [] for k in ("im", "sd", "gt", "w", "dir", "pc", "pl", "mi", "hm")}
    for _ in range(tcfg.batch_size):
        i = cands[int(rng.integers(len(cands)))]
        zs = np.nonzero(objs.areas[i] >= tcfg.min_area)[0]
        z0 = int(zs[rng.integers(len(zs))])
        d = 1 if rng.random() < 0.5 else -1
        if not 0 <= z0 + d * (t - 1) < z_n:
            d = -d
        zr = np.arange(z0, z0 + d * t, d)
        ys, xs = np.nonzero(objs.comps[z0] == i + 1)
        cy = int(np.clip(ys.mean() + rng.normal(0, s / 8) - s / 2, 0, y_n - s))
        cx = int(np.clip(xs.mean() + rng.normal(0, s / 8) - s / 2, 0, x_n - s))
        inside = (ys >= cy) & (ys < cy + s) & (xs >= cx) & (xs < cx + s)
        if inside.sum() < tcfg.min_area:
            # A cross-section wider than the crop whose centre of mass lies outside it (a U-shape, or
            # objects merged by pseudo-labels): centre the crop on one of its pixels instead.
            q = int(rng.integers(len(ys)))
            cy = int(np.clip(ys[q] - s // 2, 0, y_n - s))
            cx = int(np.clip(xs[q] - s // 2, 0, x_n - s))
        win = (zr, slice(cy, cy + s), slice(cx, cx + s))
        im = image[win].astype(np.float32)
        sd = sdf[win]
        comps = objs.comps[win]
        gt = (comps == i + 1).astype(np.float32)
        oth = ((comps > 0) & (comps != i + 1)).astype(np.float32)
        w = weights[win]
        if rng.random() < 0.5:
            im, sd, gt, w, oth = (a[:, :, ::-1] for a in (im, sd, gt, w, oth))
        if rng.random() < 0.5:
            im, sd, gt, w, oth = (a[:, ::-1, :] for a in (im, sd, gt, w, oth))
        if rng.random() < 0.5:
            im, sd, gt, w, oth = (a.transpose(0, 2, 1) for a in (im, sd, gt, w, oth))
        im = im * rng.uniform(0.9, 1.1) + rng.uniform(-10, 10)
        u = rng.random()
        if u < tcfg.p_sdf_drop:
            sd = np.zeros_like(sd)
        elif u < tcfg.p_sdf_drop + tcfg.p_sdf_degrade:
            sd = np.clip(sd + rng.uniform(-0.15, 0.15) + rng.normal(0, 0.05, sd.shape), -1, 1)
        pc, pl, pm = _simulate_prompt(rng, gt[0] > 0, tcfg, oth[0] > 0)
        if pm is not None:
            avg = pm.reshape(s // 4, 4, s // 4, 4).mean(axis=(1, 3))
            out["mi"].append((avg * 2 * MASK_PROMPT_LOGIT - MASK_PROMPT_LOGIT)[None])
            out["hm"].append(1.0)
        else:
            out["mi"].append(np.zeros((1, s // 4, s // 4), np.float32))
            out["hm"].append(0.0)
        for k, v in (("im", im), ("sd", sd), ("gt", gt), ("w", w)):
            out[k].append(np.ascontiguousarray(v)[:, None])
        out["dir"].append(float(d))
        out["pc"].append(pc)
        out["pl"].append(pl)
    f = lambda k: to_device(np.stack(out[k]).astype(np.float32))  # noqa: E731
    return Batch(model.normalize(f("im")), f("sd"), f("gt"), f("w"), torch.tensor(out["dir"]), f("pc"), f("pl"),
                 f("mi"), torch.tensor(out["hm"], dtype=torch.float32))


def _corrupt(rng: np.random.Generator, m: torch.Tensor) -> torch.Tensor:
    """Dilate or erode by 1-3 px, sometimes punch a hole: [B, 1, S, S] 0/1 -> same."""
    k = int(rng.integers(1, 4)) * 2 + 1
    pool = torch.nn.functional.max_pool2d
    m = pool(m, k, 1, k // 2) if rng.random() < 0.5 else 1 - pool(1 - m, k, 1, k // 2)
    if rng.random() < 0.3:
        s = m.shape[-1]
        y, x = rng.integers(0, s - 8, 2)
        m = m.clone()
        m[..., y:y + 8, x:x + 8] = 0
    return m


# ---- loss --------------------------------------------------------------------------------------------------
def mask_losses(logits: torch.Tensor, gt: torch.Tensor, w: torch.Tensor, present: torch.Tensor,
                alpha: float = 0.25, gamma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sigmoid focal and dice losses over [B, 1, S, S], averaged over samples with the object."""
    p = torch.sigmoid(logits)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, gt, reduction="none")
    pt = p * gt + (1 - p) * (1 - gt)
    focal = (alpha * gt + (1 - alpha) * (1 - gt)) * (1 - pt) ** gamma * ce
    focal = (focal * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1e-6)
    inter = (p * gt * w).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / ((p * w).flatten(1).sum(1) + (gt * w).flatten(1).sum(1) + 1)
    n = present.sum().clamp_min(1.0)
    return (focal * present).sum() / n, (dice * present).sum() / n


def run_batch(model: Propagator, batch: Batch, tcfg: TrainConfig, rng: np.random.Generator
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Propagate each run through its T slices with the predictor's bank rules; return the loss."""
    b, t = batch.images.shape[:2]
    s = batch.images.shape[-1]
    cfg = model.cfg
    feats = model.encode_image(batch.images.flatten(0, 1))
    fz = [ImageFeatures(*(x.unflatten(0, (b, t))[:, j] for x in (feats.feat, feats.skip8, feats.skip4)))
          for j in range(t)]
    entries: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (slice index in run, memory, obj_ptr)
    totals = {"focal": 0.0, "dice": 0.0, "iou": 0.0, "presence": 0.0}
    loss = torch.zeros(())
    hw = (cfg.mem_dim, s // model.stride, s // model.stride)
    for j in range(t):
        if j == 0:
            mem = [], []
            coords, labels, mi, hm = batch.point_coords, batch.point_labels, batch.mask_input, batch.has_mask
        else:
            cond = entries[:1][: cfg.max_cond]
            recent = [e for e in entries[1:] if j - e[0] <= cfg.num_recent][::-1]
            ptr_recent = [e for e in entries[1:] if j - e[0] <= cfg.max_ptrs - 1][::-1]
            mem = cond + recent, cond + ptr_recent
            coords = torch.zeros(b, 1, 2)
            labels = torch.full((b, 1), float(LABEL_PAD))
            mi, hm = torch.zeros(b, 1, s // 4, s // 4), torch.zeros(b)
        bank = _bank_tensors(mem, j, batch.dz_sign, b, hw, cfg.dim, first=(j == 0))
        out = model.decode(fz[j], batch.sdf[:, j], bank, coords, labels, mi, hm)
        logits = model.upsample(out.low_res_logits)
        gt, w = batch.gt[:, j], batch.weights[:, j]
        # Slice weight: mean voxel weight of the crop. 0 = unlabelled slice (sparse annotations): no
        # mask, IoU or presence target there, and memory comes from the prediction, not from "GT".
        sw = w.flatten(1).mean(1)
        labelled = (sw > 0).float()
        present = (gt.flatten(1).sum(1) > 0).float()
        focal, dice = mask_losses(logits, gt, w, present * labelled)
        pred = (logits > 0).float()
        inter = (pred * gt).flatten(1).sum(1)
        union = ((pred + gt) > 0).float().flatten(1).sum(1)
        iou_t = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
        iw = present * sw
        l_iou = (((out.iou[:, 0] - iou_t) ** 2) * iw).sum() / iw.sum().clamp_min(1e-6)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out.object_score[:, 0], present, reduction="none")
        l_pres = (bce * sw).sum() / sw.sum().clamp_min(1e-6)
        loss = loss + tcfg.w_focal * focal + tcfg.w_dice * dice + tcfg.w_iou * l_iou + tcfg.w_presence * l_pres
        for k, v in (("focal", focal), ("dice", dice), ("iou", l_iou), ("presence", l_pres)):
            totals[k] += float(v.detach()) / t
        if j < t - 1:
            absent = (out.object_score[:, 0] <= 0).reshape(-1, 1, 1, 1)
            mm = ((logits > cfg.mask_threshold) & ~absent).float().detach()
            if rng.random() < tcfg.teacher_forcing:
                teach = _corrupt(rng, gt) if tcfg.corrupt_mask else gt
                mm = torch.where(labelled.reshape(-1, 1, 1, 1) > 0, teach, mm)
            m_tok = model.encode_memory(fz[j].feat, batch.sdf[:, j], mm)
            entries.append((j, m_tok, out.obj_ptr))
    loss = loss / t
    totals["loss"] = float(loss.detach())
    return loss, totals


def _bank_tensors(mem: tuple[list[Any], list[Any]], j: int, dz_sign: torch.Tensor, b: int,
                  hw: tuple[int, int, int], dim: int, first: bool) -> MemoryBankTensors:
    """Bank of a run step; entries are (run index, tokens [B, Dm, h, w], ptr [B, D]); dz = sign*(i - j)."""
    spatial, ptrs = mem
    if not spatial:
        z = torch.zeros(b, 1)
        return MemoryBankTensors(torch.zeros(b, 1, *hw), z, z, z, torch.zeros(b, 1, dim), z, z)
    m = torch.stack([e[1] for e in spatial], 1)
    mdz = torch.stack([dz_sign * (e[0] - j) for e in spatial], 1)
    mc = torch.tensor([1.0 if e[0] == 0 else 0.0 for e in spatial]).expand(b, -1)
    p = torch.stack([e[2] for e in ptrs], 1)
    pdz = torch.stack([dz_sign * (e[0] - j) for e in ptrs], 1)
    return MemoryBankTensors(m, mdz, mc, torch.ones(b, len(spatial)), p, pdz, torch.ones(b, len(ptrs)))


# ---- training loop ------------------------------------------------------------------------------------------
def _check_inputs(image: np.ndarray, sdf: np.ndarray, labels: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 [Z, Y, X], got {getattr(image, 'dtype', None)} {getattr(image, 'shape', None)}")
    for name, a in (("sdf", sdf), ("labels", labels)):
        if not isinstance(a, np.ndarray) or a.shape != image.shape:
            raise ValueError(f"{name}: expected shape {image.shape} like image, got {getattr(a, 'shape', a)!r}")
    if not np.isfinite(sdf).all():
        raise ValueError("sdf: contains NaN or infinite values")
    if weights is None:
        return np.ones(image.shape, np.float32)
    if not isinstance(weights, np.ndarray) or weights.shape != image.shape:
        raise ValueError(f"weights: expected shape {image.shape} like image, got {getattr(weights, 'shape', weights)!r}")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("weights: expected finite values >= 0")
    return weights.astype(np.float32, copy=False)


def train_mask_track(
    model: Propagator,
    image: np.ndarray,
    sdf: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    cfg: TrainConfig | None = None,
    *,
    ckpt_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = False,
    log: Callable[[dict[str, Any]], None] | None = None,
    meta: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """Train `model` in place; returns the per-step loss history (including resumed steps).

    image uint8 [Z, Y, X]; sdf float32 [Z, Y, X] normalised (the memory input: GT SDF or the U-Net's);
    labels [Z, Y, X] (0/1 or instance ids; pseudo-labels allowed); weights float32 [Z, Y, X] >= 0
    (confidence; annotated slices highest; None = all 1). Step k draws its batch from
    np.random.default_rng([seed, k]), so a resumed run repeats an uninterrupted one exactly.
    With ckpt_dir, `propagator_last.pt` is written atomically every ckpt_every steps and at the end,
    and an existing one is resumed when resume is True.
    """
    tcfg = cfg or TrainConfig()
    w = _check_inputs(image, sdf, labels, weights)
    if tcfg.crop % model.stride:
        raise ValueError(f"cfg.crop: {tcfg.crop} is not a multiple of {model.stride}")
    objs = find_objects(labels)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    history: list[dict[str, float]] = []
    start = 0
    ck_path = Path(ckpt_dir) / CHECKPOINT_NAME if ckpt_dir else None
    if ck_path and resume and ck_path.exists():
        ck = torch.load(ck_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start, history = ck["step"], ck["history"]
    t0 = time.monotonic()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=tcfg.steps, initial=start, desc="mask track", file=sys.stderr)
    model.train()
    step = start
    for step in range(start, tcfg.steps):
        rng = np.random.default_rng([tcfg.seed, step])
        torch.manual_seed(tcfg.seed * 1_000_003 + step)
        batch = sample_batch(rng, image, sdf, objs, w, tcfg, model)
        loss, parts = run_batch(model, batch, tcfg, rng)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        parts["step"] = step
        history.append(parts)
        if log:
            log(parts)
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.4f}")
        done = step + 1
        timeout = tcfg.max_minutes is not None and time.monotonic() - t0 > 60 * tcfg.max_minutes
        if ck_path and (done % tcfg.ckpt_every == 0 or done == tcfg.steps or timeout):
            save_checkpoint(ck_path, model, opt, done, tcfg, history, meta)
        if timeout:
            break
    if bar:
        bar.close()
    model.eval()
    return history


# ---- CLI: the shipped default propagator --------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    from spatialsam.data import load_dataset, load_lucchi, resample_xy
    from spatialsam.export_propagator import check_parity, export_propagator
    from spatialsam.propagator import load_propagator_config
    from spatialsam.sdf import DEFAULT_TRUNCATION_NM, sdf_target

    ap = argparse.ArgumentParser(description="Train the propagator on Lucchi++ train (or the demo generator's "
                                             "volumes) with GT SDF memory.")
    ap.add_argument("--config", default="compact")
    ap.add_argument("--memory", choices=["sdf", "mask"], default=None)
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="data root (default: ../shared/data)")
    ap.add_argument("--ckpt-dir", required=True)
    ap.add_argument("--export", default=None, help="export folder for the three graphs after training")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-wall-minutes", type=float, default=None,
                    help="with --finalize: wall-clock training time to record in the manifests")
    ap.add_argument("--finalize", action="store_true",
                    help="no training: evaluate the checkpoint on Lucchi++ test (or the held-out demo seeds) and "
                         "export it with metadata")
    ap.add_argument("--demo-data", default=None,
                    help="train on the demo generator's volumes in this folder (server/bin/write_demo_training.ts)")
    ap.add_argument("--demo-seeds", default=None, help="with --demo-data: training seeds, e.g. 101,102,103")
    ap.add_argument("--val-demo-seeds", default=None, help="with --demo-data --finalize: held-out seeds, e.g. 201")
    ap.add_argument("--unet-run", default=None,
                    help="with --demo-data --finalize: a train-unet run whose SDF is also evaluated as the memory")
    ap.add_argument("--p-neg-other", type=float, default=0.0, help="TrainConfig.p_neg_other")
    ap.add_argument("--init", default=None, help="start from this checkpoint's weights (fine-tuning); same config")
    ap.add_argument("--name", default=None,
                    help="with --finalize --export: the model's name in its manifest (default propagator_compact; the "
                         "server tells loaded propagators apart by it)")
    ap.add_argument("--licence", default=None,
                    help="with --finalize --export: a licence note recorded in the manifest (training.licence), for "
                         "weights whose training data restricts their use")
    ap.add_argument("--dataset", default=None,
                    help="train on this dataset of the data root instead of Lucchi++ train (the shared layout: "
                         "<name>/<split>/image|label, meta.json), e.g. cdeep3m_mito_sbem: pretraining for "
                         "adapt --pretrained-propagator")
    ap.add_argument("--split", default="train", help="with --dataset: the split (default train)")
    ap.add_argument("--xy-nm", type=float, default=None,
                    help="with --dataset: resample each slice to this pixel size in nm first (linear for the image, "
                         "nearest for the labels), e.g. 5 for Lucchi++'s")
    args = ap.parse_args(argv)
    if args.dataset and args.demo_data:
        ap.error("--dataset: not with --demo-data (one training set)")
    if args.xy_nm is not None and not args.dataset:
        ap.error("--xy-nm: only with --dataset")
    if args.xy_nm is not None and not (0 < args.xy_nm < 1000):
        ap.error(f"--xy-nm: expected a pixel size in nm in (0, 1000), got {args.xy_nm}")
    torch.set_num_threads(args.threads)
    if args.finalize and args.demo_data:
        finalize_demo(Path(args.ckpt_dir) / CHECKPOINT_NAME, args.export, args.demo_data, args.val_demo_seeds,
                      args.unet_run, args.train_wall_minutes)
        return
    if (args.name or args.licence) and not (args.finalize and args.export):
        ap.error("--name, --licence: only with --finalize --export")
    if args.finalize:
        finalize(Path(args.ckpt_dir) / CHECKPOINT_NAME, args.export, args.data, args.seed, args.train_wall_minutes,
                 name=args.name, licence=args.licence)
        return
    overrides = {"memory": args.memory} if args.memory else {}
    pcfg = load_propagator_config(args.config, seed=args.seed, **overrides)
    if args.demo_data:
        from spatialsam.data import load_demo_volumes, stack_volumes

        vols = load_demo_volumes(args.demo_data, [int(x) for x in (args.demo_seeds or "").split(",")])
        stacked = stack_volumes(vols)
        image, labels, vs = stacked.image, stacked.labels, stacked.voxel_size_nm
        # Per volume, so that no distance reaches across a seam of the stack.
        sdf = np.concatenate([sdf_target(v.mask, v.voxel_size_nm) for v in vols])
        data_desc = (f"demo generator (src/demo_volume.ts makeDemoVolume, 64x256x256 at 8 nm) seeds {args.demo_seeds}, "
                     "stacked along z; instances = the generator's label ids")
        budget = "1/1 (generated labels)"
    elif args.dataset:
        vol = load_dataset(args.dataset, args.split, args.data)
        if args.xy_nm is not None:
            vol = resample_xy(vol, args.xy_nm)
        image, labels, vs = vol.image, vol.mask, vol.voxel_size_nm
        sdf = sdf_target(vol.mask, vol.voxel_size_nm)
        data_desc = (f"{args.dataset}/{args.split} (shared data layout), all {image.shape[0]} labelled slices at "
                     f"{list(vs)} nm{' (resampled in-plane)' if args.xy_nm is not None else ''}, "
                     "instances = 3D connected components of the GT mask")
        budget = f"1/1 of {args.dataset} (pretraining on another dataset; no Lucchi++ label is read)"
    else:
        vol = load_lucchi("train", args.data)
        image, labels, vs = vol.image, vol.mask, vol.voxel_size_nm
        sdf = sdf_target(vol.mask, vol.voxel_size_nm)
        data_desc = ("Lucchi++ train (../shared/data/lucchi_pp/train), all 165 labelled slices, "
                     "instances = 3D connected components of the GT mask")
        budget = "1/1 (full supervision; not a starting point for the 1/64 benchmark)"
    model = build_propagator(pcfg)
    if args.init:
        init_model, _ = load_checkpoint(args.init)
        model.load_state_dict(init_model.state_dict())
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, crop=args.crop, seed=args.seed,
                       max_minutes=args.minutes, ckpt_every=25, p_neg_other=args.p_neg_other)
    t0 = time.time()
    meta = {
        "data": data_desc,
        "annotation_budget": budget,
        "memory_input": f"GT SDF: sdf.sdf_target(mask, {list(vs)}, T={DEFAULT_TRUNCATION_NM} nm)",
        "seed": args.seed,
        "command": f"nice -n {os.nice(0)} models/.venv/bin/python -m spatialsam.train_propagator "
                   + " ".join(argv or sys.argv[1:]),
        "params": model.param_count(),
    }
    if args.init:
        meta["init"] = f"weights of {args.init}"
        meta["init_training"] = init_meta(args.init)
    hist = train_mask_track(model, image, sdf, labels, None, tcfg, ckpt_dir=args.ckpt_dir, progress=True,
                            meta=meta)
    meta["train_seconds_this_process"] = round(time.time() - t0, 1)
    meta["steps"] = len(hist)
    last = hist[-50:]
    meta["final_train_loss_mean_last50"] = float(np.mean([h["loss"] for h in last])) if last else None
    print(json.dumps({k: meta[k] for k in ("steps", "final_train_loss_mean_last50")}))
    if args.export:
        export_propagator(model, args.export, training=meta, voxel_size_nm=list(vs))
        print(json.dumps(check_parity(model, args.export)))


def init_meta(path: str | Path) -> dict[str, Any]:
    """What a fine-tuning run started from: the data, budget and command its ``--init`` checkpoint
    recorded (so a manifest says what the weights saw before its own training data)."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    m = ck.get("meta") or {}
    return {k: m[k] for k in ("data", "annotation_budget", "command", "steps") if k in m} | {"step": int(ck["step"])}


def finalize(ckpt: Path, export_dir: str | None, data: str | None, seed: int,
             train_wall_minutes: float | None = None, *, name: str | None = None,
             licence: str | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on Lucchi++ test (interactive tracking with the GT SDF, a degraded GT SDF
    and a zero SDF as the memory input) and export it with its training metadata (``name``: the
    manifest's model name; ``licence``: a note on what the weights may be used for)."""
    from spatialsam.data import load_dataset, load_lucchi, resample_xy
    from spatialsam.export_propagator import check_parity, export_propagator
    from spatialsam.predictor import evaluate_tracking
    from spatialsam.sdf import sdf_target

    model, meta = load_checkpoint(ckpt)
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    hist = ck["history"]
    meta["steps"] = ck["step"]
    if train_wall_minutes is not None:
        meta["train_wall_minutes"] = train_wall_minutes
    if licence:
        meta["licence"] = licence
    if "init" in meta and "init_training" not in meta:  # checkpoints written before init_training was recorded
        path = meta["init"].removeprefix("weights of ")
        if Path(path).is_file():
            meta["init_training"] = init_meta(path)
    meta["final_train_loss_mean_last50"] = float(np.mean([h["loss"] for h in hist[-50:]]))
    # The first 64 test slices (the SDF of the whole stack costs minutes here); components are cut there.
    test = load_lucchi("test", data).crop(slice(0, 64))
    t0 = time.time()
    gt_sdf = sdf_target(test.mask, test.voxel_size_nm)
    # A stand-in for an imperfect U-Net SDF: boundary pushed 5 nm inwards plus voxel noise (sd 0.1).
    noise = np.random.default_rng(seed).normal(0, 0.1, gt_sdf.shape).astype(np.float32)
    degraded = np.clip(gt_sdf - 0.05 + noise, -1, 1).astype(np.float32)
    metrics = {
        "protocol": "Lucchi++ test slices 0-63: 20 random 3D GT components spanning >= 5 slices, one click at the deepest "
                    "point of the largest cross-section + its bounding box, propagate both ways in a 128 px "
                    "window; IoU of the 3D object and mean per-slice IoU",
        "gt_sdf_memory": evaluate_tracking(model, test.image, gt_sdf, test.mask, seed=seed),
        "degraded_sdf_memory": evaluate_tracking(model, test.image, degraded, test.mask, seed=seed),
        "zero_sdf_memory": evaluate_tracking(model, test.image, np.zeros_like(gt_sdf), test.mask, seed=seed),
    }
    metrics["eval_seconds"] = round(time.time() - t0, 1)
    meta["validation"] = metrics
    print(json.dumps(metrics, indent=2))
    if export_dir:
        vs = list(test.voxel_size_nm)
        export_propagator(model, export_dir, training=meta, voxel_size_nm=vs, name=name)
        print(json.dumps(check_parity(model, export_dir)))
    return meta


def finalize_demo(ckpt: Path, export_dir: str | None, demo_data: str, val_seeds: str | None, unet_run: str | None,
                  train_wall_minutes: float | None = None, window: int = 128) -> dict[str, Any]:
    """Evaluate a checkpoint on held-out demo seeds the way the demo is used (predictor.evaluate_clicks:
    one click per object, in a `window` px window around it and in whole slices), with the exact SDF
    and, given a train-unet run, the U-Net's SDF as the memory; export it with its training metadata."""
    from spatialsam.cli import run_summary
    from spatialsam.data import load_demo_volumes
    from spatialsam.export_propagator import check_parity, export_propagator
    from spatialsam.predictor import evaluate_clicks
    from spatialsam.sdf import sdf_target
    from spatialsam.train_unet import load_unet, predict

    if not val_seeds:
        raise ValueError("--val-demo-seeds: required with --demo-data --finalize")
    model, meta = load_checkpoint(ckpt)
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    meta["steps"] = ck["step"]
    if train_wall_minutes is not None:
        meta["train_wall_minutes"] = train_wall_minutes
    meta["final_train_loss_mean_last50"] = float(np.mean([h["loss"] for h in ck["history"][-50:]]))
    t0 = time.time()
    metrics: dict[str, Any] = {
        "protocol": f"held-out demo seeds {val_seeds}: every object, one positive click at the deepest point of its "
                    f"largest cross-section (no box), a window of {window} px around that cross-section (or whole "
                    "256x256 slices: 'whole_slices'), propagate both ways; mean/min 3D IoU per object, share of "
                    "predicted voxels on other objects; 'negative_click': plus one negative click on the nearest "
                    "other object on that slice",
    }
    vols = load_demo_volumes(demo_data, [int(x) for x in val_seeds.split(",")])
    unet = (load_unet(Path(unet_run) / "best.pt"), run_summary(Path(unet_run))) if unet_run else None
    for v in vols:
        sdfs = {"gt_sdf_memory": sdf_target(v.mask, v.voxel_size_nm)}
        if unet is not None:
            sdfs["unet_sdf_memory"] = predict(unet[0], v.image, unet[1]["mean"], unet[1]["std"])[0]
            metrics[f"{v.name} unet_fg_iou"] = float((((sdfs["unet_sdf_memory"] > 0) & v.mask).sum())
                                                      / ((sdfs["unet_sdf_memory"] > 0) | v.mask).sum())
        runs = [(f"{name}", sdf, {"window": window}) for name, sdf in sdfs.items()]
        runs += [("gt_sdf_memory negative_click", sdfs["gt_sdf_memory"], {"window": window, "negative_on_neighbour": True}),
                 ("gt_sdf_memory whole_slices", sdfs["gt_sdf_memory"], {})]
        for name, sdf, kw in runs:
            metrics[f"{v.name} {name}"] = evaluate_clicks(model, v.image, sdf, v.labels, **kw)  # type: ignore[arg-type]
            print(json.dumps({name: metrics[f"{v.name} {name}"]}), flush=True)
    metrics["eval_seconds"] = round(time.time() - t0, 1)
    meta["validation"] = metrics
    print(json.dumps(metrics, indent=2))
    if export_dir:
        # Named after its folder: the demo serves it beside propagator_lucchi (propagator_compact).
        export_propagator(model, export_dir, training=meta, voxel_size_nm=list(vols[0].voxel_size_nm),
                          name=Path(export_dir).name)
        print(json.dumps(check_parity(model, export_dir)))
    return meta


if __name__ == "__main__":
    main()
