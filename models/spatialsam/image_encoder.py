"""2D image encoders of the propagator, behind one interface and a registry keyed by name.

The `compact_conv` encoder is small enough to train on a 2-core CPU; a SAM2 Hiera backbone (or any
other) plugs in by subclassing `ImageEncoder` and calling `register_encoder("hiera_b+", ...)`: the rest
of the propagator only reads `dim`, `stride`, `skip_dims` and the three outputs of `forward`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class ImageFeatures:
    """Per-slice image embedding, cached per z by the predictor (and by the TS server).

    feat:  [B, D, H/16, W/16] float32, the token grid memory attention and the decoder work on
    skip8: [B, C8, H/8, W/8] float32, high-resolution skip for the mask decoder
    skip4: [B, C4, H/4, W/4] float32, high-resolution skip for the mask decoder
    """

    feat: torch.Tensor
    skip8: torch.Tensor
    skip4: torch.Tensor

    def index(self, i: int | slice) -> ImageFeatures:
        """Batch entries `i` (kept as a batch axis)."""
        sl = slice(i, i + 1) if isinstance(i, int) else i
        return ImageFeatures(self.feat[sl], self.skip8[sl], self.skip4[sl])

    def expand(self, b: int) -> ImageFeatures:
        """The same (batch-1) features repeated for `b` objects, without copying."""
        return ImageFeatures(
            self.feat.expand(b, -1, -1, -1), self.skip8.expand(b, -1, -1, -1), self.skip4.expand(b, -1, -1, -1)
        )


class ImageEncoder(nn.Module):
    """Interface: image [B, 1, H, W] float32 (normalised, H and W multiples of `stride`) -> ImageFeatures."""

    dim: int
    stride: int = 16
    skip_dims: tuple[int, int]  # (C8, C4)

    def forward(self, image: torch.Tensor) -> ImageFeatures:  # pragma: no cover - interface
        raise NotImplementedError


def norm2d(c: int) -> nn.Module:
    """Channel LayerNorm for conv maps ([B, C, H, W]); GroupNorm(1) exports to plain ONNX ops."""
    return nn.GroupNorm(1, c)


class ConvBlock(nn.Module):
    """Residual 3x3 conv block: x + conv(gelu(norm(conv(x))))."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), norm2d(c), nn.GELU(), nn.Conv2d(c, c, 3, padding=1), norm2d(c)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x + self.body(x))


class CompactConvEncoder(ImageEncoder):
    """Conv pyramid with four stride-2 stages (strides 2, 4, 8, 16), `depth` residual blocks per stage."""

    def __init__(self, dim: int = 64, widths: tuple[int, int, int] = (16, 16, 32), depth: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.stride = 16
        w2, w4, w8 = widths
        self.skip_dims = (w8, w4)

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1), norm2d(cout), nn.GELU(),
                *[ConvBlock(cout) for _ in range(depth)],
            )

        self.s2 = stage(1, w2)
        self.s4 = stage(w2, w4)
        self.s8 = stage(w4, w8)
        self.s16 = stage(w8, dim)

    def forward(self, image: torch.Tensor) -> ImageFeatures:
        x4 = self.s4(self.s2(image))
        x8 = self.s8(x4)
        return ImageFeatures(feat=self.s16(x8), skip8=x8, skip4=x4)


EncoderFactory = Callable[..., ImageEncoder]
ENCODERS: dict[str, EncoderFactory] = {"compact_conv": CompactConvEncoder}


def register_encoder(name: str, factory: EncoderFactory) -> None:
    """Make an encoder buildable by name from a config (e.g. a SAM2 Hiera adapter)."""
    ENCODERS[name] = factory


def build_image_encoder(name: str, dim: int, params: dict[str, Any]) -> ImageEncoder:
    """Build a registered encoder; `params` come from the config's `image_encoder` block."""
    if name not in ENCODERS:
        raise ValueError(f"image_encoder.name: unknown encoder {name!r} (known: {sorted(ENCODERS)})")
    enc = ENCODERS[name](dim=dim, **params)
    if enc.dim != dim:
        raise ValueError(f"image_encoder: encoder {name!r} produced dim {enc.dim}, config asks {dim}")
    return enc
