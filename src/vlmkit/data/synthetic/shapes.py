"""Synthetic "shapes" scenes and questions about them (count, color, position, grounding), drawn with PIL.

A scene holds 1-5 non-overlapping circles / squares / triangles on white, each (color, shape) pair at most once so
that "the red circle" always names one object. Everything is a pure function of a `random.Random`, which the
package seeds from (kind, seed, index): the same (seed, index) always gives the same image and question.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from ...constants import IMAGE_TOKEN
from ...errors import ConfigError
from ..formats import to_cogvlm_box
from ..sample import Sample

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 0),
    "purple": (140, 50, 170),
    "orange": (250, 130, 0),
}
SHAPES = ("circle", "square", "triangle")
TASKS = ("count", "color", "position", "grounding")
GROUNDING_PROMPT = "Can you point out {} in the image and provide the bounding boxes of its location?"
GROUNDING_ANSWERS = ("box", "phrase")
"""A grounding answer: the box alone (`[[x0,y0,x1,y1]]`) or CogVLM's grounded phrase (`the red circle[[...]]`)."""
MIN_GAP = 4
"""Pixels two shapes' centers must differ horizontally for a left/right question about them."""


@dataclass(frozen=True)
class Shape:
    """One drawn object: kind, color name and its pixel box (x0, y0, x1, y1), x1/y1 exclusive."""

    kind: str
    color: str
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"

    @property
    def center_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    def to_dict(self) -> dict[str, object]:
        return {"shape": self.kind, "color": self.color, "bbox": list(self.box)}


# ------------------------------------------------------------------------------------------------ scenes
def make_scene(rng: random.Random, size: int = 96, max_shapes: int = 5, min_shapes: int = 1) -> list[Shape]:
    """min_shapes..max_shapes shapes with distinct (color, kind) pairs, placed without overlap (2 px margin).

    A crowded small image may place fewer than asked (a shape that finds no free spot after 100 tries is dropped).
    """
    if size < 32:
        raise ConfigError(f"image_size={size} is too small for shapes; use 32 px or more")
    if not 1 <= min_shapes <= max_shapes <= len(COLORS) * len(SHAPES):
        raise ConfigError(
            f"shapes min_shapes={min_shapes}, max_shapes={max_shapes}; "
            f"need 1 <= min_shapes <= max_shapes <= {len(COLORS) * len(SHAPES)}"
        )
    combos = [(c, k) for c in COLORS for k in SHAPES]
    wanted = rng.randint(min_shapes, max_shapes)
    shapes: list[Shape] = []
    for color, kind in rng.sample(combos, wanted):
        box = _place(rng, size, [s.box for s in shapes])
        if box is not None:
            shapes.append(Shape(kind, color, box))
    return shapes


def _place(rng: random.Random, size: int, taken: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int] | None:
    lo, hi = max(8, size * 3 // 20), max(10, size * 3 // 10)
    for _ in range(100):
        side = rng.randint(lo, hi)
        x0, y0 = rng.randint(1, size - side - 1), rng.randint(1, size - side - 1)
        box = (x0, y0, x0 + side, y0 + side)
        if not any(_overlap(box, t, margin=2) for t in taken):
            return box
    return None


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def draw_scene(shapes: Sequence[Shape], size: int = 96) -> Image.Image:
    """The scene as an RGB image on a white background."""
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    for s in shapes:
        x0, y0, x1, y1 = s.box
        fill = COLORS[s.color]
        if s.kind == "circle":
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
        elif s.kind == "square":
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
        else:
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=fill)
    return img


# --------------------------------------------------------------------------------------------- questions
def ask_count(rng: random.Random, shapes: Sequence[Shape]) -> tuple[str, str, dict[str, object]]:
    variant = rng.choice(("all", "color", "shape"))
    if variant == "all":
        return "How many shapes are there?", str(len(shapes)), {}
    if variant == "color":
        color = _present_or_not(rng, [s.color for s in shapes], list(COLORS))
        n = sum(s.color == color for s in shapes)
        return f"How many {color} shapes are there?", str(n), {}
    kind = _present_or_not(rng, [s.kind for s in shapes], list(SHAPES))
    return f"How many {kind}s are there?", str(sum(s.kind == kind for s in shapes)), {}


def _present_or_not(rng: random.Random, present: list[str], every: list[str]) -> str:
    """Mostly a value that is in the image; sometimes any value (so that 0 is a possible answer)."""
    return rng.choice(sorted(set(present))) if rng.random() < 0.75 else rng.choice(every)


def ask_color(rng: random.Random, shapes: Sequence[Shape]) -> tuple[str, str, dict[str, object]] | None:
    kinds = [s.kind for s in shapes]
    unique = [s for s in shapes if kinds.count(s.kind) == 1]
    if not unique:
        return None
    s = rng.choice(unique)
    return f"What color is the {s.kind}?", s.color, {}


def ask_position(rng: random.Random, shapes: Sequence[Shape]) -> tuple[str, str, dict[str, object]] | None:
    pairs = [(a, b) for a in shapes for b in shapes if a != b and abs(a.center_x - b.center_x) >= MIN_GAP]
    if not pairs:
        return None
    if rng.random() < 0.5:
        a, b = rng.choice(pairs)
        answer = "yes" if a.center_x < b.center_x else "no"
        return f"Is the {a.name} to the left of the {b.name}?", answer, {}
    ordered = sorted(shapes, key=lambda s: s.center_x)
    if ordered[1].center_x - ordered[0].center_x < MIN_GAP:
        return None
    return "Which shape is the leftmost?", f"the {ordered[0].name}", {}


def ask_grounding(
    rng: random.Random, shapes: Sequence[Shape], size: int, grounding_answer: str = "box"
) -> tuple[str, str, dict[str, object]]:
    s = rng.choice(list(shapes))
    ref = f"the {s.name}"
    box = to_cogvlm_box(s.box, (size, size), "real")
    answer = ref + box if grounding_answer == "phrase" else box
    return GROUNDING_PROMPT.format(ref), answer, {"bbox": list(s.box), "ref": s.name}


def _question(rng: random.Random, task: str, shapes: Sequence[Shape], size: int, grounding_answer: str = "box"):
    if task == "count":
        return ask_count(rng, shapes)
    if task == "color":
        return ask_color(rng, shapes)
    if task == "position":
        return ask_position(rng, shapes)
    return ask_grounding(rng, shapes, size, grounding_answer)


# ---------------------------------------------------------------------------------------------- samples
def shapes_sample(
    rng: random.Random, sample_id: str, image_size: int = 96, tasks: Sequence[str] | str | None = None,
    max_shapes: int = 5, turns: int = 1, grounding_answer: str = "box", min_shapes: int = 1,
) -> Sample:
    """One shapes image and `turns` questions about it (a multi-turn chat; the image comes with the first).

    meta["task"] / meta["answer"] (and a grounding turn's "bbox" / "ref") describe the last turn, the one
    `Sample.answer()` returns. Several turns per image give training many answers per image encoding.
    A task that cannot be asked about this scene (no unique shape kind for `color`, shapes too close for
    `position`) falls back to `count` when `count` is allowed, else to `grounding`. `grounding_answer`: one of
    `GROUNDING_ANSWERS`. `min_shapes` > 1 leaves out the scenes where a question needs no choosing between objects.
    """
    if turns < 1:
        raise ConfigError(f"shapes turns={turns}; use 1 or more questions per image")
    if grounding_answer not in GROUNDING_ANSWERS:
        raise ConfigError(f"shapes grounding_answer='{grounding_answer}'; allowed: {', '.join(GROUNDING_ANSWERS)}")
    allowed = parse_tasks(tasks)
    shapes = make_scene(rng, image_size, max_shapes, min_shapes)
    messages: list[dict[str, str]] = []
    for turn in range(turns):
        task, (question, answer, extra) = pick_question(rng, allowed, shapes, image_size, grounding_answer)
        prefix = f"{IMAGE_TOKEN}\n" if turn == 0 else ""
        messages += [{"role": "user", "content": prefix + question}, {"role": "assistant", "content": answer}]
    meta: dict[str, object] = {"task": task, "answer": answer, "image_size": [image_size, image_size],
                               "shapes": [s.to_dict() for s in shapes], **extra}
    return Sample(sample_id, messages, [draw_scene(shapes, image_size)], meta)


def pick_question(
    rng: random.Random, allowed: list[str], shapes: Sequence[Shape], size: int, grounding_answer: str = "box"
) -> tuple[str, tuple[str, str, dict[str, object]]]:
    """(task, (question, answer, meta extras)) of one question from `allowed` (falls back as `shapes_sample` says)."""
    task = rng.choice(allowed)
    qa = _question(rng, task, shapes, size, grounding_answer)
    if qa is None:
        task = "count" if "count" in allowed else "grounding"
        qa = _question(rng, task, shapes, size, grounding_answer)
    return task, qa


def parse_tasks(tasks: Sequence[str] | str | None) -> list[str]:
    """The `tasks` option (None: all; "a,b" or a list) as a validated list."""
    if tasks is None:
        return list(TASKS)
    chosen = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in chosen if t not in TASKS]
    if unknown or not chosen:
        raise ConfigError(f"shapes tasks {chosen}; allowed: {', '.join(TASKS)}")
    return chosen
