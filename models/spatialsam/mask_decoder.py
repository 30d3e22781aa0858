"""Mask decoder of the propagator: a two-way transformer (SAM's design, fewer layers) over prompt
tokens and the memory-conditioned image tokens, then upsampling with high-resolution skips to mask
logits at 1/4 of the input resolution, plus IoU-prediction, object-presence and object-pointer heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spatialsam.image_encoder import ImageFeatures, norm2d
from spatialsam.memory import MLP, Attention


@dataclass
class DecoderOutput:
    """low_res_logits [B, 1, H/4, W/4], iou [B, 1] (predicted IoU in [0, 1]),
    object_score [B, 1] (presence logit: > 0 means the object is on this slice),
    obj_ptr [B, D] (object pointer, replaced by the learned no-object pointer where absent)."""

    low_res_logits: torch.Tensor
    iou: torch.Tensor
    object_score: torch.Tensor
    obj_ptr: torch.Tensor


class TwoWayLayer(nn.Module):
    """Tokens attend to themselves and to the image; the image attends back to the tokens."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.t2i = Attention(dim, heads)
        self.i2t = Attention(dim, heads)
        self.mlp = MLP(dim, dim * mlp_ratio, dim)
        self.n1, self.n2, self.n3, self.n4 = (nn.LayerNorm(dim) for _ in range(4))

    def forward(
        self, q: torch.Tensor, q_pe: torch.Tensor, k: torch.Tensor, k_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.n1(q + self.self_attn(q + q_pe, q + q_pe, q))
        q = self.n2(q + self.t2i(q + q_pe, k + k_pe, k))
        q = self.n3(q + self.mlp(q))
        k = self.n4(k + self.i2t(k + k_pe, q + q_pe, q))
        return q, k


class MaskDecoder(nn.Module):
    """image [B, h*w, D] tokens (memory-conditioned + dense prompt), image_pe [h*w, D],
    sparse [B, N, D], feats (for skips and the h, w) -> DecoderOutput."""

    def __init__(self, dim: int, skip_dims: tuple[int, int], depth: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        c8, c4 = skip_dims
        self.obj_token = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.iou_token = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.layers = nn.ModuleList(TwoWayLayer(dim, heads, mlp_ratio) for _ in range(depth))
        self.final_attn = Attention(dim, heads)
        self.final_norm = nn.LayerNorm(dim)
        self.up1 = nn.ConvTranspose2d(dim, 32, 2, stride=2)
        self.skip8 = nn.Conv2d(c8, 32, 1)
        self.up_norm = norm2d(32)
        self.up2 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.skip4 = nn.Conv2d(c4, 16, 1)
        self.hyper = MLP(dim, dim, 16, 3)
        self.iou_head = MLP(dim, dim, 1, 3)
        self.obj_head = MLP(dim, dim, 1, 3)
        self.ptr_proj = MLP(dim, dim, dim, 3)
        self.no_obj_ptr = nn.Parameter(torch.randn(dim) * 0.02)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, feats: ImageFeatures
    ) -> DecoderOutput:
        b = sparse.shape[0]
        out_tokens = torch.cat([self.obj_token, self.iou_token, self.mask_token], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        q, k = tokens, image
        for layer in self.layers:
            q, k = layer(q, tokens, k, image_pe)
        q = self.final_norm(q + self.final_attn(q + tokens, k + image_pe, k))
        obj_t, iou_t, mask_t = q[:, 0], q[:, 1], q[:, 2]

        grid = k.transpose(1, 2).reshape(feats.feat.shape)
        up = nn.functional.gelu(self.up_norm(self.up1(grid) + self.skip8(feats.skip8)))
        up = nn.functional.gelu(self.up2(up) + self.skip4(feats.skip4))  # [B, 16, H/4, W/4]
        low = (self.hyper(mask_t).unsqueeze(1) @ up.flatten(2)).reshape(up[:, :1].shape)

        score = self.obj_head(obj_t)
        present = (score > 0).to(score.dtype)
        ptr = self.ptr_proj(mask_t) * present + self.no_obj_ptr * (1.0 - present)
        return DecoderOutput(low, torch.sigmoid(self.iou_head(iou_t)), score, ptr)
