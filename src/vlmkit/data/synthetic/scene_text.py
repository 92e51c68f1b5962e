"""`scene_text`: the `shapes` questions asked about a scene written out as text (no image).

"Scene: a blue square at [[052,104,302,354]], a red circle at [[604,510,802,708]].\nWhat color is the circle?"
-> "red". Objects are listed in random order, so answering means finding the object the question names by its
words and copying or comparing what is written next to it: the same two-step lookup an image question needs
(gather the queried words, then attend to the matching object), here on exact token matches and without
images, which makes it a cheap test bed for how fast an LM learns the lookup (README, "The default model"), and
a stand-in for the reading skills a pretrained LLM brings to LLaVA-style training.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ...errors import ConfigError
from ..formats import to_cogvlm_box
from ..sample import Sample
from .shapes import Shape, make_scene, parse_tasks, pick_question


def describe_with_boxes(shapes: Sequence[Shape], size: int, rng: random.Random) -> str:
    """'Scene: a red circle at [[...]], ...' with the objects in random order."""
    listed = [f"{'an' if s.color[0] in 'aeiou' else 'a'} {s.name} at {to_cogvlm_box(s.box, (size, size), 'real')}"
              for s in rng.sample(list(shapes), len(shapes))]
    return "Scene: " + ", ".join(listed) + "."


def scene_text_sample(
    rng: random.Random, sample_id: str, image_size: int = 96, tasks: Sequence[str] | str | None = None,
    max_shapes: int = 5, turns: int = 1,
) -> Sample:
    """A text-only conversation of `turns` shapes questions about a described scene (meta like `shapes`)."""
    if turns < 1:
        raise ConfigError(f"scene_text turns={turns}; use 1 or more questions per scene")
    allowed = parse_tasks(tasks)
    shapes = make_scene(rng, image_size, max_shapes)
    messages: list[dict[str, str]] = []
    for turn in range(turns):
        task, (question, answer, extra) = pick_question(rng, allowed, shapes, image_size)
        prefix = describe_with_boxes(shapes, image_size, rng) + "\n" if turn == 0 else ""
        messages += [{"role": "user", "content": prefix + question}, {"role": "assistant", "content": answer}]
    meta: dict[str, object] = {"task": task, "answer": answer, "image_size": [image_size, image_size],
                               "shapes": [s.to_dict() for s in shapes], **extra}
    return Sample(sample_id, messages, [], meta)
