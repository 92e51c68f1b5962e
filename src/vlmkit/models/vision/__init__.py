"""Vision encoders: Hugging Face CLIP / SigLIP / BLIP-2 ViTs, ResNet / ConvNeXt CNNs, native EVA2-CLIP (CogVLM)."""

from . import conv, eva2clip, hf  # noqa: F401  (registers the encoders)
from .base import VISION_ENCODERS, VisionEncoder, build_vision_encoder

__all__ = ["VISION_ENCODERS", "VisionEncoder", "build_vision_encoder"]
