"""Contract and registry for connectors: vision features [B, N, Dv] -> LM embeddings [B, T, Dt]."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ...config import ConnectorConfig
from ...errors import ConfigError
from ...registry import Registry


@dataclass(frozen=True)
class ConnectorContext:
    """What a connector needs to know about its neighbours to size itself."""

    vision_dim: int
    text_dim: int
    num_patches: int
    """Feature vectors per image coming out of the encoder."""
    grid: tuple[int, int] | None
    """Patch grid (rows, cols) when the features are exactly a grid (no CLS), else None."""
    text_intermediate_size: int | None = None


class Connector(nn.Module, ABC):
    """Base class: subclasses declare an ``Options`` dataclass and how many tokens they emit."""

    Options: ClassVar[type]

    def __init__(self, options: Any, ctx: ConnectorContext) -> None:
        super().__init__()
        self.options = options
        self.ctx = ctx

    @abstractmethod
    def num_output_tokens(self, num_patches: int) -> int:
        """Tokens placed into the LM sequence for one image with `num_patches` feature vectors."""

    @abstractmethod
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, vision_dim] -> [B, num_output_tokens(N), text_dim]."""

    def require_grid(self) -> tuple[int, int]:
        if self.ctx.grid is None:
            raise ConfigError(
                f"connector '{type(self).__name__}' needs a square patch grid, but the encoder's "
                f"{self.ctx.num_patches} features are not one (set vision.drop_cls: true)"
            )
        return self.ctx.grid


CONNECTORS: Registry[type[Connector]] = Registry("connector")


def build_connector(config: ConnectorConfig, ctx: ConnectorContext) -> Connector:
    return CONNECTORS.get(config.type)(config.options, ctx)
