"""Turning user inputs into model inputs: image loading/transform and the `VLMProcessor`."""

from .images import ImageInput, ImageTransform, load_image
from .processor import Encoded, VLMBatch, VLMProcessor

__all__ = ["Encoded", "ImageInput", "ImageTransform", "VLMBatch", "VLMProcessor", "load_image"]
