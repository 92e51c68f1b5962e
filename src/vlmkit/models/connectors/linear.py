"""`linear`: one projection per patch (LLaVA-1 style)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import CONNECTORS, Connector, ConnectorContext


@CONNECTORS.register("linear")
class LinearConnector(Connector):
    @dataclass
    class Options:
        bias: bool = True

    def __init__(self, options: Options, ctx: ConnectorContext) -> None:
        super().__init__(options, ctx)
        self.proj = nn.Linear(ctx.vision_dim, ctx.text_dim, bias=options.bias)

    def num_output_tokens(self, num_patches: int) -> int:
        return num_patches

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)  # [B, N, Dt]
