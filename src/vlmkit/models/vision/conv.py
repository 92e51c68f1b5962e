"""Convolutional Hugging Face vision towers: `resnet` (ResNetModel) and `convnext` (ConvNextModel).

A CNN's stages give feature maps [B, C, H, W]; vlmkit flattens the selected stage row-major into H*W patch
features [B, H*W, C] (no CLS token), so every connector works unchanged (ConvLLaVA uses a ConvNeXt this way).
The VisionConfig fields mean, for these towers:
- `num_layers`: number of stages; `hidden_size`: channels of the last stage (random init doubles the channels at
  every stage up to it); `hf_config` may set `depths`, `hidden_sizes`, `layer_type`, ... directly;
- `feature_layer`: the stage to read (-1 last; 0 is the stem), a list takes stages of equal shape;
- `patch_size`: the stride of the selected stage (derived, written back when the tower is built).
CNNs learn from scratch on small data far faster than ViTs, which is why the embedded default model uses one.
A frozen tower (LoRA adapters on it included) keeps its batch-norm statistics fixed: it stays in eval mode.
CNN features say little about where they are; `position_encoding: sincos2d` adds fixed 2D positions (DETR adds
them to its ResNet features for the same reason), which grounding and reading text left to right need.
`position_grid` scales them to the grid a model was trained on when it runs at another image size (as ViTs
interpolate their position embeddings); with index positions a new size would move every place's code.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import ConvNextConfig, ConvNextModel, PretrainedConfig, ResNetConfig, ResNetModel

from ...config import VisionConfig
from ...errors import ConfigError
from .base import VISION_ENCODERS
from .hf import HFVisionEncoder

_STEM_STRIDE = 4
"""Both towers' stems reduce the image by 4 (ResNet: stride-2 conv + max-pool; ConvNeXt: 4x4 patchify)."""


def grid_positions(size: int, reference: int | None = None) -> torch.Tensor:
    """Positions [size] of a grid's cells: their indices, or with `reference` the cell centres mapped onto a grid
    of `reference` cells (align_corners=False, as image resizing does), so that the ends stay at the same place."""
    index = torch.arange(size, dtype=torch.float32)  # [size]
    if reference is None:
        return index
    return (index + 0.5) * (reference / size) - 0.5


def sincos_2d(height: int, width: int, dim: int, reference: int | None = None) -> torch.Tensor:
    """Fixed 2D sine-cosine positions [height * width, dim] (row-major): the first half of the channels encode
    the row, the second half the column, each as sin / cos at dim / 4 frequencies (MAE / DETR style).
    `reference` scales the positions to a `reference` x `reference` grid (see `grid_positions`)."""
    if dim % 4:
        raise ConfigError(f"vision.position_encoding=sincos2d needs features divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))  # [D/4]
    rows = grid_positions(height, reference)[:, None].expand(height, width).reshape(-1)  # [H*W]
    cols = grid_positions(width, reference)[None, :].expand(height, width).reshape(-1)  # [H*W]
    parts = []
    for pos in (rows, cols):
        angle = pos[:, None] * omega[None, :]  # [H*W, D/4]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1)  # [H*W, D]


class HFConvEncoder(HFVisionEncoder):
    """Shared wrapper around a transformers CNN backbone whose hidden states are stage outputs [B, C, H, W]."""

    has_cls = False
    supports_position_encoding = True

    def __init__(self, config: VisionConfig) -> None:
        if config.post_layernorm:
            raise ConfigError(f"vision.post_layernorm is not supported by the '{config.type}' encoder "
                              "(a CNN has no final LayerNorm); set it to false")
        super().__init__(config)
        self._check_layers()
        pos = None
        if config.position_encoding == "sincos2d":
            pos = sincos_2d(*self.grid_size, self.hidden_size, config.position_grid)
        self.register_buffer("position_encoding", pos, persistent=False)  # [h*w, D] or None

    # ---------------------------------------------------------------------------------------- building
    def _size_fields(self) -> dict[str, Any]:
        n = self.config.num_layers
        if n < 1:
            raise ConfigError(f"vision.num_layers={n}: a {self.config.type} tower needs at least one stage")
        widths = [max(8, self.config.hidden_size // 2 ** (n - 1 - i)) for i in range(n)]
        return {"num_channels": 3, "hidden_sizes": widths, "depths": [2] * n, **self._stem(widths[0])}

    def _stem(self, width: int) -> dict[str, Any]:
        return {}

    def _sync_config(self) -> None:
        hf = self.model.config
        self.config.num_layers = len(hf.depths)
        self.config.hidden_size = int(hf.hidden_sizes[-1])
        self.config.patch_size = self.stage_stride(self._stage_index(self.layers[0]))

    # ---------------------------------------------------------------------------------------- geometry
    def stage_stride(self, stage: int) -> int:
        """Total stride of hidden state `stage` (0 = stem output)."""
        strides = [_STEM_STRIDE, *self._stage_strides()]
        out = 1
        for s in strides[: stage + 1]:
            out *= s
        return out

    def _stage_strides(self) -> list[int]:
        return [1] + [2] * (len(self.model.config.depths) - 1)

    def _stage_widths(self) -> list[int]:
        cfg = self.model.config
        return [int(self._stem_width()), *(int(w) for w in cfg.hidden_sizes)]

    def _stem_width(self) -> int:
        return int(self.model.config.hidden_sizes[0])

    def _stage_index(self, layer: int) -> int:
        count = len(self.model.config.depths) + 1
        if not -count <= layer < count:
            raise ConfigError(
                f"vision.feature_layer={layer}: the {self.config.type} tower has {count} hidden states "
                f"(stem + {count - 1} stages); use -{count}..{count - 1}"
            )
        return layer % count

    def _check_layers(self) -> None:
        stages = [self._stage_index(layer) for layer in self.layers]
        shapes = {(self._stage_widths()[s], self.stage_stride(s)) for s in stages}
        stride = self.stage_stride(stages[0])
        if self.config.image_size % stride:
            raise ConfigError(f"vision.image_size={self.config.image_size} is not a multiple of the selected "
                              f"stage's stride {stride}; use a multiple of {stride}")
        if len(shapes) > 1:
            raise ConfigError(
                f"vision.feature_layer={self.config.feature_layer}: the stages differ in channels or stride; "
                "a list may only name stages of the same shape"
            )

    # ---------------------------------------------------------------------------------------- contract
    @property
    def width(self) -> int:
        return self._stage_widths()[self._stage_index(self.layers[0])]

    def hidden_states(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pixel_values = pixel_values.to(self.model.dtype)  # [B, 3, H, W]
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        return tuple(h.flatten(2).transpose(1, 2) for h in out.hidden_states)  # each [B, h*w, C]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = super().forward(pixel_values)  # [B, h*w, D]
        if self.position_encoding is not None:
            x = x + self.position_encoding.to(x.dtype)
        return x

    def train(self, mode: bool = True) -> HFConvEncoder:
        super().train(mode)
        if mode and not any(p.requires_grad for n, p in self.named_parameters() if "lora_" not in n):
            # frozen base weights (LoRA adapters may train): batch-norm statistics stay as loaded, since an
            # adapter checkpoint would not carry statistics updated during training
            self.model.eval()
        return self


@VISION_ENCODERS.register("resnet")
class ResNetVisionEncoder(HFConvEncoder):
    """ResNet (basic or bottleneck blocks); batch norm, so its statistics train with the tower."""

    model_class = ResNetModel
    config_class = ResNetConfig
    parent_model_types: ClassVar[tuple[str, ...]] = ("resnet",)
    random_init_defaults: ClassVar[dict[str, Any]] = {"layer_type": "basic"}

    def _stem(self, width: int) -> dict[str, Any]:
        return {"embedding_size": width}

    def _stem_width(self) -> int:
        return int(self.model.config.embedding_size)

    def _stage_strides(self) -> list[int]:
        cfg: PretrainedConfig = self.model.config
        first = 2 if cfg.downsample_in_first_stage else 1
        return [first] + [2] * (len(cfg.depths) - 1)


@VISION_ENCODERS.register("convnext")
class ConvNextVisionEncoder(HFConvEncoder):
    """ConvNeXt (layer norm, depthwise 7x7 convs); ConvLLaVA's encoder family."""

    model_class = ConvNextModel
    config_class = ConvNextConfig
    parent_model_types: ClassVar[tuple[str, ...]] = ("convnext",)

    def _size_fields(self) -> dict[str, Any]:
        fields = super()._size_fields()
        fields["num_stages"] = len(fields["depths"])
        fields["image_size"] = self.config.image_size
        return fields

    def _sync_config(self) -> None:
        self.model.config.num_stages = len(self.model.config.depths)
        super()._sync_config()
