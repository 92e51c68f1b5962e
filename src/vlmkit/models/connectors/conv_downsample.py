"""`conv_downsample`: CogVLM2's strided Conv2d over the patch grid, followed by any other connector.

Owns `conv` (Conv2d(Dv, Dv, kernel=factor, stride=factor), CogVLM2's `model.vision.conv`) and the nested
connector `inner`, built from the `next` option (a connector config such as `{type: glu}`) with a context
whose patch count and grid are the downsampled ones. The `next` option is validated and normalised to its
full `ConnectorConfig.to_dict()` form when the config is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ...config import ConnectorConfig
from ...errors import ConfigError
from .base import CONNECTORS, Connector, ConnectorContext, build_connector, check_divisible, feature_grid


@CONNECTORS.register("conv_downsample")
class ConvDownsampleConnector(Connector):
    """[B, H*W, Dv] -> Conv2d(k=s=factor) -> [B, H*W/factor^2, Dv] -> the `next` connector."""

    @dataclass
    class Options:
        factor: int = 2
        next: dict[str, Any] = field(default_factory=lambda: {"type": "linear"})
        """The connector applied after the convolution, as a connector config mapping."""

        def validate(self, path: str = "connector") -> None:
            if self.factor < 1:
                raise ConfigError(f"{path}.factor must be >= 1, got {self.factor}")
            self.next = ConnectorConfig.from_dict(self.next, f"{path}.next").to_dict()

    def __init__(self, options: Options, ctx: ConnectorContext) -> None:
        super().__init__(options, ctx)
        self.grid = self.require_grid()
        factor = options.factor
        check_divisible(self.grid, factor, "conv_downsample")
        self.conv = nn.Conv2d(ctx.vision_dim, ctx.vision_dim, kernel_size=factor, stride=factor)
        small = (self.grid[0] // factor, self.grid[1] // factor)
        inner_ctx = replace(ctx, num_patches=small[0] * small[1], grid=small)
        self.inner = build_connector(ConnectorConfig.from_dict(options.next, "connector.next"), inner_ctx)

    def num_output_tokens(self, num_patches: int) -> int:
        grid = feature_grid(num_patches, self.grid, "conv_downsample")
        check_divisible(grid, self.options.factor, "conv_downsample")
        return self.inner.num_output_tokens(num_patches // self.options.factor**2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, num, dim = features.shape
        rows, cols = feature_grid(num, self.grid, "conv_downsample")
        check_divisible((rows, cols), self.options.factor, "conv_downsample")
        x = features.transpose(1, 2).reshape(batch, dim, rows, cols)  # [B, Dv, H, W]
        x = self.conv(x)  # [B, Dv, H/f, W/f]
        x = x.flatten(2).transpose(1, 2)  # [B, N/f^2, Dv]
        return self.inner(x)  # [B, T, Dt]
