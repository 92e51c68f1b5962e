"""`resampler`: Qwen-VL / CodeFuse-VLM cross-attention resampler, a fixed number of queries per image.

Owns the learned `query` grid, its fixed 2D sin-cos position embedding `pos_embed` (interpolated bicubically
to the key grid, like Qwen-VL's `get_abs_pos`), `kv_proj`, `ln_q`, `ln_kv`, the single `attn`
(torch MultiheadAttention), `ln_post` and the `proj` matrix (Qwen-VL's `attn_pool.*`, `ln_post`, `proj`),
plus `text_proj` to the LM width when the resampler's width differs from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import ConfigError
from .base import CONNECTORS, Connector, ConnectorContext, feature_grid


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, dim] embedding: sin of each frequency, then cos (MAE / Qwen-VL convention)."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)  # [dim/2]
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # [M, dim/2]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # [M, dim]


def sincos_2d(dim: int, side: int) -> torch.Tensor:
    """Fixed [side*side, dim] embedding of a square grid, row-major; first half encodes the column."""
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")  # [S, S] each
    emb_col = sincos_1d(dim // 2, cols.reshape(-1))  # [S*S, dim/2]
    emb_row = sincos_1d(dim // 2, rows.reshape(-1))  # [S*S, dim/2]
    return torch.cat([emb_col, emb_row], dim=1).float()  # [S*S, dim]


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a square-grid embedding [Q, D] to `grid`, returning [rows*cols, D]."""
    side = math.isqrt(pos.shape[0])
    if (side, side) == tuple(grid):
        return pos
    x = pos.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)  # [1, D, S, S]
    x = F.interpolate(x, size=grid, mode="bicubic", align_corners=False)  # [1, D, rows, cols]
    return x.permute(0, 2, 3, 1).flatten(0, 2).to(pos.dtype)  # [rows*cols, D]


@CONNECTORS.register("resampler")
class ResamplerConnector(Connector):
    """`num_queries` learned queries cross-attend once to the (projected) patches, then LayerNorm and `proj`."""

    @dataclass
    class Options:
        num_queries: int = 256
        """Must be a square number (the queries form a grid, 16x16 in Qwen-VL)."""
        hidden_size: int | None = None
        """Width of the resampler; defaults to the LM hidden size (Qwen-VL's `output_dim`)."""
        num_heads: int | None = None
        """Attention heads; defaults to hidden_size // 128 (at least 1)."""

        def validate(self, path: str = "connector") -> None:
            side = math.isqrt(max(self.num_queries, 0))
            if self.num_queries < 1 or side * side != self.num_queries:
                raise ConfigError(f"{path}.num_queries must be a square number (e.g. 256), got {self.num_queries}")
            if self.hidden_size is not None and (self.hidden_size < 4 or self.hidden_size % 4):
                raise ConfigError(f"{path}.hidden_size must be a positive multiple of 4, got {self.hidden_size}")
            if self.num_heads is not None and self.num_heads < 1:
                raise ConfigError(f"{path}.num_heads must be >= 1, got {self.num_heads}")

    def __init__(self, options: Options, ctx: ConnectorContext) -> None:
        super().__init__(options, ctx)
        self.grid = self.require_grid()
        dim = options.hidden_size or ctx.text_dim
        heads = options.num_heads or max(1, dim // 128)
        _check_width(dim, heads)
        side = math.isqrt(options.num_queries)
        self.query = nn.Parameter(torch.empty(options.num_queries, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.register_buffer("pos_embed", sincos_2d(dim, side))  # [Q, D], fixed
        self.kv_proj = nn.Linear(ctx.vision_dim, dim, bias=False) if ctx.vision_dim != dim else nn.Identity()
        self.ln_q = nn.LayerNorm(dim, eps=1e-6)
        self.ln_kv = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_post = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Parameter(dim**-0.5 * torch.randn(dim, dim))
        self.text_proj = nn.Linear(dim, ctx.text_dim) if dim != ctx.text_dim else None

    def num_output_tokens(self, num_patches: int) -> int:
        return self.options.num_queries

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, num, _ = features.shape
        key_pos = resize_pos_embed(self.pos_embed, feature_grid(num, self.grid, "resampler"))  # [N, D]
        kv = self.ln_kv(self.kv_proj(features))  # [B, N, D]
        q = self.ln_q(self.query) + self.pos_embed  # [Q, D]
        q = q.unsqueeze(0).expand(batch, -1, -1)  # [B, Q, D]
        out = self.attn(q, kv + key_pos.to(kv.dtype), kv, need_weights=False)[0]  # [B, Q, D]
        out = self.ln_post(out) @ self.proj  # [B, Q, D]
        return self.text_proj(out) if self.text_proj is not None else out  # [B, Q, Dt]


def _check_width(dim: int, heads: int) -> None:
    if dim % 4:
        raise ConfigError(f"connector 'resampler': width {dim} must be a multiple of 4 (2D sin-cos embedding)")
    if dim % heads:
        raise ConfigError(f"connector 'resampler': width {dim} is not divisible by num_heads={heads}")
