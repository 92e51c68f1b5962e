"""Contract and registry for vision encoders: pixels [B, 3, H, W] -> patch features [B, N, D]."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from ...config import VisionConfig
from ...errors import ConfigError
from ...registry import Registry


class VisionEncoder(nn.Module, ABC):
    """A vision tower with feature selection applied (layer choice, CLS dropping, optional final norm).

    Subclasses set `has_cls` and implement `hidden_states` (every layer's output, embeddings first) and
    `final_layernorm`; selection is shared here so every tower honours the same options.
    """

    has_cls: bool = True
    supports_position_encoding: bool = False
    """Whether `config.position_encoding` may add positions to the output (CNN towers; ViTs have their own)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        if config.position_encoding != "none" and not self.supports_position_encoding:
            raise ConfigError(f"vision.position_encoding={config.position_encoding} is for CNN towers (resnet, "
                              f"convnext); the '{config.type}' encoder has its own position embeddings: use none")

    # ------------------------------------------------------------------------------------------ contract
    @property
    @abstractmethod
    def width(self) -> int:
        """Hidden size of one layer of the tower."""

    @abstractmethod
    def hidden_states(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Embedding output followed by each layer's output, each [B, 1+P or P, width]."""

    def final_layernorm(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"vision.post_layernorm is not supported by the '{self.config.type}' encoder")

    def hf_config_dict(self) -> dict[str, Any] | None:
        """The complete HF config of the tower, stored in saved checkpoints (None for native towers)."""
        return None

    # ----------------------------------------------------------------------------------------- derived
    @property
    def layers(self) -> list[int]:
        fl = self.config.feature_layer
        return list(fl) if isinstance(fl, list) else [fl]

    @property
    def hidden_size(self) -> int:
        """Feature dimension of the output (width x number of selected layers)."""
        return self.width * len(self.layers)

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.config.image_size // self.config.patch_size
        return side, side

    @property
    def keeps_cls(self) -> bool:
        return self.has_cls and not self.config.drop_cls

    @property
    def num_patches(self) -> int:
        """Feature vectors per image in the output."""
        h, w = self.grid_size
        return h * w + (1 if self.keeps_cls else 0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        states = self.hidden_states(pixel_values)
        feats = [states[i] for i in self.layers]  # each [B, 1+P, W]
        if self.config.post_layernorm:
            feats = [self.final_layernorm(f) for f in feats]
        x = torch.cat(feats, dim=-1)  # [B, 1+P, W * len(layers)]
        if self.has_cls and self.config.drop_cls:
            x = x[:, 1:]  # [B, P, D]
        return x


VISION_ENCODERS: Registry[type[VisionEncoder]] = Registry("vision encoder")


def build_vision_encoder(config: VisionConfig) -> VisionEncoder:
    return VISION_ENCODERS.get(config.type)(config)
