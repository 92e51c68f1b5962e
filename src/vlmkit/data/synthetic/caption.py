"""Short factual captions of shapes scenes, for the alignment (connector pre-training) stage.

"A red circle, a blue square and a green triangle on a white background." — objects listed left to right.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ...constants import IMAGE_TOKEN
from ..sample import Sample
from .shapes import Shape, draw_scene, make_scene

DEFAULT_PROMPT = "Describe the image briefly."


def describe(shapes: Sequence[Shape]) -> str:
    """The caption of a scene: its shapes from left to right, joined in plain English."""
    names = [f"{_article(s.color)} {s.name}" for s in sorted(shapes, key=lambda s: (s.center_x, s.box[1]))]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed[0].upper()}{listed[1:]} on a white background."


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_sample(
    rng: random.Random, sample_id: str, image_size: int = 96, max_shapes: int = 5, prompt: str | None = DEFAULT_PROMPT
) -> Sample:
    """One shapes image with its caption; `prompt=None` or "" gives a bare `<image>` user turn (LLaVA pretrain)."""
    shapes = make_scene(rng, image_size, max_shapes)
    caption = describe(shapes)
    user = f"{IMAGE_TOKEN}\n{prompt}" if prompt else IMAGE_TOKEN
    meta: dict[str, object] = {"task": "caption", "answer": caption, "image_size": [image_size, image_size],
                               "shapes": [s.to_dict() for s in shapes]}
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": caption}]
    return Sample(sample_id, messages, [draw_scene(shapes, image_size)], meta)
