"""2D U-Net baseline (b2): the same two-headed U-Net as unet3d.py on single z-slices, applied to a
volume slice by slice (which is exactly what produces z-flicker)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .unet3d import UNet, UNetConfig, check_input_shape


def default_unet2d_config() -> UNetConfig:
    return UNetConfig(spatial_dims=2, channels=(16, 32, 64, 128), pool=((2, 2), (2, 2), (2, 2)))


def build_unet2d(cfg: UNetConfig | dict | None = None) -> UNet:
    """Make a 2D U-Net: forward(image [B, 1, Y, X] float32) -> (sdf, fg_logit), each [B, 1, Y, X]."""
    if cfg is None:
        return UNet(default_unet2d_config())
    c = cfg if isinstance(cfg, UNetConfig) else UNetConfig(**{"spatial_dims": 2, **cfg})
    if c.spatial_dims != 2:
        raise ValueError(f"spatial_dims: build_unet2d needs 2, got {c.spatial_dims}")
    return UNet(c)


@torch.no_grad()
def predict_slices(model: UNet, image: torch.Tensor, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a 2D U-Net to every z-slice. image: float32 [Z, Y, X], normalised; Y and X are padded
    (zeros) up to the pooling multiple and cropped back. Returns (sdf, fg_logit), float32 [Z, Y, X]."""
    if image.ndim != 3:
        raise ValueError(f"image: expected [Z, Y, X], got shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError("image: contains NaN or infinite values")
    model.eval()
    mult: Sequence[int] = model.cfg.size_multiple()
    z, y, x = image.shape
    py, px = -(-y // mult[0]) * mult[0], -(-x // mult[1]) * mult[1]
    check_input_shape(model.cfg, (py, px))
    dev = next(model.parameters()).device
    sdf = torch.empty((z, y, x), device=image.device)
    fg = torch.empty((z, y, x), device=image.device)
    for z0 in range(0, z, batch):
        chunk = torch.zeros((min(batch, z - z0), 1, py, px), device=dev)
        chunk[:, 0, :y, :x] = image[z0 : z0 + batch]
        s, f = model(chunk)
        sdf[z0 : z0 + batch] = s[:, 0, :y, :x]
        fg[z0 : z0 + batch] = f[:, 0, :y, :x]
    return sdf, fg
