"""`qformer`: the BLIP-2 Q-Former bridge (VisualGLM-6B, MiniGPT-4) built on transformers' `Blip2QFormerModel`.

Owns the learned `query_tokens`, the Q-Former itself (`qformer`, cross-attending to the vision features) and
the `language_projection` into the LM. Names follow transformers' `Blip2Model`, so `query_tokens`,
`qformer.*` and `language_projection.*` of a BLIP-2 checkpoint load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from ...errors import ConfigError
from .base import CONNECTORS, Connector, ConnectorContext


@CONNECTORS.register("qformer")
class QFormerConnector(Connector):
    """`num_queries` learned queries read the image through the Q-Former, then one Linear into the LM."""

    @dataclass
    class Options:
        num_queries: int = 32
        hidden_size: int = 768
        num_layers: int = 12
        num_heads: int = 12
        intermediate_size: int = 3072
        cross_attention_frequency: int = 2
        """Every k-th Q-Former layer (starting with the first) cross-attends to the image."""

        def validate(self, path: str = "connector") -> None:
            for name in ("num_queries", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                         "cross_attention_frequency"):
                if getattr(self, name) < 1:
                    raise ConfigError(f"{path}.{name} must be >= 1, got {getattr(self, name)}")
            if self.hidden_size % self.num_heads:
                raise ConfigError(
                    f"{path}.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
                )

    def __init__(self, options: Options, ctx: ConnectorContext) -> None:
        super().__init__(options, ctx)
        config = qformer_config(options, ctx.vision_dim)
        self.query_tokens = nn.Parameter(torch.empty(1, options.num_queries, options.hidden_size))
        nn.init.normal_(self.query_tokens, mean=0.0, std=config.initializer_range)
        self.qformer = Blip2QFormerModel(config)
        self.language_projection = nn.Linear(options.hidden_size, ctx.text_dim)

    def num_output_tokens(self, num_patches: int) -> int:
        return self.options.num_queries

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch = features.shape[0]
        queries = self.query_tokens.expand(batch, -1, -1)  # [B, Q, H]
        image_mask = torch.ones(features.shape[:-1], dtype=torch.long, device=features.device)  # [B, N]
        out = self.qformer(
            query_embeds=queries, encoder_hidden_states=features, encoder_attention_mask=image_mask
        ).last_hidden_state  # [B, Q, H]
        return self.language_projection(out.to(self.language_projection.weight.dtype))  # [B, Q, Dt]


def qformer_config(options: QFormerConnector.Options, vision_dim: int) -> Blip2QFormerConfig:
    """The transformers config of the Q-Former for these options and a `vision_dim`-wide image encoder."""
    return Blip2QFormerConfig(
        hidden_size=options.hidden_size,
        num_hidden_layers=options.num_layers,
        num_attention_heads=options.num_heads,
        intermediate_size=options.intermediate_size,
        cross_attention_frequency=options.cross_attention_frequency,
        encoder_hidden_size=vision_dim,
    )
