"""Grounding boxes in generated text: parse them to pixels, draw them, and write them back in CogVLM form.

Formats (REFERENCE.md §3):
- CogVLM `[[x0,y0,x1,y1]]`, each coordinate = relative position x 1000 (000-999), several boxes for one phrase
  inside one pair of brackets separated by `;`; the phrase is the text before the brackets in its clause.
- MiniGPT-v2 `<p>phrase</p> {<x0><y0><x1><y1>}` on a 0-100 scale, several boxes joined with `<delim>`.

Parsing never raises on model output: malformed boxes are skipped, corners are put in order and clamped to the
image, and boxes with no area left are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

COGVLM_SCALE = 1000
MINIGPT_SCALE = 100

_COGVLM = re.compile(r"\[\[([^\[\]]+)\]\]")
_COGVLM_BOX = re.compile(r"^\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*$")
_MINIGPT = re.compile(r"(?:<p>(?P<phrase>.*?)</p>\s*)?(?P<chain>\{[^{}]*\}(?:\s*<delim>\s*\{[^{}]*\})*)", re.S)
_MINIGPT_BOX = re.compile(r"^\{\s*<(-?\d+)>\s*<(-?\d+)>\s*<(-?\d+)>\s*<(-?\d+)>\s*\}$")
_MINIGPT_GROUP = re.compile(r"\{[^{}]*\}")
# A clause ends at sentence punctuation, a newline, or a previous box.
_CLAUSE_END = re.compile(r"(?:[.!?;:,]\s|\n|\]\]|\}|</p>)")

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels (x0 <= x1, y0 <= y1) with the phrase it grounds ('' when none)."""

    phrase: str
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_boxes(text: str, width: int, height: int) -> list[Box]:
    """Every CogVLM and MiniGPT-v2 box in `text`, in pixels of a `width` x `height` image, in text order."""
    if not text or width <= 0 or height <= 0:
        return []
    found = _parse_cogvlm(text, width, height) + _parse_minigpt(text, width, height)
    return [box for _, box in sorted(found, key=lambda t: t[0])]


def _parse_cogvlm(text: str, width: int, height: int) -> list[tuple[int, Box]]:
    out: list[tuple[int, Box]] = []
    for m in _COGVLM.finditer(text):
        phrase = _clause_before(text, m.start())
        for part in m.group(1).split(";"):
            coords = _COGVLM_BOX.match(part)
            box = coords and _to_box(phrase, coords.groups(), COGVLM_SCALE, width, height)
            if box:
                out.append((m.start(), box))
    return out


def _parse_minigpt(text: str, width: int, height: int) -> list[tuple[int, Box]]:
    out: list[tuple[int, Box]] = []
    for m in _MINIGPT.finditer(text):
        phrase = (m.group("phrase") or "").strip()
        for group in _MINIGPT_GROUP.findall(m.group("chain")):
            coords = _MINIGPT_BOX.match(group)
            box = coords and _to_box(phrase, coords.groups(), MINIGPT_SCALE, width, height)
            if box:
                out.append((m.start(), box))
    return out


def _clause_before(text: str, end: int) -> str:
    """The text between the last clause boundary before `end` and `end`, trimmed of spaces and punctuation."""
    head = text[:end]
    starts = [m.end() for m in _CLAUSE_END.finditer(head)]
    phrase = head[starts[-1] if starts else 0:]
    return phrase.strip(" \t\n,;:.!?-\"'")


def _to_box(phrase: str, coords: Sequence[str], scale: int, width: int, height: int) -> Box | None:
    """Relative integer coords -> ordered, clamped pixel box; None when nothing of it is inside the image."""
    x0, y0, x1, y1 = (int(c) for c in coords)
    x0, x1 = sorted((_clamp(x0 * width / scale, width), _clamp(x1 * width / scale, width)))
    y0, y1 = sorted((_clamp(y0 * height / scale, height), _clamp(y1 * height / scale, height)))
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(phrase, x0, y0, x1, y1)


def _clamp(v: float, hi: int) -> float:
    return min(max(v, 0.0), float(hi))


def format_cogvlm_box(box_px: Box | Sequence[float], width: int, height: int) -> str:
    """A pixel box -> CogVLM `[[x0,y0,x1,y1]]` with 3 digits each (000-999); the inverse of `parse_boxes`."""
    x0, y0, x1, y1 = box_px.xyxy if isinstance(box_px, Box) else tuple(box_px)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))

    def rel(v: float, size: int) -> str:
        return f"{min(max(round(v / size * COGVLM_SCALE), 0), COGVLM_SCALE - 1):03d}"

    return f"[[{rel(x0, width)},{rel(y0, height)},{rel(x1, width)},{rel(y1, height)}]]"


def draw_boxes(image: Image.Image, boxes: Sequence[Box], line_width: int | None = None) -> Image.Image:
    """A copy of `image` (RGB, same size) with each box outlined and labelled with its phrase."""
    out = image.convert("RGB")  # always a new image
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    lw = line_width or max(1, round(min(out.size) / 200))
    for i, box in enumerate(boxes):
        color = PALETTE[i % len(PALETTE)]
        draw.rectangle(box.xyxy, outline=color, width=lw)
        if box.phrase:
            _label(draw, font, box, color)
    return out


def _label(draw: ImageDraw.ImageDraw, font: Any, box: Box, color: str) -> None:
    """The phrase on a filled strip just above the box (inside it when the box touches the top edge)."""
    left, top, right, bottom = draw.textbbox((0, 0), box.phrase, font=font)
    tw, th = right - left, bottom - top
    y = box.y0 - th - 4 if box.y0 >= th + 4 else box.y0
    draw.rectangle((box.x0, y, box.x0 + tw + 4, y + th + 4), fill=color)
    draw.text((box.x0 + 2, y + 2 - top), box.phrase, fill="white", font=font)
