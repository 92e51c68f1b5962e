"""The generic JSON Lines task: one question per line, scored by what the line carries.

Fields: `question` and `answer` (required), `image` (a path or a list, relative to `--images` or else to the
file's folder), `id` (default: the line number), `choices` (a list: multiple choice, the answer is a letter or
one of the choices), `bbox` ([x0, y0, x1, y1] pixels: grounding; `image_size` [w, h] or the image's own),
`type` (optional breakdown key). Plain answers are scored by exact match (whitespace-stripped) with a
relaxed match (case, spacing, final period ignored) beside it; choices by the MMBench letter rules; boxes by
IoU >= 0.5.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ...data.sample import DataError
from ...errors import VlmkitError
from ..metrics.exact import exact_match, relaxed_match
from ..metrics.grounding import iou, parse_box
from ..metrics.multiple_choice import LETTERS, format_options, mmbench_letter
from .base import LETTER_ANSWER, EvalItem, Scores, TaskSource, get, read_jsonl, require


def _images(value: Any, root: Path, path: Path, where: str) -> list[Path]:
    names = value if isinstance(value, list) else [value]
    if not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: {where}, field 'image' must be a path or a list of paths")
    return [Path(n) if Path(n).is_absolute() else root / n for n in names]


def _choice_target(rec: dict[str, Any], choices: list[str], path: Path, where: str) -> str:
    answer = str(rec["answer"]).strip()
    if answer in LETTERS[:len(choices)]:
        return answer
    if answer in choices:
        return LETTERS[choices.index(answer)]
    raise DataError(f"{path}: {where}, field 'answer' {answer!r} is neither an option letter "
                    f"({', '.join(LETTERS[:len(choices)])}) nor one of the 'choices'")


def _item(rec: dict[str, Any], i: int, path: Path, root: Path) -> EvalItem:
    where = f"line {i + 1}"
    question = get(rec, "question", path, where, str)
    get(rec, "answer", path, where)
    images = _images(rec["image"], root, path, where) if rec.get("image") else []
    meta: dict[str, Any] = {"kind": "exact", "choices_prompt": "", "type": str(rec.get("type", ""))}
    target: Any = str(rec["answer"])
    if rec.get("choices") is not None:
        choices = [str(c) for c in get(rec, "choices", path, where, list)]
        target = _choice_target(rec, choices, path, where)
        meta.update(kind="choice", options=format_options(choices), choices={LETTERS[k]: c for k, c in enumerate(choices)},
                    choices_prompt=f"\n{format_options(choices)}\n{LETTER_ANSWER}")
    elif rec.get("bbox") is not None:
        box = get(rec, "bbox", path, where, list)
        if len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
            raise DataError(f"{path}: {where}, field 'bbox' must be [x0, y0, x1, y1] in pixels")
        target = tuple(float(v) for v in box)
        meta.update(kind="bbox", image_size=rec.get("image_size"))
    return EvalItem(str(rec.get("id", i + 1)), question, images, target, meta)


def load_jsonl(src: TaskSource) -> list[EvalItem]:
    path = require(src.questions or src.annotations, "--questions", "jsonl", "a JSON Lines file of questions")
    root = src.images or path.parent
    items = [_item(rec, i, path, root) for i, rec in enumerate(read_jsonl(path))]
    if len({it.id for it in items}) != len(items):
        raise DataError(f"{path}: the 'id' values are not unique")
    return items


def image_size(item: EvalItem) -> tuple[int, int]:
    """The [w, h] of a grounding item: from the record, else read from its first image's header."""
    if item.meta.get("image_size"):
        w, h = item.meta["image_size"]
        return int(w), int(h)
    if not item.images:
        raise VlmkitError(f"item {item.id} has a bbox but neither an image nor an 'image_size'")
    try:
        with Image.open(item.images[0]) as im:
            return im.size
    except (OSError, UnidentifiedImageError) as e:
        raise VlmkitError(f"cannot read the size of {item.images[0]} for item {item.id}: {e}") from None


def _hit(item: EvalItem, pred: str) -> bool:
    if item.meta["kind"] == "choice":
        return mmbench_letter(pred, item.meta["choices"]) == item.target
    if item.meta["kind"] == "bbox":
        box = parse_box(pred, *image_size(item))
        return box is not None and iou(box, item.target) >= 0.5
    return exact_match(pred, item.target)


def score_jsonl(items: Sequence[EvalItem], preds: Mapping[str, str]) -> Scores:
    hits = [_hit(it, preds[it.id]) for it in items]
    metrics: dict[str, Any] = {"accuracy": 100 * sum(hits) / len(hits)}
    plain = [it for it in items if it.meta["kind"] == "exact"]
    if plain:
        metrics["relaxed_accuracy"] = 100 * sum(relaxed_match(preds[it.id], it.target) for it in plain) / len(plain)
    breakdowns: dict[str, dict[str, float]] = {}
    for key in ("kind", "type"):
        groups: dict[str, list[bool]] = defaultdict(list)
        for it, h in zip(items, hits):
            if it.meta.get(key):
                groups[it.meta[key]].append(h)
        if len(groups) > 1 or (key == "type" and groups):
            breakdowns[key] = {k: 100 * sum(v) / len(v) for k, v in sorted(groups.items())}
    return Scores("accuracy", metrics, breakdowns)
