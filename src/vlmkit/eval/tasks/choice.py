"""Multiple-choice tasks in their official formats: ScienceQA (`problems.json`) and MMBench (TSV, base64 images).

This module owns reading them into `EvalItem`s (options as "A. ...\\nB. ..." in `meta["options"]`, the hint
as `meta["context"]`) and their reports:
- ScienceQA: `--data DIR` with `problems.json` and `pid_splits.json`, `--split test` (default); images at
  `<images or DIR/images>/<split>/<pid>/image.png`. Accuracy (LLaVA's rules), image-question accuracy,
  per subject.
- MMBench: `--questions MMBench_DEV_EN.tsv` (columns index, question, hint, A..D, answer, category,
  l2-category, image = base64, or the index of the row holding it). Official TSVs carry the circular copies
  (index + k * 1e6); a TSV without them gets its rotations generated (LLaVA `--all-rounds`). CircularEval
  accuracy (main), plain accuracy of the first copies, both per category and l2-category.
"""

from __future__ import annotations

import base64
import binascii
import csv
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...data.sample import DataError
from ...errors import VlmkitError
from ..metrics.multiple_choice import (
    CIRCULAR_OFFSET,
    LETTERS,
    ChoiceRecord,
    circular_group,
    circular_hits,
    format_options,
    mmbench_letter,
    rotate_choices,
    scienceqa_correct,
)
from .base import EvalItem, Scores, TaskSource, as_list, get, read_json, require


def _percent(values: Sequence[bool]) -> float:
    return sum(values) / len(values) * 100 if values else 0.0


def _percent_by(items: Sequence[EvalItem], hits: Sequence[bool], key: str) -> dict[str, float]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for it, h in zip(items, hits):
        if it.meta.get(key) not in (None, ""):
            groups[str(it.meta[key])].append(h)
    return {k: _percent(v) for k, v in sorted(groups.items())}


# --------------------------------------------------------------------------------------------- ScienceQA
def load_scienceqa(src: TaskSource) -> list[EvalItem]:
    root = require(src.data, "--data", "scienceqa", "the folder with problems.json and pid_splits.json")
    split = src.split or "test"
    problems_path, splits_path = root / "problems.json", root / "pid_splits.json"
    problems = read_json(require(problems_path, "--data", "scienceqa", "problems.json"))
    splits = read_json(require(splits_path, "--data", "scienceqa", "pid_splits.json"))
    if not isinstance(splits, dict) or split not in splits:
        known = ", ".join(sorted(splits)) if isinstance(splits, dict) else "none"
        raise DataError(f"{splits_path}: no split '{split}'; splits: {known}")
    images = src.images or root / "images"
    items = []
    for pid in as_list(splits[split], splits_path, f"'{split}'"):
        where = f"problem '{pid}'"
        p = get(problems, str(pid), problems_path, "the file", dict)
        choices = [str(c) for c in get(p, "choices", problems_path, where, list)]
        hint = str(p.get("hint") or "")
        img_name = p.get("image")
        imgs = [_sqa_image(images, split, str(pid), img_name)] if img_name else []
        meta = {"options": format_options(choices), "hint": hint, "context": f"Context: {hint}\n" if hint else "",
                "subject": p.get("subject", ""), "has_image": bool(img_name), "n_choices": len(choices)}
        answer = get(p, "answer", problems_path, where, int)
        items.append(EvalItem(str(pid), get(p, "question", problems_path, where, str), imgs, answer, meta))
    return items


def _sqa_image(images: Path, split: str, pid: str, name: str) -> Path:
    nested, flat = images / split / pid / name, images / pid / name
    return flat if not nested.is_file() and flat.is_file() else nested


def score_scienceqa(items: Sequence[EvalItem], preds: Mapping[str, str]) -> Scores:
    hits = [scienceqa_correct(preds[it.id], it.target, it.meta["n_choices"]) for it in items]
    img = [h for it, h in zip(items, hits) if it.meta["has_image"]]
    return Scores("accuracy", {"accuracy": _percent(hits), "image_accuracy": _percent(img)},
                  {"subject": _percent_by(items, hits, "subject")})


# ----------------------------------------------------------------------------------------------- MMBench
def _read_tsv(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images exceed the default field limit
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read as TSV ({e})") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    for col in ("index", "question", "A", "B"):
        if col not in rows[0]:
            raise DataError(f"{path}: no column '{col}' (MMBench TSVs have index, question, hint, A-D, answer, "
                            f"category, image); columns: {', '.join(rows[0])}")
    return rows


def _missing(value: Any) -> bool:
    return value is None or str(value).strip().lower() in ("", "nan", "none")


def _image_bytes(row: dict[str, str], rows_by_index: dict[int, dict[str, str]], path: Path) -> bytes:
    value = row.get("image") or ""
    if len(value) <= 64 and value.strip().isdigit() and int(value) in rows_by_index:
        value = rows_by_index[int(value)].get("image") or ""
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        raise DataError(f"{path}: row index {row['index']}, field 'image' is not base64") from None


def load_mmbench(src: TaskSource) -> list[EvalItem]:
    path = require(src.questions or src.annotations or src.data, "--questions", "mmbench", "the MMBench TSV")
    rows = _read_tsv(path)
    try:
        by_index = {int(r["index"]): r for r in rows}
    except ValueError:
        raise DataError(f"{path}: field 'index' must be an integer in every row") from None
    circular = any(i >= CIRCULAR_OFFSET for i in by_index)
    items = []
    for index, row in by_index.items():
        choices = [row[c] for c in LETTERS[:8] if c in row and not _missing(row[c])]
        answer = _answer_index(row, len(choices), path)
        shifts = [0] if circular else range(len(choices))
        for k in shifts:
            rotated, ans = rotate_choices(choices, answer or 0, k)
            items.append(_mmbench_item(index + k * CIRCULAR_OFFSET, row, rotated, None if answer is None else ans,
                                       _image_bytes(row, by_index, path)))
    return items


def _answer_index(row: dict[str, str], n_choices: int, path: Path) -> int | None:
    if _missing(row.get("answer")):
        return None
    letter = row["answer"].strip()
    if letter not in LETTERS[:n_choices]:
        raise DataError(f"{path}: row index {row['index']}, field 'answer' is {letter!r}; expected one of "
                        f"{', '.join(LETTERS[:n_choices])} (the row has {n_choices} options)")
    return LETTERS.index(letter)


def _mmbench_item(index: int, row: dict[str, str], choices: list[str], answer: int | None, image: bytes) -> EvalItem:
    hint = "" if _missing(row.get("hint")) else row["hint"]
    meta = {"options": format_options(choices), "hint": hint, "context": f"{hint}\n" if hint else "",
            "category": row.get("category", ""), "l2_category": row.get("l2-category", ""),
            "choices": {LETTERS[i]: c for i, c in enumerate(choices)}, "main": index < CIRCULAR_OFFSET}
    target = None if answer is None else LETTERS[answer]
    return EvalItem(str(index), row["question"], [image], target, meta, group=str(circular_group(index)))


def score_mmbench(items: Sequence[EvalItem], preds: Mapping[str, str]) -> Scores:
    hits = [mmbench_letter(preds[it.id], it.meta["choices"]) == it.target for it in items]
    records = [ChoiceRecord(it.group or it.id, it.meta["main"], h) for it, h in zip(items, hits)]
    group_hits = circular_hits(records)
    mains = [it for it in items if it.meta["main"]]
    if not mains:
        raise VlmkitError("no MMBench question (index < 1e6) has a prediction; nothing to score")
    circ = [group_hits[it.group or it.id] for it in mains]
    vanilla = [h for it, h in zip(items, hits) if it.meta["main"]]
    return Scores("circular_accuracy", {"circular_accuracy": _percent(circ), "vanilla_accuracy": _percent(vanilla)},
                  {"category": _percent_by(mains, circ, "category"),
                   "l2_category": _percent_by(mains, circ, "l2_category")})
