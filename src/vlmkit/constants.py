"""Constants shared by every part of vlmkit: label masking and the image placeholder."""

IGNORE_INDEX: int = -100
"""Label value that the loss ignores (prompt, padding and image positions)."""

IMAGE_TOKEN: str = "<image>"
"""Marker for one image in prompt text and the special token the processor expands per image."""
