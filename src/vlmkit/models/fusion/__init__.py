"""Deep fusion: modules that reach inside the LLM (e.g. CogVLM's visual expert), in the `FUSIONS` registry.

A fusion rewrites the LM's decoder layers once at build time and, at forward time, turns the batch's per-token
inputs (`token_type_ids`) into keyword arguments that transformers passes down to every decoder layer.
Prefix-only models (LLaVA, BLIP-2 bridges, resamplers) have no fusion.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ...registry import Registry


class Fusion(nn.Module, ABC):
    """Base class: `install` converts the LM in place; `forward_kwargs` feeds it per call."""

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__()
        self.options = options

    @abstractmethod
    def install(self, language_model: PreTrainedModel) -> None:
        """Convert the LM's layers (called once, before weights are loaded)."""

    @abstractmethod
    def forward_kwargs(
        self, token_type_ids: torch.Tensor | None, position_ids: torch.Tensor | None
    ) -> dict[str, Any]:
        """Extra keyword arguments for the LM forward (reach every decoder layer)."""

    def position_ids(self, token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """Custom position ids (e.g. one shared position for all image patches); None keeps the default."""
        return None


FUSIONS: Registry[type[Fusion]] = Registry("fusion")


def build_fusion(options: dict[str, Any]) -> Fusion:
    opts = dict(options)
    return FUSIONS.get(opts.pop("type"))(opts)
