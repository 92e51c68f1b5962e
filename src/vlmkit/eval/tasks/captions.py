"""COCO-style captioning: `captions_*.json` ({images, annotations: [{image_id, caption}]}) or Karpathy's
`dataset_coco.json` ({images: [{filepath, filename, split, sentences: [{raw}], cocoid}]}, pick `--split`).

This module owns reading them (one item per image, its reference captions as the target, images in the
order of the file and references in annotation order, as pycocoevalcap iterates them) and the report:
BLEU-1..4, ROUGE-L and CIDEr(-D) as pycocoevalcap returns them (fractions), with the tokenizer used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...data.sample import DataError
from ..metrics.captioning import caption_scores
from .base import EvalItem, Scores, TaskSource, as_list, get, image_path, read_json, require


def load_captions(src: TaskSource) -> list[EvalItem]:
    path = require(src.annotations or src.questions, "--annotations", "coco-caption",
                   "captions_val2014.json or Karpathy's dataset_coco.json")
    data = read_json(path)
    images = as_list(get(data, "images", path, "the file"), path, "'images'")
    if images and isinstance(images[0], dict) and "sentences" in images[0]:
        return _karpathy(images, src, path)
    refs: dict[str, list[str]] = {}
    for i, a in enumerate(as_list(get(data, "annotations", path, "the file"), path, "'annotations'")):
        refs.setdefault(str(get(a, "image_id", path, f"annotation {i}")), []).append(
            get(a, "caption", path, f"annotation {i}", str))
    items = []
    for i, im in enumerate(images):
        image_id = str(get(im, "id", path, f"image {i}"))
        if image_id not in refs:
            continue
        img = image_path(src.images, get(im, "file_name", path, f"image {i}", str))
        items.append(EvalItem(image_id, "", [img] if img else [], refs[image_id]))
    if not items:
        raise DataError(f"{path}: no image has a caption in 'annotations'")
    return items


def _karpathy(images: list, src: TaskSource, path) -> list[EvalItem]:
    split = src.split or "test"
    items = []
    for i, im in enumerate(images):
        if im.get("split") != split:
            continue
        where = f"image {i}"
        sents = [get(s, "raw", path, f"{where}, sentence {j}", str)
                 for j, s in enumerate(get(im, "sentences", path, where, list))]
        name = get(im, "filename", path, where, str)
        img = image_path(src.images, f"{im.get('filepath', '')}/{name}".lstrip("/"), name)
        items.append(EvalItem(str(im.get("cocoid", im.get("imgid", i))), "", [img] if img else [], sents))
    if not items:
        raise DataError(f"{path}: no image in split '{split}'")
    return items


def score_captions(items: Sequence[EvalItem], preds: Mapping[str, str]) -> Scores:
    refs = {it.id: list(it.target) for it in items}
    out = caption_scores(refs, {it.id: preds[it.id] for it in items})
    metrics = {k: out[k] for k in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")}
    return Scores("CIDEr", metrics, notes={"tokenizer": out["tokenizer"]})
