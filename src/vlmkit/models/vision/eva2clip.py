"""Native EVA2-CLIP vision tower (CogVLM's `model.vision` ViT), registered as `eva2clip`.

This module owns the tower's architecture with CogVLM's exact parameter names, so CogVLM checkpoints load
with only a prefix change (`model.vision.` -> the encoder's prefix):

    patch_embedding.proj                  Conv2d(3, W, patch, stride=patch) with bias
    patch_embedding.cls_embedding         (1, W)
    patch_embedding.position_embedding    Embedding(grid * grid + 1, W)
    transformer.layers.{i}.input_layernorm, attention.query_key_value (W -> 3W, bias), attention.dense,
                          mlp.fc1, mlp.fc2, post_attention_layernorm

Layers are "sandwich" post-norm: the LayerNorm is applied to each sub-layer's OUTPUT before the residual add.
The tower has no final LayerNorm. The GLU adapter, `conv`, `boi`/`eoi` of CogVLM are connector concerns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...config import VisionConfig
from ...errors import ConfigError
from .base import VISION_ENCODERS, VisionEncoder


class EVA2PatchEmbedding(nn.Module):
    """Pixels -> CLS + patch tokens with learned absolute positions."""

    def __init__(self, width: int, patch_size: int, num_patches: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.cls_embedding = nn.Parameter(torch.zeros(1, width))
        self.position_embedding = nn.Embedding(num_patches + 1, width)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.proj(pixel_values)  # [B, W, h, w]
        x = x.flatten(2).transpose(1, 2)  # [B, P, W]
        cls = self.cls_embedding.expand(x.shape[0], 1, -1)  # [B, 1, W]
        x = torch.cat([cls, x], dim=1)  # [B, 1+P, W]
        if x.shape[1] != self.position_embedding.num_embeddings:
            raise ConfigError(
                f"eva2clip: image gives {x.shape[1] - 1} patches but the tower has "
                f"{self.position_embedding.num_embeddings - 1} positions (check vision.image_size)"
            )
        return x + self.position_embedding.weight.unsqueeze(0)  # [B, 1+P, W]


class EVA2Attention(nn.Module):
    """Bidirectional multi-head self-attention with a fused QKV projection laid out as [q | k | v]."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ConfigError(f"eva2clip: hidden_size={width} is not a multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        self.query_key_value = nn.Linear(width, 3 * width)
        self.dense = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.query_key_value(x).reshape(b, n, 3, self.num_heads, -1)  # [B, N, 3, H, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, Dh]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, Dh]
        return self.dense(out.transpose(1, 2).reshape(b, n, -1))  # [B, N, W]


class EVA2MLP(nn.Module):
    def __init__(self, width: int, intermediate_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # [B, N, W]


class EVA2Layer(nn.Module):
    """Sandwich post-norm block: x + LN(attn(x)), then x + LN(mlp(x))."""

    def __init__(self, width: int, num_heads: int, intermediate_size: int, eps: float) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(width, eps=eps)
        self.attention = EVA2Attention(width, num_heads)
        self.mlp = EVA2MLP(width, intermediate_size)
        self.post_attention_layernorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.input_layernorm(self.attention(x))  # [B, N, W]
        return x + self.post_attention_layernorm(self.mlp(x))  # [B, N, W]


class EVA2Transformer(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EVA2Layer(config.hidden_size, config.num_heads, config.intermediate_size, config.layer_norm_eps)
            for _ in range(config.num_layers)
        )


@VISION_ENCODERS.register("eva2clip")
class EVA2CLIPEncoder(VisionEncoder):
    """CogVLM's EVA2-CLIP-E tower (1792 wide, 63 layers, patch 14 in CogVLM); has a CLS token, no final norm."""

    has_cls = True

    def __init__(self, config: VisionConfig) -> None:
        super().__init__(config)
        if config.hf_config:
            raise ConfigError(
                "vision.hf_config is not used by the native 'eva2clip' encoder; set vision.hidden_size, "
                "num_layers, num_heads, intermediate_size, image_size and patch_size instead"
            )
        side = config.image_size // config.patch_size
        self.patch_embedding = EVA2PatchEmbedding(config.hidden_size, config.patch_size, side * side)
        self.transformer = EVA2Transformer(config)
        self._init_embeddings()

    def _init_embeddings(self) -> None:
        nn.init.normal_(self.patch_embedding.cls_embedding, std=0.02)
        nn.init.normal_(self.patch_embedding.position_embedding.weight, std=0.02)

    @property
    def width(self) -> int:
        return self.config.hidden_size

    def hidden_states(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.proj.weight.dtype))  # [B, 1+P, W]
        states = [x]
        for layer in self.transformer.layers:
            x = layer(x)  # [B, 1+P, W]
            states.append(x)
        return tuple(states)
