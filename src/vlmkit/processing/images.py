"""Image loading and the encoder's transform: any image input -> normalized pixel tensor [3, S, S]."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..config import CLIP_MEAN, CLIP_STD, VisionConfig
from ..errors import VlmkitError

ImageInput = Image.Image | str | Path | bytes | np.ndarray

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def load_image(image: ImageInput) -> Image.Image:
    """Open a path, raw bytes, an array or a PIL image as RGB; errors name the file."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    if isinstance(image, bytes):
        try:
            with Image.open(io.BytesIO(image)) as im:
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise VlmkitError(f"image bytes are not a readable image ({e})") from None
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise VlmkitError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise VlmkitError(f"cannot read image {path}: {e}") from None
    raise VlmkitError(f"unsupported image input of type {type(image).__name__}: give a path, bytes or PIL image")


@dataclass
class ImageTransform:
    """Resize to (size, size), optionally after padding to a square with the mean colour, then normalize."""

    size: int
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    resample: str = "bicubic"
    pad_to_square: bool = False

    @classmethod
    def from_vision_config(cls, config: VisionConfig) -> ImageTransform:
        return cls(config.image_size, list(config.image_mean), list(config.image_std), config.resample,
                   config.pad_to_square)

    def __call__(self, image: ImageInput) -> torch.Tensor:
        img = load_image(image)
        if self.pad_to_square:
            img = expand_to_square(img, tuple(int(round(m * 255)) for m in self.mean))
        img = img.resize((self.size, self.size), _RESAMPLE[self.resample])
        arr = np.asarray(img, dtype=np.float32) / 255.0  # [S, S, 3]
        x = torch.from_numpy(arr).permute(2, 0, 1)  # [3, S, S]
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict[str, Any]:
        """Hugging Face-style `preprocessor_config.json` keys."""
        return {
            "image_processor_type": "vlmkit.ImageTransform",
            "do_resize": True,
            "size": {"height": self.size, "width": self.size},
            "resample": self.resample,
            "do_pad": self.pad_to_square,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": self.mean,
            "image_std": self.std,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageTransform:
        return cls(int(data["size"]["height"]), list(data["image_mean"]), list(data["image_std"]),
                   data.get("resample", "bicubic"), bool(data.get("do_pad", False)))


def expand_to_square(img: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Pad the shorter side symmetrically (LLaVA's `expand2square`)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out
