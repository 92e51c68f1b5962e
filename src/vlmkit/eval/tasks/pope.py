"""POPE in its official format: JSON Lines `coco_pope_<category>.json` files of {question_id, image, text, label}.

This module owns reading one file or a folder of them (`--questions FILE_OR_DIR`, images from `--images`;
the category comes from the file name or a `category` field; with several files an item id is
`<category>:<question_id>`) and the report: accuracy, precision, recall, F1 and yes-ratio per category and
pooled, plus the mean F1 over categories (the number LLaVA reports), as fractions like the official script.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from ...data.sample import DataError
from ..metrics.pope import pope_scores
from .base import EvalItem, Scores, TaskSource, get, image_path, read_jsonl, require

_CATEGORY = re.compile(r"pope_([A-Za-z0-9]+)\.jsonl?$")


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
    if not files:
        raise DataError(f"{path}: no .json / .jsonl POPE files in this folder")
    return files


def load_pope(src: TaskSource) -> list[EvalItem]:
    root = require(src.questions or src.annotations or src.data, "--questions", "pope",
                   "a coco_pope_<category>.json file or a folder of them")
    files = _files(root)
    items = []
    for path in files:
        m = _CATEGORY.search(path.name)
        for i, rec in enumerate(read_jsonl(path)):
            where = f"record {i + 1}"
            category = str(rec.get("category") or (m.group(1) if m else ""))
            qid = str(get(rec, "question_id", path, where))
            question = rec.get("text", rec.get("question"))
            if not isinstance(question, str):
                raise DataError(f"{path}: {where} has no field 'text' (the question)")
            img = image_path(src.images, get(rec, "image", path, where, str))
            label = rec.get("label")
            if label is not None and label not in ("yes", "no"):
                raise DataError(f"{path}: {where}, field 'label' is {label!r}; expected 'yes' or 'no'")
            item_id = f"{category}:{qid}" if len(files) > 1 else qid
            items.append(EvalItem(item_id, question, [img] if img else [], label, {"category": category}))
    return items


def score_pope(items: Sequence[EvalItem], preds: Mapping[str, str]) -> Scores:
    pooled = pope_scores([preds[it.id] for it in items], [it.target for it in items]).to_dict()
    categories = sorted({it.meta["category"] for it in items})
    per = {c: pope_scores([preds[it.id] for it in items if it.meta["category"] == c],
                          [it.target for it in items if it.meta["category"] == c]).to_dict() for c in categories}
    metrics = {k: pooled[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")}
    main = "f1"
    if len(categories) > 1:
        metrics["f1_mean"] = sum(per[c]["f1"] for c in categories) / len(categories)
        main = "f1_mean"
    breakdowns = {"category": {c: per[c]["f1"] for c in categories}}
    return Scores(main, metrics, breakdowns, {"per_category": per, "counts": {k: pooled[k] for k in ("tp", "fp", "tn", "fn")}})
