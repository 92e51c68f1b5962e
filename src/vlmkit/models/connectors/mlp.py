"""`mlp`: LLaVA-1.5's projector, N linear layers with an activation between them.

Parameter names follow llava-hf's `multi_modal_projector` (`linear_1`, `linear_2`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN

from ...errors import ConfigError
from .base import CONNECTORS, Connector, ConnectorContext


@CONNECTORS.register("mlp")
class MLPConnector(Connector):
    @dataclass
    class Options:
        num_layers: int = 2
        act: str = "gelu"
        bias: bool = True

        def validate(self, path: str = "connector") -> None:
            if self.num_layers < 1:
                raise ConfigError(f"{path}.num_layers must be >= 1, got {self.num_layers}")
            if self.act not in ACT2FN:
                raise ConfigError(f"{path}.act='{self.act}'; allowed: {', '.join(sorted(ACT2FN))}")

    def __init__(self, options: Options, ctx: ConnectorContext) -> None:
        super().__init__(options, ctx)
        dims = [ctx.vision_dim] + [ctx.text_dim] * options.num_layers
        for i in range(options.num_layers):
            self.add_module(f"linear_{i + 1}", nn.Linear(dims[i], dims[i + 1], bias=options.bias))
        self.act = ACT2FN[options.act]

    def num_output_tokens(self, num_patches: int) -> int:
        return num_patches

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features  # [B, N, Dv]
        for i in range(self.options.num_layers):
            if i:
                x = self.act(x)
            x = getattr(self, f"linear_{i + 1}")(x)  # [B, N, Dt]
        return x
