"""SAM-style prompt encoder: points (positive/negative/box corners/padding) and a dense mask prompt.

Point coordinates are pixels (x, y) of the input slice, x along the last axis; a box is passed as two
corner points with labels 2 (top-left) and 3 (bottom-right), exactly as SAM's ONNX decoder takes it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spatialsam.image_encoder import norm2d

# Point label values (float in the ONNX graph, as in SAM's exported decoder).
LABEL_PAD = -1
LABEL_NEG = 0
LABEL_POS = 1
LABEL_BOX_TL = 2
LABEL_BOX_BR = 3


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) in [0, 1]: [..., 2] -> [..., 2 * n_freq].

    The Gaussian matrix is a fixed buffer (seeded at build time), so it travels in checkpoints and ONNX.
    """

    def __init__(self, n_freq: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("gaussian", scale * torch.randn(2, n_freq))

    def encode(self, coords01: torch.Tensor) -> torch.Tensor:
        c = (2.0 * coords01 - 1.0) @ self.gaussian * (2.0 * math.pi)
        return torch.cat([torch.sin(c), torch.cos(c)], dim=-1)

    def dense(self, like: torch.Tensor) -> torch.Tensor:
        """Grid encoding for the h x w map `like` [B, C, h, w], as tokens [h*w, 2*n_freq] (row-major).

        Built from `like`'s shape with tensor ops only, so ONNX export keeps h and w dynamic.
        """
        one_h = torch.ones_like(like[0, 0, :, :1])  # [h, 1]
        one_w = torch.ones_like(like[0, 0, :1, :])  # [1, w]
        ys = (torch.cumsum(one_h, dim=0) - 0.5) / one_h.sum()
        xs = (torch.cumsum(one_w, dim=1) - 0.5) / one_w.sum()
        grid = torch.stack([xs.expand_as(like[0, 0]), ys.expand_as(like[0, 0])], dim=-1)  # [h, w, 2]
        return self.encode(grid).flatten(0, 1)


class PromptEncoder(nn.Module):
    """Sparse (points) and dense (mask) prompt embeddings.

    points: coords [B, N, 2] float32 pixels (x, y); labels [B, N] float32 in {-1, 0, 1, 2, 3}
        -> sparse [B, N, D]
    mask:   mask_input [B, 1, H/4, W/4] float32 logits; has_mask [B] float32 0/1
        -> dense [B, D, H/16, W/16] (the learned no-mask embedding where has_mask is 0)
    """

    def __init__(self, dim: int, pe: PositionEmbeddingRandom) -> None:
        super().__init__()
        self.dim = dim
        self.pe = pe
        self.point_embed = nn.Parameter(torch.randn(4, dim) * 0.02)  # neg, pos, box TL, box BR
        self.not_a_point = nn.Parameter(torch.randn(dim) * 0.02)
        self.no_mask = nn.Parameter(torch.randn(dim) * 0.02)
        self.mask_down = nn.Sequential(
            nn.Conv2d(1, 4, 2, stride=2), norm2d(4), nn.GELU(),
            nn.Conv2d(4, 16, 2, stride=2), norm2d(16), nn.GELU(),
            nn.Conv2d(16, dim, 1),
        )

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor, image_hw: torch.Tensor) -> torch.Tensor:
        """coords [B, N, 2] pixels, labels [B, N], image_hw [2] float (H, W) -> [B, N, D]."""
        wh = torch.stack([image_hw[1], image_hw[0]])
        pe = self.pe.encode((coords + 0.5) / wh)
        lab = labels.unsqueeze(-1)
        is_pad = (lab == LABEL_PAD).to(pe.dtype)
        out = pe * (1.0 - is_pad) + self.not_a_point * is_pad
        for k in range(4):
            out = out + self.point_embed[k] * (lab == k).to(pe.dtype)
        return out

    def embed_mask(self, mask_input: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
        """mask_input [B, 1, H/4, W/4] logits, has_mask [B] -> [B, D, H/16, W/16]."""
        m = has_mask.reshape(-1, 1, 1, 1)
        return self.mask_down(mask_input) * m + self.no_mask.reshape(1, -1, 1, 1) * (1.0 - m)
