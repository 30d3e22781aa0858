"""The SAM2-style promptable propagator over z (image encoder, prompt encoder, memory attention with
SDF or mask memory, mask decoder), its config as data, and `build_propagator(cfg)`.

The three public methods `encode_image`, `encode_memory` and `decode` are exactly the three ONNX
graphs of export_propagator.py; the reference predictor calls nothing else, so the TypeScript loop
reproduces it by calling the graphs in the same order with the same bank rules (memory.select_memory).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from spatialsam.image_encoder import ImageFeatures, build_image_encoder
from spatialsam.mask_decoder import DecoderOutput, MaskDecoder
from spatialsam.memory import MemoryAttention, MemoryBankTensors, MemoryEncoder
from spatialsam.prompt_encoder import PositionEmbeddingRandom, PromptEncoder

CONFIG_DIR = Path(__file__).parent / "configs"
NO_OBJ_LOGIT = -1024.0  # mask logit everywhere on a slice where the object is absent (as SAM2)


@dataclass
class PropagatorConfig:
    """Architecture and loop constants. Loaded from configs/propagator_<name>.yaml."""

    name: str = "compact"
    memory: str = "sdf"  # "sdf" (Spatial-SAM) or "mask" (SAM2's memory, for the ablation)
    dim: int = 64  # token dim D
    mem_dim: int = 32  # memory dim Dm (divides D: each object pointer becomes D/Dm memory tokens)
    image_encoder: dict[str, Any] = field(
        default_factory=lambda: {"name": "compact_conv", "params": {"widths": [16, 16, 32], "depth": 1}}
    )
    mem_layers: int = 2
    decoder_depth: int = 1
    heads: int = 4
    mlp_ratio: int = 4
    num_recent: int = 6  # non-prompted memory entries (SAM2: num_maskmem - 1)
    max_cond: int = 4  # prompted entries kept in attention (closest in z)
    max_ptrs: int = 8  # object pointers: prompted ones + max_ptrs - 1 recent
    mask_threshold: float = 0.0  # logits > threshold are the mask (also what memory encodes)
    norm_mean: float = 127.5  # image normalisation of raw uint8: (x - mean) / std
    norm_std: float = 64.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.memory not in ("sdf", "mask"):
            raise ValueError(f"memory: expected 'sdf' or 'mask', got {self.memory!r}")
        if self.dim % self.mem_dim or self.dim % self.heads:
            raise ValueError(f"dim {self.dim}: must be divisible by mem_dim {self.mem_dim} and heads {self.heads}")


def load_propagator_config(name_or_path: str | Path = "compact", **overrides: Any) -> PropagatorConfig:
    """A config by name (configs/propagator_<name>.yaml) or path, with keyword overrides."""
    p = Path(name_or_path)
    if not p.suffix:
        p = CONFIG_DIR / f"propagator_{name_or_path}.yaml"
    if not p.is_file():
        raise ValueError(f"config: no propagator config at {p}")
    data = yaml.safe_load(p.read_text()) or {}
    known = {f.name for f in dataclasses.fields(PropagatorConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"config {p}: unknown keys {sorted(unknown)}")
    data.update(overrides)
    return PropagatorConfig(**data)


class Propagator(nn.Module):
    """See module docstring. Images are normalised float32 [B, 1, H, W], H and W multiples of 16."""

    def __init__(self, cfg: PropagatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, dm = cfg.dim, cfg.mem_dim
        enc = cfg.image_encoder
        self.image_encoder = build_image_encoder(enc["name"], d, dict(enc.get("params", {})))
        self.pe = PositionEmbeddingRandom(d // 2)
        self.mem_pe = PositionEmbeddingRandom(dm // 2)
        self.prompt_encoder = PromptEncoder(d, self.pe)
        self.memory_encoder = MemoryEncoder(d, dm, cfg.memory)
        self.memory_attention = MemoryAttention(d, dm, cfg.mem_layers, cfg.heads, cfg.mlp_ratio)
        self.mask_decoder = MaskDecoder(d, self.image_encoder.skip_dims, cfg.decoder_depth, cfg.heads, cfg.mlp_ratio)
        if cfg.memory == "sdf":
            # The current slice's SDF, added to its tokens: memory says which blob, this says where it is now.
            self.sdf_embed = nn.Sequential(
                nn.Conv2d(1, 16, 4, stride=4), nn.GELU(), nn.Conv2d(16, d, 4, stride=4)
            )

    @property
    def stride(self) -> int:
        return self.image_encoder.stride

    def normalize(self, image_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (or float raw values) -> float32 (x - mean) / std, same shape."""
        return (image_u8.float() - self.cfg.norm_mean) / self.cfg.norm_std

    def encode_image(self, image: torch.Tensor) -> ImageFeatures:
        """image [B, 1, H, W] float32 normalised -> ImageFeatures (strides 16, 8, 4)."""
        return self.image_encoder(image)

    def encode_memory(self, feat: torch.Tensor, sdf: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """feat [B, D, h, w], sdf [B, 1, H, W], mask [B, 1, H, W] in [0, 1] -> [B, Dm, h, w]."""
        return self.memory_encoder(feat, sdf, mask)

    def decode(
        self,
        feats: ImageFeatures,
        sdf_slice: torch.Tensor | None,
        bank: MemoryBankTensors,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask: torch.Tensor,
    ) -> DecoderOutput:
        """One slice for B objects.

        feats (batch B), sdf_slice [B, 1, H, W] (sdf mode; ignored in mask mode), bank (see
        MemoryBankTensors), point_coords [B, N, 2] pixels (x, y), point_labels [B, N] float in
        {-1 pad, 0 neg, 1 pos, 2 box TL, 3 box BR}, mask_input [B, 1, H/4, W/4] logits, has_mask [B].
        """
        feat = feats.feat
        if self.cfg.memory == "sdf":
            if sdf_slice is None:
                raise ValueError("sdf_slice: required with memory 'sdf'")
            feat = feat + self.sdf_embed(torch.clamp(sdf_slice, -1.0, 1.0))
        tokens = feat.flatten(2).transpose(1, 2)
        pos = self.pe.dense(feat)
        cond = self.memory_attention(tokens, pos, bank, self.mem_pe.dense(feat))
        image = cond + self.prompt_encoder.embed_mask(mask_input, has_mask).flatten(2).transpose(1, 2)
        h4 = torch.ones_like(feats.skip4[0, 0, :, 0]).sum() * 4.0
        w4 = torch.ones_like(feats.skip4[0, 0, 0, :]).sum() * 4.0
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels, torch.stack([h4, w4]))
        return self.mask_decoder(image, pos, sparse, feats)

    @staticmethod
    def upsample(low_res_logits: torch.Tensor) -> torch.Tensor:
        """[B, 1, H/4, W/4] -> [B, 1, H, W] bilinear (align_corners=False, i.e. half-pixel centres)."""
        return nn.functional.interpolate(low_res_logits, scale_factor=4.0, mode="bilinear", align_corners=False)

    def mask_logits(self, out: DecoderOutput) -> torch.Tensor:
        """Full-resolution mask logits [B, 1, H, W]: upsampled, and NO_OBJ_LOGIT where absent."""
        full = self.upsample(out.low_res_logits)
        present = out.object_score.reshape(-1, 1, 1, 1) > 0
        return torch.where(present, full, torch.full_like(full, NO_OBJ_LOGIT))

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_propagator(cfg: PropagatorConfig | str | Path = "compact") -> Propagator:
    """A freshly initialised propagator, seeded by cfg.seed without touching the global RNG."""
    if not isinstance(cfg, PropagatorConfig):
        cfg = load_propagator_config(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return Propagator(cfg)
