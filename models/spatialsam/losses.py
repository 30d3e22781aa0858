"""Losses for the U-Nets: weighted L1 on the normalised SDF and weighted BCE on the foreground
logit (the SDF's sign). Per-voxel weights carry annotation masks (0 = unlabelled) and
pseudo-label confidence; every loss is normalised by the total weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(name: str, t: torch.Tensor, like: torch.Tensor | None = None) -> None:
    if like is not None and t.shape != like.shape:
        raise ValueError(f"{name}: shape {tuple(t.shape)} does not match prediction shape {tuple(like.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or infinite values")


def sdf_loss(pred_sdf: torch.Tensor, target_sdf: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean L1 between normalised SDFs (both in [-1, 1]); any equal shapes, e.g. [B, 1, Z, Y, X]."""
    _check("target_sdf", target_sdf, pred_sdf)
    _check("weight", weight, pred_sdf)
    return (weight * (pred_sdf - target_sdf).abs()).sum() / weight.sum().clamp_min(1e-6)


def sign_loss(fg_logit: torch.Tensor, target_mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean binary cross-entropy of the foreground logit against the target mask (0/1 or soft)."""
    _check("target_mask", target_mask, fg_logit)
    _check("weight", weight, fg_logit)
    bce = F.binary_cross_entropy_with_logits(fg_logit, target_mask.float(), reduction="none")
    return (weight * bce).sum() / weight.sum().clamp_min(1e-6)


def unet_loss(
    pred_sdf: torch.Tensor,
    fg_logit: torch.Tensor,
    target_sdf: torch.Tensor,
    weight: torch.Tensor,
    sdf_weight: float = 1.0,
    sign_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss = sdf_weight * L1(sdf) + sign_weight * BCE(fg_logit, target_sdf > 0).
    Returns (loss, {"sdf": ..., "sign": ...}) with the parts as floats for logging."""
    if float(weight.sum()) <= 0:
        raise ValueError("weight: all zero, nothing is annotated in this batch")
    ls = sdf_loss(pred_sdf, target_sdf, weight)
    lb = sign_loss(fg_logit, (target_sdf > 0).float(), weight)
    return sdf_weight * ls + sign_weight * lb, {"sdf": float(ls.detach()), "sign": float(lb.detach())}
