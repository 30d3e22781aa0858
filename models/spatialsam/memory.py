"""Memory of the propagator: memory encoder (SDF or SAM2 mask memory), z-position encoding, memory
attention, and the memory-bank selection rules the predictor (and the TypeScript loop) follow.

SDF memory vs SAM2 mask memory (the `memory` switch of the config):
- `mask` (SAM2): an entry for slice z' encodes the model's own past mask of the object at z'
  (binarised, 1 channel) fused with the image features of z'. Errors in a past mask are written into
  memory and propagate.
- `sdf` (Spatial-SAM): an entry for slice z' encodes the 3D U-Net's SDF slice at z' (normalised,
  positive inside any mitochondrion) in three channels [sdf, mask, sdf * mask], fused with the image
  features of z'. The SDF carries the shape and boundary of every mitochondrion, computed in 3D and so
  consistent across z and independent of the propagator's own errors; the object's mask only says
  WHICH SDF blob this object is (`sdf * mask` is the object's own distance profile). Training corrupts
  the mask channel (dilation/erosion/holes) so the boundary has to come from the SDF. In `sdf` mode the
  decoder also sees the SDF of the current slice (`sdf_slice`), so memory says which blob, the current
  SDF says where that blob's boundary is now.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from spatialsam.image_encoder import ConvBlock, norm2d

MASKED = -1.0e4  # attention-logit bias of an invalid (padding) key; exp() underflows to exactly 0


class MLP(nn.Module):
    """Linear layers with GELU between them: [..., d_in] -> [..., d_out]."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, n_layers: int = 2) -> None:
        super().__init__()
        dims = [d_in] + [d_hidden] * (n_layers - 1) + [d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = nn.functional.gelu(x)
        return x


class Attention(nn.Module):
    """Multi-head attention written with matmul/softmax only (plain ONNX ops, no fused kernels).

    q [B, Nq, D], k [B, Nk, Dk], v [B, Nk, Dk], bias [B, Nk] (0 or MASKED) or None -> [B, Nq, D]
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        kv_dim = kv_dim or dim
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kv_dim, dim)
        self.v = nn.Linear(kv_dim, dim)
        self.o = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        qh, kh, vh = self._split(self.q(q)), self._split(self.k(k)), self._split(self.v(v))
        logits = qh @ kh.transpose(-1, -2) * self.scale
        if bias is not None:
            logits = logits + bias[:, None, None, :]
        out = torch.softmax(logits, dim=-1) @ vh
        return self.o(out.transpose(1, 2).flatten(2))


class ZEncoding(nn.Module):
    """Signed relative z offset (memory slice minus current slice, in slices) -> [..., dim].

    Sinusoids of the offset (periods up to `max_period` slices) through a learned linear layer; the sign
    tells the model on which side of the current slice the memory lies.
    """

    def __init__(self, dim: int, max_period: float = 128.0) -> None:
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half))
        self.proj = nn.Linear(2 * half, dim)

    def forward(self, dz: torch.Tensor) -> torch.Tensor:
        a = dz.unsqueeze(-1) * self.freqs
        return self.proj(torch.cat([torch.sin(a), torch.cos(a)], dim=-1))


class MemoryEncoder(nn.Module):
    """One memory entry from one slice.

    feat [B, D, h, w] (image features of slice z'), sdf [B, 1, H, W] float32 (normalised SDF of z'),
    mask [B, 1, H, W] float32 in [0, 1] (the object's mask at z') -> memory [B, Dm, h, w].
    In `mask` mode the SDF is ignored (SAM2's memory).
    """

    def __init__(self, dim: int, mem_dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("sdf", "mask"):
            raise ValueError(f"memory: expected 'sdf' or 'mask', got {mode!r}")
        self.mode = mode
        cin = 3 if mode == "sdf" else 1
        self.down = nn.Sequential(
            nn.Conv2d(cin, 16, 4, stride=4), norm2d(16), nn.GELU(), nn.Conv2d(16, dim, 4, stride=4)
        )
        self.feat_proj = nn.Conv2d(dim, dim, 1)
        self.fuser = nn.Sequential(ConvBlock(dim), ConvBlock(dim))
        self.out = nn.Conv2d(dim, mem_dim, 1)

    def forward(self, feat: torch.Tensor, sdf: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.mode == "sdf":
            s = torch.clamp(sdf, -1.0, 1.0)
            x = torch.cat([s, mask, s * mask], dim=1)
        else:
            x = mask
        return self.out(self.fuser(self.feat_proj(feat) + self.down(x)))


@dataclass
class MemoryBankTensors:
    """A packed memory bank for B objects (padding entries have valid = 0).

    mem     [B, N, Dm, h, w] float32  memory entries
    mem_dz  [B, N] float32            z of the entry minus the current z (slices)
    mem_cond[B, N] float32            1 for entries from prompted slices
    mem_valid[B, N] float32           1 real entry, 0 padding
    ptrs    [B, P, D] float32         object pointers
    ptr_dz  [B, P] float32            z of the pointer's slice minus the current z
    ptr_valid[B, P] float32           1 real pointer, 0 padding
    """

    mem: torch.Tensor
    mem_dz: torch.Tensor
    mem_cond: torch.Tensor
    mem_valid: torch.Tensor
    ptrs: torch.Tensor
    ptr_dz: torch.Tensor
    ptr_valid: torch.Tensor


class MemoryAttentionLayer(nn.Module):
    """Pre-norm: self-attention on current tokens, cross-attention to memory keys, MLP."""

    def __init__(self, dim: int, mem_dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.n1, self.n2, self.n3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.cross_attn = Attention(dim, heads, kv_dim=mem_dim)
        self.mlp = MLP(dim, dim * mlp_ratio, dim)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor, key_pos: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        h = self.n1(x)
        x = x + self.self_attn(h + pos, h + pos, h)
        h = self.n2(x)
        x = x + self.cross_attn(h + pos, keys + key_pos, keys, bias)
        return x + self.mlp(self.n3(x))


class MemoryAttention(nn.Module):
    """Conditions the current slice's tokens on the object's memory bank.

    cur [B, h*w, D] tokens, cur_pos [h*w, D], bank (MemoryBankTensors), mem_pos [h*w, Dm]
    -> [B, h*w, D]. Keys are all spatial memory tokens (+ spatial PE + z encoding + prompted-slice
    embedding), the object pointers split into D/Dm tokens each (+ z encoding), and one learned sink
    token that is always valid, so an empty bank (first prompted slice) is just a bank of padding.
    """

    def __init__(self, dim: int, mem_dim: int, layers: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        if dim % mem_dim:
            raise ValueError(f"mem_dim {mem_dim} must divide dim {dim}")
        self.mem_dim = mem_dim
        self.layers = nn.ModuleList(MemoryAttentionLayer(dim, mem_dim, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.z_enc = ZEncoding(mem_dim)
        self.cond_embed = nn.Parameter(torch.randn(mem_dim) * 0.02)
        self.sink = nn.Parameter(torch.randn(mem_dim) * 0.02)

    def keys(self, bank: MemoryBankTensors, mem_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> keys [B, Nk, Dm], key positions [B, Nk, Dm], attention bias [B, Nk]."""
        m = bank.mem.flatten(3).transpose(2, 3)  # [B, N, hw, Dm]
        zpos = self.z_enc(bank.mem_dz).unsqueeze(2) + self.cond_embed * bank.mem_cond[..., None, None]
        m_pos = (mem_pos + zpos).flatten(1, 2)
        m_bias = ((1.0 - bank.mem_valid) * MASKED).unsqueeze(2) + torch.zeros_like(m[..., 0])
        m = m.flatten(1, 2)
        p = torch.stack(bank.ptrs.split(self.mem_dim, dim=-1), dim=2)  # [B, P, D/Dm, Dm], no baked sizes
        p_pos = (self.z_enc(bank.ptr_dz).unsqueeze(2) + torch.zeros_like(p)).flatten(1, 2)
        p_bias = ((1.0 - bank.ptr_valid) * MASKED).unsqueeze(2) + torch.zeros_like(p[..., 0])
        p = p.flatten(1, 2)
        sink = self.sink + torch.zeros_like(m[:, :1])
        keys = torch.cat([sink, m, p], dim=1)
        pos = torch.cat([torch.zeros_like(sink), m_pos, p_pos], dim=1)
        bias = torch.cat([torch.zeros_like(sink[..., 0]), m_bias.flatten(1), p_bias.flatten(1)], dim=1)
        return keys, pos, bias

    def forward(
        self, cur: torch.Tensor, cur_pos: torch.Tensor, bank: MemoryBankTensors, mem_pos: torch.Tensor
    ) -> torch.Tensor:
        keys, key_pos, bias = self.keys(bank, mem_pos)
        x = cur
        for layer in self.layers:
            x = layer(x, cur_pos, keys, key_pos, bias)
        return self.norm(x)


@dataclass
class MemoryEntry:
    """One slice's contribution to an object's bank (tensors without batch axis).

    tokens [Dm, h, w] float32 (memory encoder output), obj_ptr [D] float32 (decoder output).
    """

    z: int
    is_cond: bool
    tokens: torch.Tensor
    obj_ptr: torch.Tensor


def select_memory(
    cond: dict[int, MemoryEntry],
    noncond: dict[int, MemoryEntry],
    z: int,
    direction: int,
    num_recent: int,
    max_cond: int,
    max_ptrs: int,
) -> tuple[list[MemoryEntry], list[MemoryEntry]]:
    """SAM2's bank rules over z -> (spatial entries, pointer entries), both ordered as listed here.

    Spatial: the prompted (cond) slices other than z, the `max_cond` closest in |z' - z| (ties: lower z
    first), always kept however far; then non-prompted entries at z - direction * i for
    i = 1..num_recent that exist (the last `num_recent` slices of this propagation run: a FIFO along
    the direction of travel). Pointers: the same cond slices, then non-prompted slices at
    z - direction * i for i = 1..max_ptrs - 1 that exist.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction: expected +1 or -1, got {direction}")
    conds = sorted((e for zz, e in cond.items() if zz != z), key=lambda e: (abs(e.z - z), e.z))[:max_cond]
    recent = [noncond[z - direction * i] for i in range(1, num_recent + 1) if z - direction * i in noncond]
    ptr_recent = [noncond[z - direction * i] for i in range(1, max_ptrs) if z - direction * i in noncond]
    return conds + recent, conds + ptr_recent


def pack_banks(
    banks: list[tuple[list[MemoryEntry], list[MemoryEntry]]],
    z: int | Sequence[int],
    mem_shape: tuple[int, int, int],
    ptr_dim: int,
) -> MemoryBankTensors:
    """Stack per-object banks into padded tensors (at least one slot each, so no axis is ever empty).

    z: the slice being decoded, for all objects or one per bank (offsets are entry z - z).
    mem_shape is (Dm, h, w). Padding slots are zeros with valid = 0.
    """
    n = max(1, *(len(s) for s, _ in banks))
    p = max(1, *(len(q) for _, q in banks))
    b = len(banks)
    zs = [int(z)] * b if isinstance(z, (int, np.integer)) else [int(v) for v in z]
    if len(zs) != b:
        raise ValueError(f"z: expected one slice per bank ({b}), got {len(zs)}")
    mem = torch.zeros(b, n, *mem_shape)
    mem_dz, mem_cond, mem_valid = torch.zeros(b, n), torch.zeros(b, n), torch.zeros(b, n)
    ptrs, ptr_dz, ptr_valid = torch.zeros(b, p, ptr_dim), torch.zeros(b, p), torch.zeros(b, p)
    for i, (spatial, pointers) in enumerate(banks):
        for j, e in enumerate(spatial):
            mem[i, j] = e.tokens
            mem_dz[i, j] = e.z - zs[i]
            mem_cond[i, j] = float(e.is_cond)
            mem_valid[i, j] = 1.0
        for j, e in enumerate(pointers):
            ptrs[i, j] = e.obj_ptr
            ptr_dz[i, j] = e.z - zs[i]
            ptr_valid[i, j] = 1.0
    return MemoryBankTensors(mem, mem_dz, mem_cond, mem_valid, ptrs, ptr_dz, ptr_valid)
