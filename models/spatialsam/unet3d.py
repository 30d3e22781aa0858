"""3D U-Net that predicts a normalised SDF (tanh) and a foreground logit; also the generic
N-d U-Net that the 2D baseline (unet2d.py) reuses.

Same padding everywhere, so output shape == input shape when every spatial size is a multiple of
the total pooling factor (``UNetConfig.size_multiple()``). Because zero padding changes results
near block borders, blockwise inference must read each block with a halo of
``context_zyx(cfg)`` voxels on every side and keep only the centre (see ``receptive_field``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    """Architecture as data.

    channels: feature width per level, e.g. (8, 16, 32, 64) = 4 levels, 3 poolings.
    pool: per-pooling factor (z, y, x) or (y, x) for 2D; len == len(channels) - 1. Use (1, 2, 2)
        on the first levels for thick sections (anisotropic voxels).
    norm: "batch" (BatchNorm, fixed statistics at inference, so blockwise results are seamless)
        or "none". Instance/group norm are deliberately not offered: their statistics depend on
        the block and break seamless blockwise inference.
    stem: () or a factor per axis, e.g. (2, 2, 2): the U-Net runs on the image average-pooled by
        this factor and its two output maps (before tanh) are upsampled back by (tri)linear
        interpolation, so input and output stay at the volume's resolution. On 5 nm FIB-SEM this
        costs 1/8 of the compute for mitochondria that are still 20-50 voxels wide at 10 nm
        (Lucchi++ test: downsampling the true mask by 2 and upsampling it back keeps fg-IoU 0.97).
    stem_mode: how the stem reduces the image. "average": average pooling (no weights). "learned":
        a patch embedding: a conv with kernel = stride = stem and ``stem_channels`` filters (then the
        norm and ReLU), so texture inside each stem cell (membranes, cristae, myelin lamellae at 5 nm)
        reaches the net as features instead of being averaged away, at the cost of one layer on the
        coarse grid (a full-resolution conv before it doubled the step time on Lucchi++ crops).
        The outputs are upsampled the same way in both modes.
    """

    spatial_dims: int = 3
    in_channels: int = 1
    channels: tuple[int, ...] = (8, 16, 32, 64)
    pool: tuple[tuple[int, ...], ...] = ((1, 2, 2), (2, 2, 2), (2, 2, 2))
    convs_per_block: int = 2
    kernel_size: int = 3
    norm: str = "batch"
    stem: tuple[int, ...] = ()
    stem_mode: str = "average"
    stem_channels: int = 8

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.pool = tuple(tuple(int(p) for p in f) for f in self.pool)
        self.stem = tuple(int(f) for f in self.stem)
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims: must be 2 or 3, got {self.spatial_dims}")
        if len(self.channels) < 1 or min(self.channels) < 1:
            raise ValueError(f"channels: need >= 1 positive widths, got {self.channels}")
        if len(self.pool) != len(self.channels) - 1:
            raise ValueError(f"pool: need {len(self.channels) - 1} factors (one per level transition), got {len(self.pool)}")
        if any(len(p) != self.spatial_dims or min(p) < 1 for p in self.pool):
            raise ValueError(f"pool: each factor needs {self.spatial_dims} positive ints, got {self.pool}")
        if self.stem and (len(self.stem) != self.spatial_dims or min(self.stem) < 1):
            raise ValueError(f"stem: need () or {self.spatial_dims} positive ints, got {self.stem}")
        if self.stem_mode not in ("average", "learned"):
            raise ValueError(f"stem_mode: must be 'average' or 'learned', got {self.stem_mode!r}")
        if self.stem_mode == "learned" and (not self.stem or max(self.stem) < 2):
            raise ValueError(f"stem_mode: 'learned' needs a stem factor > 1, got stem {self.stem}")
        self.stem_channels = int(self.stem_channels)
        if self.stem_channels < 1:
            raise ValueError(f"stem_channels: must be >= 1, got {self.stem_channels}")
        if self.norm not in ("batch", "none"):
            raise ValueError(f"norm: must be 'batch' or 'none', got {self.norm!r}")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size: must be odd for same padding, got {self.kernel_size}")

    def size_multiple(self) -> tuple[int, ...]:
        """Every input spatial size must be a multiple of this (product of the pool factors per axis)."""
        m = list(self.stem) if self.stem else [1] * self.spatial_dims
        for f in self.pool:
            m = [a * b for a, b in zip(m, f)]
        return tuple(m)

    def to_dict(self) -> dict:
        return asdict(self)


def receptive_field(cfg: UNetConfig) -> tuple[int, ...]:
    """Receptive field of one output voxel, in voxels per axis, computed from the layers:
    each conv adds (k-1) * scale, each pooling and upsampling step is exact (kernel == stride).
    With a stem of factor s, an output voxel interpolates two neighbouring coarse voxels per axis;
    their fields together span at most rf_coarse + m coarse voxels (m = the coarse net's pooling
    product: neighbours on either side of a pooling cell see windows shifted by up to m), each of
    s input voxels: s * (rf_coarse + m). A learned stem (kernel == stride) covers the same cells as
    the pooling it replaces."""
    rf = [1] * cfg.spatial_dims
    scale = [1] * cfg.spatial_dims
    k = cfg.kernel_size
    # Encoder convs at each level, pooling between levels.
    for level in range(len(cfg.channels)):
        for _ in range(cfg.convs_per_block):
            rf = [r + (k - 1) * s for r, s in zip(rf, scale)]
        if level < len(cfg.pool):
            f = cfg.pool[level]
            rf = [r + (p - 1) * s for r, s, p in zip(rf, scale, f)]
            scale = [s * p for s, p in zip(scale, f)]
    # Decoder convs, from the coarsest level back to full resolution.
    for level in reversed(range(len(cfg.pool))):
        scale = [s // p for s, p in zip(scale, cfg.pool[level])]
        for _ in range(cfg.convs_per_block):
            rf = [r + (k - 1) * s for r, s in zip(rf, scale)]
    if cfg.stem:
        inner = [1] * cfg.spatial_dims
        for f in cfg.pool:
            inner = [a * b for a, b in zip(inner, f)]
        rf = [s * (r + m) if s > 1 else r for r, s, m in zip(rf, cfg.stem, inner)]
    return tuple(rf)


def round_up(sizes: Sequence[int], mult: Sequence[int]) -> tuple[int, ...]:
    """Each size rounded up to a multiple of its axis' ``mult`` (the network's size multiple)."""
    return tuple(-(-s // m) * m for s, m in zip(sizes, mult))


def context_zyx(cfg: UNetConfig) -> tuple[int, ...]:
    """Halo per axis the server must read around each block: half the receptive field, rounded up
    to a multiple of the pooling factor so that read boxes stay valid input sizes."""
    mult = cfg.size_multiple()
    return round_up([r // 2 for r in receptive_field(cfg)], mult)


class _Block(nn.Sequential):
    def __init__(self, cfg: UNetConfig, cin: int, cout: int):
        conv = nn.Conv3d if cfg.spatial_dims == 3 else nn.Conv2d
        bn = nn.BatchNorm3d if cfg.spatial_dims == 3 else nn.BatchNorm2d
        layers: list[nn.Module] = []
        for i in range(cfg.convs_per_block):
            layers.append(conv(cin if i == 0 else cout, cout, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=cfg.norm == "none"))
            if cfg.norm == "batch":
                layers.append(bn(cout))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net with two heads. forward(image [B, C_in, Z, Y, X] float32 (or [B, C_in, Y, X] in 2D),
    normalised as the manifest says) -> (sdf [B, 1, ...] float32 in (-1, 1), fg_logit [B, 1, ...])."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        pool = nn.MaxPool3d if cfg.spatial_dims == 3 else nn.MaxPool2d
        up = nn.ConvTranspose3d if cfg.spatial_dims == 3 else nn.ConvTranspose2d
        conv = nn.Conv3d if cfg.spatial_dims == 3 else nn.Conv2d
        ch = cfg.channels
        first_in = cfg.in_channels
        self.stem_net: nn.Module | None = None
        if cfg.stem_mode == "learned":
            bn = nn.BatchNorm3d if cfg.spatial_dims == 3 else nn.BatchNorm2d
            sc = cfg.stem_channels
            embed = conv(cfg.in_channels, sc, cfg.stem, stride=cfg.stem, bias=cfg.norm == "none")
            norm = [bn(sc)] if cfg.norm == "batch" else []
            self.stem_net = nn.Sequential(embed, *norm, nn.ReLU(inplace=True))
            first_in = sc
        self.down = nn.ModuleList([_Block(cfg, first_in if i == 0 else ch[i - 1], ch[i]) for i in range(len(ch))])
        self.pools = nn.ModuleList([pool(f, f) for f in cfg.pool])
        self.ups = nn.ModuleList([up(ch[i + 1], ch[i], f, f) for i, f in enumerate(cfg.pool)])
        self.up_blocks = nn.ModuleList([_Block(cfg, 2 * ch[i], ch[i]) for i in range(len(cfg.pool))])
        self.head = conv(ch[0], 2, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.Conv2d, nn.ConvTranspose3d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stem = self.cfg.stem if self.cfg.stem and max(self.cfg.stem) > 1 else None
        if self.stem_net is not None:
            x = self.stem_net(x)
        elif stem is not None:
            pool = F.avg_pool3d if self.cfg.spatial_dims == 3 else F.avg_pool2d
            x = pool(x, stem, stem)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.pools):
                skips.append(x)
                x = self.pools[i](x)
        for i in reversed(range(len(self.ups))):
            x = self.ups[i](x)
            x = self.up_blocks[i](torch.cat([skips[i], x], 1))
        out = self.head(x)
        if stem is not None:
            mode = "trilinear" if self.cfg.spatial_dims == 3 else "bilinear"
            out = F.interpolate(out, scale_factor=tuple(float(f) for f in stem), mode=mode, align_corners=False)
        return torch.tanh(out[:, :1]), out[:, 1:2]


def build_unet3d(cfg: UNetConfig | dict | None = None) -> UNet:
    """Make a 3D U-Net from a config (dataclass, dict as loaded from YAML, or None for defaults)."""
    c = cfg if isinstance(cfg, UNetConfig) else UNetConfig(**(cfg or {}))
    if c.spatial_dims != 3:
        raise ValueError(f"spatial_dims: build_unet3d needs 3, got {c.spatial_dims}")
    return UNet(c)


def check_input_shape(cfg: UNetConfig, spatial: Sequence[int]) -> None:
    """Raise ValueError unless every spatial size is a positive multiple of the pooling factor."""
    mult = cfg.size_multiple()
    if len(spatial) != len(mult) or any(s < 1 or s % m for s, m in zip(spatial, mult)):
        raise ValueError(f"image: spatial shape {tuple(spatial)} must be positive multiples of {mult}")


@torch.no_grad()
def predict_volume(
    model: UNet,
    image: torch.Tensor,
    block_zyx: Sequence[int] = (64, 256, 256),
    halo_zyx: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise inference over a whole volume, seamless: each block is read with the halo of
    ``context_zyx(cfg)`` (zero padding outside the volume, like the server) and only its centre kept.

    image: float32 [Z, Y, X], already normalised. Returns (sdf, fg_logit), each float32 [Z, Y, X].
    ``halo_zyx`` overrides the halo (multiples of the pooling factor): a smaller one is cheaper and
    nearly identical, but no longer independent of the block size. Training-time validation and
    the benchmark use (16, 32, 32) to save CPU; the server uses its manifest's ``context_zyx``.
    """
    cfg = model.cfg
    if image.ndim != 3:
        raise ValueError(f"image: expected [Z, Y, X], got shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError("image: contains NaN or infinite values")
    model.eval()
    ctx = tuple(halo_zyx) if halo_zyx is not None else context_zyx(cfg)
    mult = cfg.size_multiple()
    if len(ctx) != 3 or any(c < 0 or c % m for c, m in zip(ctx, mult)):
        raise ValueError(f"halo_zyx: {ctx} must be 3 non-negative multiples of {mult}")
    shape = image.shape
    block = round_up([min(b, s) for b, s in zip(block_zyx, round_up(shape, mult))], mult)
    # Results where the image is (the CPU, for a volume read from disk); blocks where the model is.
    dev = next(model.parameters()).device
    sdf = torch.empty(shape, dtype=torch.float32, device=image.device)
    fg = torch.empty(shape, dtype=torch.float32, device=image.device)
    size = [b + 2 * c for b, c in zip(block, ctx)]
    for src, dst, w, c in block_boxes(shape, block, ctx):
        buf = torch.zeros([1, 1, *size], dtype=torch.float32, device=dev)
        buf[(0, 0, *dst)] = image[src]
        s_out, f_out = model(buf)
        sdf[w] = s_out[(0, 0, *c)]
        fg[w] = f_out[(0, 0, *c)]
    return sdf, fg


def block_boxes(shape: Sequence[int], block: Sequence[int], ctx: Sequence[int]):
    """The blocks of a grid anchored at the origin over a volume of ``shape``, each read as
    block + 2 * ctx (one input shape throughout, as the server's BlockGrid): per block, the slices
    (volume part it reads, where that part goes in the zero-filled input, volume part it writes,
    where that part is in the output)."""
    size = [b + 2 * c for b, c in zip(block, ctx)]
    for z0 in range(0, shape[0], block[0]):
        for y0 in range(0, shape[1], block[1]):
            for x0 in range(0, shape[2], block[2]):
                start = (z0, y0, x0)
                read0 = [s - c for s, c in zip(start, ctx)]
                src = tuple(slice(max(r, 0), min(r + n, d)) for r, n, d in zip(read0, size, shape))
                dst = tuple(slice(s.start - r, s.stop - r) for s, r in zip(src, read0))
                w = tuple(slice(st, min(st + b, d)) for st, b, d in zip(start, block, shape))
                c = tuple(slice(cc, cc + (ww.stop - ww.start)) for cc, ww in zip(ctx, w))
                yield src, dst, w, c
