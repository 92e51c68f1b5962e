"""Contract and registry for connectors: vision features [B, N, Dv] -> LM embeddings [B, T, Dt]."""

from __future__ import annotations

import math
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


def feature_grid(num_patches: int, grid: tuple[int, int], who: str) -> tuple[int, int]:
    """Grid of `num_patches` features: the context's `grid` when it matches, else a square one."""
    if grid[0] * grid[1] == num_patches:
        return grid
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ConfigError(
            f"connector '{who}': {num_patches} features are neither the configured {grid[0]}x{grid[1]} "
            "patch grid nor a square grid"
        )
    return side, side


def check_divisible(grid: tuple[int, int], factor: int, who: str) -> None:
    """Raise a ConfigError unless both sides of `grid` are multiples of `factor`."""
    if grid[0] % factor or grid[1] % factor:
        raise ConfigError(
            f"connector '{who}': the {grid[0]}x{grid[1]} patch grid is not divisible by factor={factor}; "
            "pick a factor that divides both sides (or change vision.image_size / patch_size)"
        )


CONNECTORS: Registry[type[Connector]] = Registry("connector")


def build_connector(config: ConnectorConfig, ctx: ConnectorContext) -> Connector:
    return CONNECTORS.get(config.type)(config.options, ctx)
