"""Hugging Face vision towers: `clip` (CLIPVisionModel), `siglip` (SiglipVisionModel), `blip2` (Blip2VisionModel).

This module owns building a transformers vision model from a VisionConfig (a local `pretrained` directory, or
random init from the size fields, with `hf_config` applied on top), syncing the VisionConfig's size fields from
the built HF config, and exposing every layer's hidden states to the shared feature selection in `base.py`.

The HF model is kept whole as the submodule `model`; with transformers 5 its parameters are named
`model.embeddings.*`, `model.encoder.layers.{i}.*`, `model.post_layernorm.*` (CLIP adds `model.pre_layrnorm.*`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import (
    Blip2VisionConfig,
    Blip2VisionModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    PretrainedConfig,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.utils import logging as hf_logging

from ...config import VisionConfig
from ...errors import CheckpointError, ConfigError
from .base import VISION_ENCODERS, VisionEncoder

# Full CLIPModel / SiglipModel / Blip2 checkpoints prefix the tower's weights with this.
_FULL_MODEL_KEY_MAPPING = {r"^vision_model\.": ""}

# VisionConfig field -> HF vision config key.
_SIZE_FIELDS = {
    "image_size": "image_size",
    "patch_size": "patch_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "layer_norm_eps": "layer_norm_eps",
}


class HFVisionEncoder(VisionEncoder):
    """Shared wrapper around a transformers `*VisionModel`; subclasses only name the classes."""

    model_class: ClassVar[type[PreTrainedModel]]
    config_class: ClassVar[type[PretrainedConfig]]
    parent_model_types: ClassVar[tuple[str, ...]] = ()
    """`model_type`s of full (vision + text) checkpoints whose vision tower can be loaded."""
    config_overrides: ClassVar[dict[str, Any]] = {}
    """HF config values always forced (e.g. SigLIP's unused pooling head is dropped)."""
    random_init_defaults: ClassVar[dict[str, Any]] = {}
    """HF config values used when building from the size fields (below `hf_config`)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__(config)
        hf_config = self._build_hf_config()
        if config.pretrained:
            self.model = self._load_pretrained(Path(config.pretrained), hf_config)
        else:
            self.model = self.model_class(hf_config)
        self._sync_config()

    # ---------------------------------------------------------------------------------------- building
    def _build_hf_config(self) -> PretrainedConfig:
        """Base values (the pretrained directory's config, else the size fields) + `hf_config` + overrides."""
        if self.config.pretrained:
            path = Path(self.config.pretrained)
            self._check_model_type(path)
            base = self.config_class.from_pretrained(str(path)).to_dict()
        else:
            base = {**self.random_init_defaults, **self._size_fields()}
        extra = dict(self.config.hf_config or {})
        if isinstance(extra.get("vision_config"), dict):  # a full CLIPConfig-style dict: take its tower
            extra = extra["vision_config"]
        return self.config_class.from_dict({**base, **extra, **self.config_overrides})

    def _size_fields(self) -> dict[str, Any]:
        """HF config values derived from the VisionConfig's size fields (random init)."""
        return {hf_key: getattr(self.config, field) for field, hf_key in _SIZE_FIELDS.items()}

    def _sync_config(self) -> None:
        sync_vision_config(self.config, self.model.config)

    def _check_model_type(self, path: Path) -> None:
        if not path.is_dir():
            raise ConfigError(f"vision.pretrained: directory not found: {path}")
        config_file = path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"vision.pretrained: no config.json in {path}")
        try:
            model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{config_file}: not valid JSON: {e}") from None
        allowed = (self.config_class.model_type, *self.parent_model_types)
        if model_type not in allowed:
            raise ConfigError(
                f"vision.pretrained={path} holds a '{model_type}' model, but vision.type '{self.config.type}' "
                f"loads one of: {', '.join(allowed)}"
            )

    def _load_pretrained(self, path: Path, hf_config: PretrainedConfig) -> PreTrainedModel:
        try:
            with _quiet_transformers():  # a full CLIP/SigLIP/BLIP-2 dir reports every text weight as unexpected
                model, info = self.model_class.from_pretrained(
                    str(path),
                    config=hf_config,
                    key_mapping=_FULL_MODEL_KEY_MAPPING,
                    dtype=torch.get_default_dtype(),
                    output_loading_info=True,
                )
        except (OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"vision.pretrained: cannot load {self.model_class.__name__} from {path}: {e}"
            ) from e
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise CheckpointError(
                f"vision.pretrained: {path} lacks {len(missing)} weight(s) of {self.model_class.__name__}, "
                f"e.g. {', '.join(missing[:3])}"
            )
        return model

    # ---------------------------------------------------------------------------------------- contract
    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    def hidden_states(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pixel_values = pixel_values.to(self.model.dtype)  # [B, 3, H, W]
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        return tuple(out.hidden_states)  # (embeddings, layer 1, ..., layer L), each [B, 1+P or P, W]

    def final_layernorm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.post_layernorm(x)  # [B, N, W]

    def hf_config_dict(self) -> dict[str, Any]:
        return self.model.config.to_dict()


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report; missing weights are checked (and raised) by the caller."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def sync_vision_config(config: VisionConfig, hf_config: PretrainedConfig) -> None:
    """Write the tower's actual sizes into `config` (so the processor resizes to the right image size)."""
    for field, hf_key in _SIZE_FIELDS.items():
        value = getattr(hf_config, hf_key, None)
        if value is not None:
            setattr(config, field, float(value) if field == "layer_norm_eps" else int(value))


@VISION_ENCODERS.register("clip")
class CLIPVisionEncoder(HFVisionEncoder):
    """OpenAI CLIP ViT (LLaVA's tower); hidden state 0 is the embeddings after `pre_layrnorm`."""

    has_cls = True
    model_class = CLIPVisionModel
    config_class = CLIPVisionConfig
    parent_model_types = ("clip",)


@VISION_ENCODERS.register("siglip")
class SiglipVisionEncoder(HFVisionEncoder):
    """SigLIP ViT: no CLS token; the attention-pooling head is not built (features come from the layers)."""

    has_cls = False
    model_class = SiglipVisionModel
    config_class = SiglipVisionConfig
    parent_model_types = ("siglip",)
    config_overrides = {"vision_use_head": False}


@VISION_ENCODERS.register("blip2")
class Blip2VisionEncoder(HFVisionEncoder):
    """EVA ViT-g as in BLIP-2 / VisualGLM / MiniGPT-4; `post_layernorm` plays BLIP-2's `ln_vision`."""

    has_cls = True
    model_class = Blip2VisionModel
    config_class = Blip2VisionConfig
    parent_model_types = ("blip-2",)
    random_init_defaults = {"initializer_range": 0.02}  # HF's 1e-10 would make a from-scratch tower output ~0
