"""`glu`: CogVLM's GLU adapter from EVA2-CLIP features into the LM, with learned boi/eoi tokens.

Owns the adapter that CogVLM keeps at `model.vision.linear_proj.*` (`linear_proj`, `norm1`, `gate_proj`,
`dense_h_to_4h`, `dense_4h_to_h`) plus the `model.vision.boi` / `model.vision.eoi` parameters, here held as
direct attributes of the connector under the same leaf names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import ConfigError
from .base import CONNECTORS, Connector, ConnectorContext


@CONNECTORS.register("glu")
class GLUConnector(Connector):
    """linear_proj -> LayerNorm -> GELU -> SwiGLU (gate_proj, dense_h_to_4h, dense_4h_to_h); boi + patches + eoi."""

    @dataclass
    class Options:
        intermediate_size: int | None = None
        """Width of the SwiGLU; defaults to the LM's intermediate size, else 4 x text hidden size."""
        boi_eoi: bool = True
        """Wrap the patches in learned begin/end-of-image embeddings (N -> N + 2 tokens)."""

        def validate(self, path: str = "connector") -> None:
            if self.intermediate_size is not None and self.intermediate_size < 1:
                raise ConfigError(f"{path}.intermediate_size must be >= 1, got {self.intermediate_size}")

    def __init__(self, options: Options, ctx: ConnectorContext) -> None:
        super().__init__(options, ctx)
        hidden = ctx.text_dim
        inner = options.intermediate_size or ctx.text_intermediate_size or 4 * hidden
        self.linear_proj = nn.Linear(ctx.vision_dim, hidden, bias=False)
        self.norm1 = nn.LayerNorm(hidden)
        self.act1 = nn.GELU()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.dense_h_to_4h = nn.Linear(hidden, inner, bias=False)
        self.dense_4h_to_h = nn.Linear(inner, hidden, bias=False)
        if options.boi_eoi:
            self.boi = nn.Parameter(torch.zeros(1, 1, hidden))
            self.eoi = nn.Parameter(torch.zeros(1, 1, hidden))

    def num_output_tokens(self, num_patches: int) -> int:
        return num_patches + 2 if self.options.boi_eoi else num_patches

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.linear_proj(features)))  # [B, N, Dt]
        x = F.silu(self.gate_proj(x)) * self.dense_h_to_4h(x)  # [B, N, I]
        x = self.dense_4h_to_h(x)  # [B, N, Dt]
        if not self.options.boi_eoi:
            return x
        batch = x.shape[0]
        boi = self.boi.expand(batch, -1, -1).to(x.dtype)  # [B, 1, Dt]
        eoi = self.eoi.expand(batch, -1, -1).to(x.dtype)  # [B, 1, Dt]
        return torch.cat([boi, x, eoi], dim=1)  # [B, N + 2, Dt]
