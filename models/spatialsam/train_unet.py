"""Train the 3D (or 2D) U-Net on a volume with a per-voxel weight map: deterministic for a seed,
atomic checkpoints every N steps, resumable after a kill, JSON-lines log, early stopping on a
held-out volume.

State on disk (``out_dir``): ``checkpoint.pt`` (latest: model, optimizer, RNG states, step,
early-stopping state), ``best.pt`` (model weights with the best validation fg-IoU), ``log.jsonl``
(one JSON object per logged step / validation), ``config.json`` (the TrainConfig).
"""

from __future__ import annotations

import copy
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .atomic_files import torch_save, write_text
from .device import AMP_MODES, resolve_amp, to_device, to_numpy
from .data import annotation_weights, check_slices, check_volume, sample_crop_origins
from .losses import unet_loss
from .metrics import foreground_iou
from .sdf import sdf_target, sdf_target_per_slice
from .unet2d import build_unet2d, predict_slices
from .unet3d import UNet, UNetConfig, build_unet3d, check_input_shape, predict_volume, round_up


LR_SCHEDULES = ("constant", "cosine")  # TrainConfig.lr_schedule; scheduled_lr says what each does


@dataclass
class TrainConfig:
    """Training as data. Budget: at most ``max_steps`` optimizer steps, ``max_time_s`` wall seconds
    and ``max_cpu_s`` CPU seconds;
    with validation data, stop earlier once fg-IoU has not improved for ``patience`` validations."""

    model: str = "unet3d"  # "unet3d" or "unet2d"
    unet: dict = field(default_factory=dict)  # UNetConfig fields; {} = defaults of the model kind
    crop_zyx: tuple[int, int, int] = (16, 96, 96)  # z ignored for unet2d (one slice per sample)
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-5
    max_steps: int = 2000
    max_time_s: float | None = None
    max_cpu_s: float | None = None  # budget in CPU seconds of this process (see train_unet)
    checkpoint_every: int = 50
    val_every: int = 100
    patience: int = 5
    log_every: int = 10
    seed: int = 0
    threads: int = 1
    sdf_weight: float = 1.0
    sign_weight: float = 1.0
    augment: bool = True
    truncation_nm: float = 100.0  # SDF truncation T (sdf.py); recorded in the manifest
    # Share of crops centred on a labelled foreground voxel. Mitochondria are ~7% of Lucchi++:
    # uniform batch-1 crops taught the net to predict background everywhere.
    fg_crop_fraction: float = 0.5
    # "bf16": forward and backward under autocast to bfloat16 on the device the crops are on (weights,
    # optimizer and losses stay float32). 2.5-3x faster per step on CPUs with AVX512-BF16 or AMX, but
    # 1.8x slower than float32 on a CPU without them (oneDNN emulates it: unet3d_lucchi_learned, 2
    # threads, 8.0 against 4.5 CPU-s per step). "auto": bf16 where the device has it in hardware,
    # else float32 (device.resolve_amp; the summary's "amp" says which). Inference stays float32.
    amp: str = "none"
    # Weights, activations and input crops in the channels-last memory format (NDHWC / NHWC) instead
    # of NCDHW: oneDNN's convolutions run without reordering in between. unet3d_lucchi_learned, 2
    # threads, 4 x 32x192x192 (bench/unet_step_cost.py): float32 2.56 against 3.45 CPU-s per step on a
    # CPU without bf16 (1.35x), bf16 1.15 against 1.29 with AMX (1.12x). The same arithmetic in
    # another order: results agree to rounding, not bit for bit, with a run without it.
    channels_last: bool = False
    # Exponential moving average of the weights (0 = off), used for validation, best.pt and the
    # result: batch-1 crops make consecutive weights noisy (validation fg-IoU swung 0.3-0.5 between
    # checks 100 steps apart on Lucchi++), their average is not.
    ema_decay: float = 0.0
    # Probability of a random intensity change per crop (contrast x U(0.8, 1.2), brightness
    # + U(-0.2, 0.2) std, Gaussian noise of sd U(0, 0.1) std): imaging varies within and between
    # volumes, and with a few annotated slices the net otherwise learns their exact grey levels.
    intensity_augment: float = 0.0
    # Gradient-norm clipping (0 = off). A step whose loss or gradient is not finite is skipped and
    # counted (state "skipped_steps"): one such step under bf16 at lr 2e-3 once turned every weight NaN.
    grad_clip: float = 0.0
    # Share of crops that overhang a face of the volume (zero input and zero weight outside). Without
    # them the net never sees the zero padding of blockwise inference: on Lucchi++ train the first and
    # last 6 slices scored fg-IoU 0.40-0.47 against 0.85 in between.
    border_crop_fraction: float = 0.0
    # Threads that cut and augment the next crops while the network trains on the current ones
    # (0 = none: crops drawn one after another from one random stream, the way every run before
    # 2026-12-04 was made). On a GPU the network's step takes milliseconds and cutting 4 crops of
    # 32x192x192 takes about 100 ms of CPU, so without them the GPU waits. With them, step k's crops
    # come from their own stream, seeded (seed, k): the same crops for any number of threads and
    # after a resume, but other crops than with 0.
    loader_threads: int = 0
    # Learning rate over the run: "constant" (lr throughout, every run before 2026-12-05) or "cosine"
    # (lr * (1 + cos(pi * step / max_steps)) / 2, from lr at step 0 to 0 at max_steps), so that the
    # weights a run ends on are not one noisy point of a constant-rate walk. A function of the step
    # alone, so a resumed run follows the same schedule.
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.model not in ("unet3d", "unet2d"):
            raise ValueError(f"model: must be 'unet3d' or 'unet2d', got {self.model!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay: must be in [0, 1), got {self.ema_decay}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp: must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        self.crop_zyx = tuple(int(c) for c in self.crop_zyx)  # type: ignore[assignment]
        for name in ("batch_size", "max_steps", "checkpoint_every", "val_every", "patience", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last: must be true or false, got {self.channels_last!r}")
        if not isinstance(self.loader_threads, int) or self.loader_threads < 0:
            raise ValueError(f"loader_threads: must be an integer >= 0, got {self.loader_threads!r}")


@dataclass
class TrainData:
    """image: uint8 [Z, Y, X]; target_sdf: float32 [Z, Y, X] normalised SDF (sign = mask);
    weight: float32 [Z, Y, X] >= 0 (0 = unlabelled). Intensities are normalised as
    (image / 255 - mean) / std with mean/std of this image unless given."""

    image: np.ndarray
    target_sdf: np.ndarray
    weight: np.ndarray
    mean: float | None = None
    std: float | None = None
    # Slices whose labels are annotations, when the other weighted voxels are pseudo-labels (the
    # dual-track SDF track). Then the loss is normalised over each part on its own,
    # L = L(annotated voxels) + pseudo_loss_weight * L(pseudo-labelled voxels), and a share
    # anchor_crop_fraction of the crops contains an annotated slice, so the few true labels keep the
    # pull they have without pseudo-labels however many pseudo-labelled voxels a crop holds (with one
    # normalisation over all, a 32-slice crop gave its one annotated slice about 6% of the loss).
    anchor_slices: tuple[int, ...] | None = None
    pseudo_loss_weight: float = 0.5
    anchor_crop_fraction: float = 0.5

    def __post_init__(self) -> None:
        check_volume(self.image, "image")
        check_volume(self.target_sdf, "target_sdf")
        check_volume(self.weight, "weight")
        for name in ("target_sdf", "weight"):
            if getattr(self, name).shape != self.image.shape:
                raise ValueError(f"{name}: shape {getattr(self, name).shape} does not match image shape {self.image.shape}")
        if self.weight.min() < 0:
            raise ValueError("weight: negative values")
        if not self.weight.any():
            raise ValueError("weight: all zero (empty annotations), nothing to train on")
        if self.anchor_slices is not None:
            self.anchor_slices = tuple(check_slices(list(self.anchor_slices), self.image.shape[0]))
            if not self.weight[list(self.anchor_slices)].any():
                raise ValueError("anchor_slices: no weight on any of these slices")
            for name in ("pseudo_loss_weight", "anchor_crop_fraction"):
                if not 0 <= getattr(self, name) <= 1:
                    raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.mean is None or self.std is None:
            scaled = self.image.astype(np.float32)[:: max(1, self.image.shape[0] // 16)] / 255.0
            self.mean, self.std = float(scaled.mean()), float(max(scaled.std(), 1e-3))


@dataclass
class ValData:
    """Held-out volume: image uint8 [Z, Y, X], mask bool [Z, Y, X]. The first and last
    ``context_z`` slices are input only (not scored): a 3D net scored on a thin slab without the
    slices around it is judged on its zero padding (Lucchi++, 48 slices: fg-IoU 0.58 without
    context, 0.62 with 16 slices on each side, same weights)."""

    image: np.ndarray
    mask: np.ndarray
    context_z: int = 0

    def __post_init__(self) -> None:
        check_volume(self.image, "val image")
        if self.mask.shape != self.image.shape:
            raise ValueError(f"val mask: shape {self.mask.shape} does not match val image shape {self.image.shape}")
        if not (0 <= self.context_z and 2 * self.context_z < self.image.shape[0]):
            raise ValueError(f"val context_z: {self.context_z} leaves no slice of {self.image.shape[0]} to score")

    def score(self, pred_mask: np.ndarray) -> float:
        """fg-IoU of a prediction (bool [Z, Y, X] over the whole image) on the scored slices."""
        inner = slice(self.context_z, self.image.shape[0] - self.context_z)
        return foreground_iou(pred_mask[inner], self.mask[inner])


def make_train_data(
    image: np.ndarray,
    mask: np.ndarray,
    voxel_size_nm: tuple[float, float, float],
    annotated_slices: list[int] | None = None,
    truncation_nm: float = 100.0,
) -> TrainData:
    """Targets for full (``annotated_slices=None``: 3D SDF, weight 1 everywhere) or sparse
    supervision (2D SDF on each annotated slice, weight 1 there and 0 elsewhere: a 3D distance
    would treat the unannotated neighbours as background)."""
    check_volume(image, "image")
    if mask.shape != image.shape:
        raise ValueError(f"mask: shape {mask.shape} does not match image shape {image.shape}")
    if annotated_slices is None:
        return TrainData(image, sdf_target(mask, voxel_size_nm, truncation_nm), np.ones(image.shape, np.float32))
    weight = annotation_weights(image.shape, annotated_slices)
    target = np.zeros(image.shape, np.float32)
    sl = sorted(annotated_slices)
    target[sl] = sdf_target_per_slice(mask[sl], voxel_size_nm, truncation_nm)
    return TrainData(image, target, weight)


def normalise_image(image: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 [Z, Y, X] -> float32 tensor (image / 255 - mean) / std."""
    return torch.from_numpy((image.astype(np.float32) / 255.0 - mean) / std)


def _memory_format(cfg: TrainConfig) -> torch.memory_format:
    """The layout a run trains in (TrainConfig.channels_last)."""
    if not cfg.channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if cfg.model == "unet3d" else torch.channels_last


def build_model(cfg: TrainConfig) -> UNet:
    return build_unet3d(cfg.unet) if cfg.model == "unet3d" else build_unet2d(cfg.unet or None)


# Blocks of 16 slices read with 16 slices of halo on each side: 48-slice inputs, close to the
# 32-slice training crops. A net trained on thin crops always sees the zero padding of a crop face
# in z and can come to rely on it: Lucchi++'s sparse U-Net trained on 1/16 of the slices scored
# test fg-IoU 0.514 with 64-slice blocks (96-slice inputs; per-slice IoU jumping at block seams,
# 0.74 -> 0.49) and 0.741 with these; the fully supervised one 0.786 -> 0.797, the 1/64 dual-track
# one 0.769 -> 0.768. Twice the compute of 64-slice blocks.
FAST_HALO_ZYX = (16, 32, 32)
FAST_BLOCK_ZYX = (16, 384, 512)


def fast_halo(cfg: UNetConfig) -> tuple[int, ...]:
    """The halo every evaluation here uses (FAST_HALO_ZYX, rounded up to the network's size multiple)."""
    return round_up(FAST_HALO_ZYX, cfg.size_multiple())


@torch.no_grad()
def predict(model: UNet, image: np.ndarray, mean: float, std: float, fast: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Whole-volume prediction with either kind of U-Net: (sdf, fg_logit), float32 [Z, Y, X].
    ``fast`` (3D only): large blocks with the reduced halo FAST_HALO_ZYX instead of the full
    context (see unet3d.predict_volume); used for validation and evaluation on this CPU."""
    x = normalise_image(image, mean, std)
    if model.cfg.spatial_dims == 3:
        if fast:
            s, f = predict_volume(model, x, FAST_BLOCK_ZYX, fast_halo(model.cfg))
        else:
            s, f = predict_volume(model, x)
    else:
        s, f = predict_slices(model, x)
    return to_numpy(s), to_numpy(f)


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Same random flips (z, y, x) and y/x transpose for every array stacked on axis 0."""
    for axis in (1, 2, 3):
        if rng.random() < 0.5:
            x = np.flip(x, axis)
    if x.shape[2] == x.shape[3] and rng.random() < 0.5:
        x = x.transpose(0, 1, 3, 2)
    return np.ascontiguousarray(x)


def _jitter_intensity(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random contrast, brightness and noise on a normalised image crop (units of the volume's std)."""
    noise = rng.normal(0.0, rng.uniform(0.0, 0.1), x.shape).astype(np.float32)
    return (x * rng.uniform(0.8, 1.2) + rng.uniform(-0.2, 0.2) + noise).astype(np.float32)


def _foreground_voxels(data: TrainData, stride: int = 7) -> np.ndarray:
    """int64 [N, 3] coordinates of (every ``stride``-th) labelled foreground voxel (weight > 0, SDF > 0)."""
    flat = np.flatnonzero(((data.weight > 0) & (data.target_sdf > 0)).ravel()[::stride]) * stride
    return np.stack(np.unravel_index(flat, data.image.shape), axis=1).astype(np.int64)


@dataclass
class _Anchors:
    """What the crops of a run with ``TrainData.anchor_slices`` are drawn from, computed once per run:
    slice_w (float [Z], 1 on annotated slices) and fg (the labelled foreground voxels on them)."""

    slice_w: np.ndarray
    fg: np.ndarray

    @classmethod
    def of(cls, data: TrainData, fg_voxels: np.ndarray) -> "_Anchors | None":
        if data.anchor_slices is None:
            return None
        slice_w = np.zeros(data.image.shape[0])
        slice_w[list(data.anchor_slices)] = 1.0
        return cls(slice_w, fg_voxels[np.isin(fg_voxels[:, 0], data.anchor_slices)])


def _batch(data: TrainData, cfg: TrainConfig, rng: np.random.Generator, slice_w: np.ndarray, fg: np.ndarray,
           anchors: _Anchors | None = None) -> tuple[torch.Tensor, ...]:
    """(image, target SDF, weight[, anchor]) tensors [B, 1, *crop] on the default device; anchor (1 on
    annotated slices) only with ``anchors`` (``_Anchors.of(data, fg)``, for data with anchor_slices)."""
    return _to_tensors(_batch_arrays(data, cfg, rng, slice_w, fg, anchors), cfg)


def _to_tensors(stacked: tuple[np.ndarray, ...], cfg: TrainConfig) -> tuple[torch.Tensor, ...]:
    out = tuple(to_device(a)[:, None] for a in stacked)
    if cfg.model == "unet2d":
        out = tuple(t[:, :, 0] for t in out)
    return out


def _batch_arrays(data: TrainData, cfg: TrainConfig, rng: np.random.Generator, slice_w: np.ndarray, fg: np.ndarray,
                  anchors: _Anchors | None = None) -> tuple[np.ndarray, ...]:
    """_batch's crops as numpy arrays [B, *crop] (numpy alone, so loader threads can cut them)."""
    crop = (1, *cfg.crop_zyx[1:]) if cfg.model == "unet2d" else cfg.crop_zyx
    origins = sample_crop_origins(data.image.shape, crop, cfg.batch_size, rng, slice_w)
    pools = [fg] * cfg.batch_size
    if anchors is not None:
        # Crops that must hold an annotated slice, drawn as (b) draws all of its crops.
        on_anchor = rng.random(cfg.batch_size) < data.anchor_crop_fraction
        redrawn = sample_crop_origins(data.image.shape, crop, cfg.batch_size, rng, anchors.slice_w)
        origins[on_anchor] = redrawn[on_anchor]
        pools = [anchors.fg if on and len(anchors.fg) else fg for on in on_anchor]
    for i, pool in enumerate(pools):
        if len(pool) and rng.random() < cfg.fg_crop_fraction:
            c = pool[rng.integers(len(pool))]
            jitter = rng.integers(0, crop, 3) if cfg.model == "unet3d" else np.array([0, *rng.integers(0, crop[1:], 2)])
            hi = np.asarray(data.image.shape) - np.asarray(crop)
            origins[i] = np.clip(c - jitter, 0, hi)
    shape = np.asarray(data.image.shape)
    axes = (0, 1, 2) if cfg.model == "unet3d" else (1, 2)
    for i in range(cfg.batch_size):
        if cfg.border_crop_fraction > 0 and rng.random() < cfg.border_crop_fraction:
            # Overhang one face of the volume by up to half the crop: the net sees the zero input
            # (the mean intensity) that blockwise inference feeds it beyond the volume's faces.
            ax = axes[int(rng.integers(len(axes)))]
            over = int(rng.integers(1, crop[ax] // 2 + 1))
            origins[i, ax] = -over if rng.random() < 0.5 else shape[ax] - crop[ax] + over
    stacks = []
    for origin in origins:
        stack = np.zeros((3 if anchors is None else 4, *crop), np.float32)
        src = tuple(slice(max(o, 0), min(o + c, n)) for o, c, n in zip(origin, crop, shape))
        dst = tuple(slice(s.start - o, s.stop - o) for s, o in zip(src, origin))
        stack[(0, *dst)] = (data.image[src].astype(np.float32) / 255.0 - data.mean) / data.std
        stack[(1, *dst)] = data.target_sdf[src]
        stack[(2, *dst)] = data.weight[src]
        if anchors is not None:
            zs = np.arange(src[0].start, src[0].stop)
            stack[(3, *dst)] = np.isin(zs, data.anchor_slices)[:, None, None]  # type: ignore[arg-type]
        if cfg.augment:
            stack = _augment(stack, rng)
        if cfg.intensity_augment > 0 and rng.random() < cfg.intensity_augment:
            stack[0] = _jitter_intensity(stack[0], rng)
        stacks.append(stack)
    return tuple(np.stack([st[k] for st in stacks]) for k in range(len(stacks[0])))


class _Loader:
    """Step k's crops cut by ``cfg.loader_threads`` threads from their own random stream (seed, k), up
    to 2 x threads steps ahead of the training loop (numpy releases the GIL while it copies, converts
    and draws noise)."""

    def __init__(self, data: TrainData, cfg: TrainConfig, slice_w: np.ndarray, fg: np.ndarray,
                 anchors: _Anchors | None, first_step: int):
        from concurrent.futures import ThreadPoolExecutor

        self.cfg = cfg
        self.cut = lambda rng: _batch_arrays(data, cfg, rng, slice_w, fg, anchors)
        self.pool = ThreadPoolExecutor(max_workers=cfg.loader_threads, thread_name_prefix="unet-crops")
        self.ahead: dict = {}
        self.next_step = first_step
        for _ in range(2 * cfg.loader_threads):
            self._submit()

    def _submit(self) -> None:
        k = self.next_step
        if k < self.cfg.max_steps:
            rng = np.random.default_rng([self.cfg.seed, k])
            self.ahead[k] = self.pool.submit(self.cut, rng)
        self.next_step += 1

    def batch(self, step: int) -> tuple[torch.Tensor, ...]:
        """The crops of (0-based) step ``step``: the loop asks for steps in order."""
        fut = self.ahead.pop(step)
        self._submit()
        return _to_tensors(fut.result(), self.cfg)

    def close(self) -> None:
        for f in self.ahead.values():
            f.cancel()
        self.pool.shutdown(wait=True)


def _anchored_loss(sdf: torch.Tensor, fg: torch.Tensor, tgt: torch.Tensor, w: torch.Tensor, anchor: torch.Tensor,
                   cfg: TrainConfig, pseudo_loss_weight: float) -> tuple[torch.Tensor, dict]:
    """L(annotated) + pseudo_loss_weight * L(pseudo-labelled), each normalised by its own weight
    (a part absent from the batch contributes nothing)."""
    total, parts = sdf.new_zeros(()), {"sdf": 0.0, "sign": 0.0}
    for part_w, k in ((w * anchor, 1.0), (w * (1 - anchor), pseudo_loss_weight)):
        if k > 0 and float(part_w.sum()) > 0:
            loss, lp = unet_loss(sdf, fg, tgt, part_w, cfg.sdf_weight, cfg.sign_weight)
            total = total + k * loss
            parts = {n: parts[n] + k * lp[n] for n in parts}
    return total, parts


def train_unet(
    data: TrainData,
    cfg: TrainConfig,
    out_dir: Path | str,
    val: ValData | None = None,
    progress: bool = True,
    _kill_at_step: int | None = None,
    on_validation: Callable[[int, float], None] | None = None,
    init_weights: dict | None = None,
) -> dict:
    """Train (or resume, if ``out_dir/checkpoint.pt`` exists) and return a summary dict:
    {"step", "best_val_iou", "best_step", "stopped", "time_s", "mean", "std"}.

    ``init_weights`` (a model state_dict) starts a fresh run from those weights (the dual-track
    loop continues the previous round's U-Net); a run being resumed ignores it.
    ``_kill_at_step`` simulates a kill for tests: the loop returns right after that step without
    writing anything more, exactly like a process killed between checkpoints.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # before building: the initial weights depend on it
    model = build_model(cfg)
    amp = resolve_amp(cfg.amp, next(model.parameters()).device)
    layout = _memory_format(cfg)
    if cfg.channels_last:
        model = model.to(memory_format=layout)
    spatial = cfg.crop_zyx if cfg.model == "unet3d" else cfg.crop_zyx[1:]
    check_input_shape(model.cfg, spatial)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = copy.deepcopy(model) if cfg.ema_decay > 0 else None
    ckpt_path, best_path, log_path = out / "checkpoint.pt", out / "best.pt", out / "log.jsonl"
    # Crops are drawn where the weight is: annotated slices (weight 1) more than pseudo-labels.
    slice_w = data.weight.sum(axis=(1, 2), dtype=np.float64)
    fg_voxels = _foreground_voxels(data) if cfg.fg_crop_fraction > 0 else np.zeros((0, 3), np.int64)
    anchors = _Anchors.of(data, fg_voxels)

    state = {"step": 0, "best_val_iou": -1.0, "best_step": -1, "bad_vals": 0, "time_s": 0.0, "cpu_s": 0.0}
    rng = np.random.default_rng(cfg.seed)
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        if ema is not None:
            ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["torch_rng"])
        rng.bit_generator.state = ck["numpy_rng"]
        state = ck["state"]
        # Drop log lines written after the checkpoint: those steps will be redone.
        if log_path.exists():
            keep = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= state["step"]]
            write_text(log_path, "".join(ln + "\n" for ln in keep))
    else:
        if init_weights is not None:
            model.load_state_dict(init_weights)
            if ema is not None:
                ema.load_state_dict(init_weights)
        if log_path.exists():
            log_path.unlink()
    # The config in force (a resumed run may carry a new budget, e.g. a larger max_cpu_s).
    write_text(out / "config.json", json.dumps(asdict(cfg), indent=1))

    def save_checkpoint() -> None:
        torch_save(
            {
                "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": opt.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": rng.bit_generator.state,
                "state": state,
                "train_config": asdict(cfg),
                "unet_config": model.cfg.to_dict(),
                "norm": {"mean": data.mean, "std": data.std},
            },
            ckpt_path,
        )

    def log(rec: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    # SIGTERM ends the run cleanly after the current step (checkpoint, validation, summary), so a
    # background run can be stopped at a deadline; SIGKILL still just resumes from the checkpoint.
    term = {"requested": False}
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGTERM, lambda *_: term.update(requested=True))
    t_start = time.monotonic() - state["time_s"]
    # CPU seconds of this process (all threads): unlike wall time, not inflated when other work
    # shares the machine, so budgets in CPU time stay comparable between runs.
    cpu_start = time.process_time() - state.get("cpu_s", 0.0)
    stopped = "max_steps"
    result = ema if ema is not None else model  # the weights that are validated and kept
    bar = tqdm(total=cfg.max_steps, initial=state["step"], disable=not progress, desc=f"train {cfg.model}", unit="step")
    # (An exception leaves at most 2 x loader_threads batches being cut; their threads then end.)
    loader = _Loader(data, cfg, slice_w, fg_voxels, anchors, state["step"]) if cfg.loader_threads > 0 else None
    while state["step"] < cfg.max_steps:
        model.train()
        if loader is not None:
            img, tgt, w, *anchor = loader.batch(state["step"])
        else:
            img, tgt, w, *anchor = _batch(data, cfg, rng, slice_w, fg_voxels, anchors)
        if float(w.sum()) == 0:
            # A crop can miss every labelled voxel after all (weights inside a slice); skip it.
            loss_parts = None
        else:
            with torch.autocast(img.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
                sdf, fg = model(img.contiguous(memory_format=layout))
            if anchor:
                loss, loss_parts = _anchored_loss(sdf.float(), fg.float(), tgt, w, anchor[0], cfg, data.pseudo_loss_weight)
            else:
                loss, loss_parts = unet_loss(sdf.float(), fg.float(), tgt, w, cfg.sdf_weight, cfg.sign_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if torch.isfinite(loss) and torch.isfinite(norm):
                for g in opt.param_groups:
                    g["lr"] = scheduled_lr(cfg, state["step"])
                opt.step()
                if ema is not None:
                    _ema_update(ema, model, cfg.ema_decay, state["step"])
            else:
                state["skipped_steps"] = state.get("skipped_steps", 0) + 1
                loss_parts = None
        state["step"] += 1
        state["time_s"] = time.monotonic() - t_start
        state["cpu_s"] = time.process_time() - cpu_start
        step = state["step"]
        bar.update(1)
        if loss_parts is not None and (step % cfg.log_every == 0 or step == 1):
            log({"step": step, "time_s": round(state["time_s"], 2), "cpu_s": round(state["cpu_s"], 2), "loss_sdf": loss_parts["sdf"], "loss_sign": loss_parts["sign"]})
            bar.set_postfix(sdf=f"{loss_parts['sdf']:.3f}", sign=f"{loss_parts['sign']:.3f}")
        done = False
        if cfg.max_time_s is not None and state["time_s"] >= cfg.max_time_s:
            stopped, done = "max_time", True
        if cfg.max_cpu_s is not None and state["cpu_s"] >= cfg.max_cpu_s:
            stopped, done = "max_cpu", True
        if term["requested"]:
            stopped, done = "sigterm", True
        # Validate on schedule, and once more at the end so best.pt always exists.
        if val is not None and (step % cfg.val_every == 0 or done or step == cfg.max_steps):
            s, _ = predict(result, val.image, data.mean, data.std)  # type: ignore[arg-type]
            iou = val.score(s > 0)
            log({"step": step, "time_s": round(state["time_s"], 2), "cpu_s": round(state["cpu_s"], 2), "val_fg_iou": iou})
            if on_validation is not None:
                on_validation(step, iou)
            if iou > state["best_val_iou"]:
                state.update(best_val_iou=iou, best_step=step, bad_vals=0)
                torch_save({"model": result.state_dict(), "unet_config": model.cfg.to_dict(), "step": step}, best_path)
            else:
                state["bad_vals"] += 1
                if state["bad_vals"] >= cfg.patience:
                    stopped, done = "early_stopping", True
        if _kill_at_step is not None and step == _kill_at_step:
            bar.close()
            if loader is not None:
                loader.close()
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
            return {"step": step, "stopped": "killed"}
        if step % cfg.checkpoint_every == 0 or done or step == cfg.max_steps:
            save_checkpoint()
        if done:
            break
    bar.close()
    if loader is not None:
        loader.close()
    if old_handler is not None:
        signal.signal(signal.SIGTERM, old_handler)
    if val is None:
        torch_save({"model": result.state_dict(), "unet_config": model.cfg.to_dict(), "step": state["step"]}, best_path)
    return {
        "step": state["step"],
        "best_val_iou": state["best_val_iou"] if val is not None else None,
        "best_step": state["best_step"] if val is not None else state["step"],
        "stopped": stopped,
        "time_s": round(state["time_s"], 1),
        "cpu_s": round(state.get("cpu_s", 0.0), 1),
        "skipped_steps": state.get("skipped_steps", 0),
        "device": str(next(model.parameters()).device),
        "amp": amp,
        "mean": data.mean,
        "std": data.std,
    }


@torch.no_grad()
def _ema_update(ema: UNet, model: UNet, decay: float, step: int) -> None:
    """ema = d * ema + (1 - d) * model, with d ramped up over the first steps (a young average
    would otherwise remember the random initialisation). BatchNorm's running statistics are averaged
    the same way; integer buffers are copied."""
    d = min(decay, (1 + step) / (10 + step))
    target = model.state_dict()
    for k, v in ema.state_dict().items():
        if v.is_floating_point():
            v.mul_(d).add_(target[k].detach(), alpha=1 - d)
        else:
            v.copy_(target[k])


def scheduled_lr(cfg: TrainConfig, step: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) under ``cfg.lr_schedule``."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, cfg.max_steps) / cfg.max_steps))
    return cfg.lr


def load_unet(path: Path | str) -> UNet:
    """Rebuild a U-Net from ``best.pt`` or ``checkpoint.pt`` (weights + its UNetConfig), in eval mode."""
    ck = torch.load(Path(path), map_location="cpu", weights_only=False)
    model = UNet(UNetConfig(**ck["unet_config"]))
    model.load_state_dict(ck["model"])
    return model.eval()
