"""`concat_merge`: MiniGPT-v2 / MiniGPT-4 (Llama-2) token merging, `group` consecutive patches -> one token.

Owns the merge ([B, N, D] -> [B, N/group, D*group], consecutive tokens in sequence order, not 2D blocks)
and the projection `proj` (MiniGPT's `llama_proj`) into the LM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...errors import ConfigError
from .base import CONNECTORS, Connector, ConnectorContext


@CONNECTORS.register("concat_merge")
class ConcatMergeConnector(Connector):
    """Concatenate every `group` consecutive feature vectors, then one Linear to the LM width."""

    @dataclass
    class Options:
        group: int = 4

        def validate(self, path: str = "connector") -> None:
            if self.group < 1:
                raise ConfigError(f"{path}.group must be >= 1, got {self.group}")

    def __init__(self, options: Options, ctx: ConnectorContext) -> None:
        super().__init__(options, ctx)
        self._check(ctx.num_patches)
        self.proj = nn.Linear(ctx.vision_dim * options.group, ctx.text_dim)

    def _check(self, num_patches: int) -> None:
        if num_patches % self.options.group:
            raise ConfigError(
                f"connector 'concat_merge': {num_patches} features are not divisible by "
                f"group={self.options.group} (drop the CLS token with vision.drop_cls: true, or change group)"
            )

    def num_output_tokens(self, num_patches: int) -> int:
        self._check(num_patches)
        return num_patches // self.options.group

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, num, dim = features.shape
        self._check(num)
        x = features.reshape(batch, num // self.options.group, dim * self.options.group)  # [B, N/g, g*Dv]
        return self.proj(x)  # [B, N/g, Dt]
