"""`Sample`: the one in-memory shape every data format is converted to, and the error type for bad data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VlmkitError


class DataError(VlmkitError):
    """A data file or sample is malformed; the message names the file, the sample id and the fix."""


@dataclass
class Sample:
    """One training / evaluation example.

    `messages` use the OpenAI shape: [{"role": "system"|"user"|"assistant", "content": str}], where the
    content holds one "<image>" marker per image (markers may be omitted: the processor then puts all images
    on the first user turn). `images` are resolved paths (or in-memory PIL images for generated data), in
    marker order. `meta` keeps format-specific extras (e.g. the ground-truth answer, boxes, the task name).
    """

    id: str
    messages: list[dict[str, Any]]
    images: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    """The file the sample came from (for error messages)."""

    def answer(self) -> str | None:
        """The last assistant message, if any (the expected answer for evaluation)."""
        for m in reversed(self.messages):
            if m["role"] == "assistant":
                return str(m["content"])
        return None
