"""`pixel_shuffle`: space-to-depth token merging over the patch grid, then a projection into the LM.

Owns the merge (each `factor` x `factor` block of patches becomes one token whose features are the block's
features concatenated, N -> N / factor^2) and the projection `linear_1` [, GELU, `linear_2`, ...]. Also owns
`feature_grid`, the small helper other grid-based connectors use to find the grid of a feature batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...errors import ConfigError
from .base import CONNECTORS, Connector, ConnectorContext, check_divisible, feature_grid


def space_to_depth(features: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """[B, H*W, D] -> [B, (H/f)*(W/f), f*f*D]; each block's features ordered (row offset, col offset, D)."""
    batch, _, dim = features.shape
    rows, cols = grid
    x = features.reshape(batch, rows // factor, factor, cols // factor, factor, dim)  # [B, H/f, f, W/f, f, D]
    x = x.permute(0, 1, 3, 2, 4, 5)  # [B, H/f, W/f, f, f, D]
    return x.reshape(batch, (rows // factor) * (cols // factor), factor * factor * dim)  # [B, N/f^2, f^2*D]


@CONNECTORS.register("pixel_shuffle")
class PixelShuffleConnector(Connector):
    """Merge `factor` x `factor` patch blocks into one token, then Linear (or a GELU MLP) to the LM width."""

    @dataclass
    class Options:
        factor: int = 2
        num_layers: int = 1
        """1: one Linear; >1: that many Linears with GELU between them."""
        norm: bool = False
        """LayerNorm over each merged token before the projection (InternVL's `mlp1`: LayerNorm, Linear, GELU,
        Linear); it keeps the LM's inputs at a sane scale whatever the tower's feature magnitudes."""

        def validate(self, path: str = "connector") -> None:
            if self.factor < 1:
                raise ConfigError(f"{path}.factor must be >= 1, got {self.factor}")
            if self.num_layers < 1:
                raise ConfigError(f"{path}.num_layers must be >= 1, got {self.num_layers}")

    def __init__(self, options: Options, ctx: ConnectorContext) -> None:
        super().__init__(options, ctx)
        self.grid = self.require_grid()
        check_divisible(self.grid, options.factor, "pixel_shuffle")
        dims = [ctx.vision_dim * options.factor**2] + [ctx.text_dim] * options.num_layers
        self.norm = nn.LayerNorm(dims[0]) if options.norm else None
        for i in range(options.num_layers):
            self.add_module(f"linear_{i + 1}", nn.Linear(dims[i], dims[i + 1]))
        self.act = nn.GELU()

    def num_output_tokens(self, num_patches: int) -> int:
        grid = feature_grid(num_patches, self.grid, "pixel_shuffle")
        check_divisible(grid, self.options.factor, "pixel_shuffle")
        return num_patches // self.options.factor**2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        grid = feature_grid(features.shape[1], self.grid, "pixel_shuffle")
        check_divisible(grid, self.options.factor, "pixel_shuffle")
        x = space_to_depth(features, grid, self.options.factor)  # [B, N/f^2, f^2*Dv]
        if self.norm is not None:
            x = self.norm(x)
        for i in range(self.options.num_layers):
            if i:
                x = self.act(x)
            x = getattr(self, f"linear_{i + 1}")(x)  # [B, N/f^2, Dt]
        return x
