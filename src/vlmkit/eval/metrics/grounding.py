"""Referring-expression grounding (RefCOCO / RefCOCO+ / RefCOCOg): the predicted box, IoU and Acc@0.5.

This module owns reading ONE box from an answer, in pixels of the image, and scoring it:
1. CogVLM `[[x0,y0,x1,y1]]` (0-999, /1000) and MiniGPT-v2 `{<x0><y0><x1><y1>}` (0-100) via
   `vlmkit.generation.grounding.parse_boxes` (corners ordered, clamped, empty boxes dropped);
2. Qwen-VL `<box>(x1,y1),(x2,y2)</box>` (the opening tag is optional: Qwen-VL's prompt ends with it),
   divided by 999 as Qwen-VL's `evaluate_grounding.py` does;
3. a plain `[x0, y0, x1, y1]` list: normalized when every value is <= 1 (LLaVA-1.5 style), else pixels.
The first format found in this order wins, and within a format the first box. IoU uses continuous
coordinates (area = width * height, as torchvision's `box_iou` in Qwen-VL's script), with corners put in
order; a pair of boxes with no area between them (touching, or both empty) has IoU 0. Acc@0.5 counts
IoU >= 0.5.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ...generation.grounding import parse_boxes

BoxXYXY = tuple[float, float, float, float]
QWEN_SCALE = 999.0
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_QWEN = re.compile(rf"(?:<box>)?\({_NUM},{_NUM}\)\s*,\s*\({_NUM},{_NUM}\)(?:</box>)?")
_PLAIN = re.compile(rf"(?<!\[)\[{_NUM},{_NUM},{_NUM},{_NUM}\](?!\])")


def ordered(box: Sequence[float]) -> BoxXYXY:
    """(x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, whatever corners were given."""
    x0, x1 = sorted((float(box[0]), float(box[2])))
    y0, y1 = sorted((float(box[1]), float(box[3])))
    return (x0, y0, x1, y1)


def xywh_to_xyxy(box: Sequence[float]) -> BoxXYXY:
    """COCO [x, y, w, h] -> [x0, y0, x1, y1]."""
    x, y, w, h = (float(v) for v in box)
    return (x, y, x + w, y + h)


def parse_qwen_box(text: str, width: int, height: int) -> BoxXYXY | None:
    """The first Qwen-VL box in `text`, in pixels (coordinates / 999 * size), or None."""
    m = _QWEN.search(text)
    if m is None:
        return None
    x0, y0, x1, y1 = (float(v) for v in m.groups())
    return (x0 / QWEN_SCALE * width, y0 / QWEN_SCALE * height, x1 / QWEN_SCALE * width, y1 / QWEN_SCALE * height)


def parse_plain_box(text: str, width: int, height: int) -> BoxXYXY | None:
    """The first `[x0, y0, x1, y1]` in `text`, in pixels (values all <= 1 are fractions of the size)."""
    m = _PLAIN.search(text)
    if m is None:
        return None
    v = [float(x) for x in m.groups()]
    if all(abs(x) <= 1.0 for x in v):
        return (v[0] * width, v[1] * height, v[2] * width, v[3] * height)
    return (v[0], v[1], v[2], v[3])


def parse_box(text: str, width: int, height: int) -> BoxXYXY | None:
    """The predicted box of an answer, in pixels, or None when the answer holds no box."""
    boxes = parse_boxes(text, width, height)
    if boxes:
        return boxes[0].xyxy
    return parse_qwen_box(text, width, height) or parse_plain_box(text, width, height)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0.0 when the union has no area."""
    ax0, ay0, ax1, ay1 = ordered(a)
    bx0, by0, bx1, by1 = ordered(b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def accuracy_at(ious: Sequence[float], threshold: float = 0.5) -> float:
    """Share of IoUs >= threshold (0.0 for none)."""
    return sum(1 for v in ious if v >= threshold) / len(ious) if ious else 0.0
