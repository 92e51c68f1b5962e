"""Synthetic tasks generated on the fly from `vlmkit.data.synthetic`: shapes, grounding, captcha.

This module owns turning generated `Sample`s into items (the question as the model was trained on it, the
expected answer, and for grounding the pixel box and image size) and their reports: exact-match accuracy per
sub-task for `shapes` (count / color / position), Acc@0.5 and mean IoU for `grounding`, exact and relaxed
match for `captcha` (which also reads a folder of `<text>.png` captchas with `--data DIR`). `--limit N` sets how many samples are generated (default 200) and `--split K` the
generation seed (default 1000, so the set is held out from data written with the default seed 0).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from ...constants import IMAGE_TOKEN
from ...data.synthetic import generate
from ...errors import VlmkitError
from ..metrics.exact import exact_match, relaxed_match
from .base import EvalItem, Scores, TaskSource

DEFAULT_COUNT = 200
DEFAULT_SEED = 1000
KINDS = {"shapes": ("shapes", {"tasks": "count,color,position"}), "grounding": ("shapes", {"tasks": "grounding"}),
         "captcha": ("captcha", {})}


def _seed(split: str | None) -> int:
    if split is None:
        return DEFAULT_SEED
    try:
        return int(split)
    except ValueError:
        raise VlmkitError(f"--split {split!r}: for synthetic tasks --split is the generation seed (an integer)") from None


def load_synthetic(task: str, src: TaskSource) -> list[EvalItem]:
    if task == "captcha" and src.data is not None:
        samples = _captcha_folder(src)
    else:
        kind, options = KINDS[task]
        samples = generate(kind, src.count or DEFAULT_COUNT, _seed(src.split), **options)
    items = []
    for s in samples:
        user = next(m["content"] for m in s.messages if m["role"] == "user")
        question = user.replace(IMAGE_TOKEN, "").strip()
        target = tuple(float(v) for v in s.meta["bbox"]) if task == "grounding" else s.meta["answer"]
        meta = {"task": s.meta["task"], "image_size": list(s.meta["image_size"])}
        items.append(EvalItem(s.id, question, list(s.images), target, meta))
    return items


def _captcha_folder(src: TaskSource) -> list:
    """A folder of captcha images named by their text (e.g. the test/ part of `vlmkit data split`)."""
    from ...data.formats import load_samples

    if not src.data.is_dir():
        raise VlmkitError(f"--data {src.data}: not a folder of captcha images (<text>.png)")
    samples, _ = load_samples(src.data, fmt="folder")
    for s in samples:
        s.meta.setdefault("task", "captcha")
        s.meta.setdefault("answer", s.answer())
        s.meta.setdefault("image_size", list(_size(s.images[0])))
    return samples[: src.count] if src.count else samples


def _size(image: object) -> tuple[int, int]:
    from PIL import Image

    if hasattr(image, "size"):
        return image.size  # type: ignore[return-value]
    with Image.open(image) as im:  # type: ignore[arg-type]
        return im.size


def score_exact(items: Sequence[EvalItem], preds: Mapping[str, str]) -> Scores:
    hits = [exact_match(preds[it.id], it.target) for it in items]
    relaxed = [relaxed_match(preds[it.id], it.target) for it in items]
    groups: dict[str, list[bool]] = defaultdict(list)
    for it, h in zip(items, hits):
        groups[it.meta["task"]].append(h)
    breakdowns = {"task": {k: 100 * sum(v) / len(v) for k, v in sorted(groups.items())}} if len(groups) > 1 else {}
    return Scores("accuracy", {"accuracy": 100 * sum(hits) / len(hits),
                               "relaxed_accuracy": 100 * sum(relaxed) / len(relaxed)}, breakdowns)

