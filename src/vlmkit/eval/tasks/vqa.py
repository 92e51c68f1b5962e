"""Open-ended VQA tasks in their official file formats: VQAv2, TextVQA, VizWiz, GQA.

This module owns reading those files into `EvalItem`s and turning per-question scores into the official
reports (overall, per question type, per answer type; GQA: binary / open and per structural / semantic type).
Formats:
- VQAv2: `--questions v2_OpenEnded_mscoco_*_questions.json` ({"questions": [{question_id, image_id,
  question}], "data_subtype"}) and `--annotations v2_mscoco_*_annotations.json` ({"annotations":
  [{question_id, question_type, answer_type, answers: [{answer}]}]}); images `COCO_<subtype>_<id:012>.jpg`.
- TextVQA: `--annotations TextVQA_0.5.1_val.json` ({"data": [{question_id, question, image_id, answers}]});
  images `<image_id>.jpg`.
- VizWiz: `--annotations val.json` ([{image, question, answers: [{answer}], answer_type}]); the id is `image`.
- GQA: `--questions testdev_balanced_questions.json` ({qid: {imageId, question, answer, types, isBalanced}});
  images `<imageId>.jpg`. Only balanced questions count, as in GQA's `eval.py`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...data.sample import DataError
from ...errors import VlmkitError
from ..metrics.exact import gqa_match
from ..metrics.vqa import textvqa_accuracy, vizwiz_accuracy, vqav2_accuracy
from .base import EvalItem, Scores, TaskSource, answers_of, as_list, get, image_path, read_json, require


def _percent_by(items: Sequence[EvalItem], values: Sequence[float], key: str) -> dict[str, float]:
    """100 * sum / n of `values` per `item.meta[key]` (official summation order)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for item, v in zip(items, values):
        if key in item.meta:
            groups[str(item.meta[key])].append(v)
    return {k: 100 * float(sum(vs)) / len(vs) for k, vs in groups.items()}


def _accuracy_scores(items: Sequence[EvalItem], preds: Mapping[str, str],
                     per_question: Callable[[str, Sequence[str]], float], breakdowns: Sequence[str]) -> Scores:
    values = [per_question(preds[it.id], it.target) for it in items]
    overall = 100 * float(sum(values)) / len(values)
    return Scores("accuracy", {"accuracy": overall},
                  {key: _percent_by(items, values, key) for key in breakdowns})


# ------------------------------------------------------------------------------------------------- VQAv2
def load_vqav2(src: TaskSource) -> list[EvalItem]:
    if src.questions is None and src.annotations is None:
        raise VlmkitError("task 'vqav2' needs --questions (to ask) and/or --annotations (to score)")
    anns: dict[str, dict[str, Any]] = {}
    if src.annotations is not None:
        path = require(src.annotations, "--annotations", "vqav2", "the VQAv2 annotations JSON")
        for i, a in enumerate(as_list(get(read_json(path), "annotations", path, "the file"), path, "'annotations'")):
            where = f"annotation {i}"
            anns[str(get(a, "question_id", path, where))] = {
                "answers": answers_of(a, path, where), "question_type": get(a, "question_type", path, where, str),
                "answer_type": get(a, "answer_type", path, where, str)}
    if src.questions is None:
        return [EvalItem(qid, "", [], a["answers"], {k: a[k] for k in ("question_type", "answer_type")})
                for qid, a in anns.items()]
    path = require(src.questions, "--questions", "vqav2", "the VQAv2 questions JSON")
    data = read_json(path)
    subtype = data.get("data_subtype", "val2014") if isinstance(data, dict) else "val2014"
    items = []
    for i, q in enumerate(as_list(get(data, "questions", path, "the file"), path, "'questions'")):
        where = f"question {i}"
        qid = str(get(q, "question_id", path, where))
        image_id = get(q, "image_id", path, where, int)
        img = image_path(src.images, f"COCO_{subtype}_{image_id:012d}.jpg", f"{image_id:012d}.jpg")
        a = anns.get(qid)
        meta = {"image_id": image_id, **({k: a[k] for k in ("question_type", "answer_type")} if a else {})}
        items.append(EvalItem(qid, get(q, "question", path, where, str), [img] if img else [],
                              a["answers"] if a else None, meta))
    if anns and not any(it.target is not None for it in items):
        raise DataError(f"{src.annotations}: none of its question ids appear in {path}")
    return items


def score_vqav2(items: Sequence[EvalItem], preds: Mapping[str, str]) -> Scores:
    """Official `vqaEval.py` accuracy: overall, perQuestionType, perAnswerType (percent, unrounded)."""
    return _accuracy_scores(items, preds, vqav2_accuracy, ("question_type", "answer_type"))


# ----------------------------------------------------------------------------------------------- TextVQA
def load_textvqa(src: TaskSource) -> list[EvalItem]:
    path = require(src.annotations or src.questions, "--annotations", "textvqa", "TextVQA_0.5.1_val.json")
    items = []
    for i, q in enumerate(as_list(get(read_json(path), "data", path, "the file"), path, "'data'")):
        where = f"data[{i}]"
        image_id = str(get(q, "image_id", path, where))
        img = image_path(src.images, f"{image_id}.jpg", f"{image_id}.png")
        target = answers_of(q, path, where) if "answers" in q else None
        if target is not None and len(target) != 10:
            raise DataError(f"{path}: {where}, field 'answers' has {len(target)} answers; TextVQA has 10")
        items.append(EvalItem(str(get(q, "question_id", path, where)), get(q, "question", path, where, str),
                              [img] if img else [], target, {"image_id": image_id}))
    return items


def score_textvqa(items: Sequence[EvalItem], preds: Mapping[str, str]) -> Scores:
    """MMF/EvalAI TextVQA accuracy, percent (100 * mean, as LLaVA prints it)."""
    values = [textvqa_accuracy(preds[it.id], it.target) for it in items]
    return Scores("accuracy", {"accuracy": 100.0 * (sum(values) / len(values))})


# ------------------------------------------------------------------------------------------------ VizWiz
def load_vizwiz(src: TaskSource) -> list[EvalItem]:
    path = require(src.annotations or src.questions, "--annotations", "vizwiz", "VizWiz val.json")
    items = []
    for i, q in enumerate(as_list(read_json(path), path, "the file")):
        where = f"record {i}"
        name = get(q, "image", path, where, str)
        img = image_path(src.images, name)
        target = answers_of(q, path, where) if "answers" in q else None
        meta = {"answer_type": q["answer_type"]} if "answer_type" in q else {}
        items.append(EvalItem(name, get(q, "question", path, where, str), [img] if img else [], target, meta))
    return items


def score_vizwiz(items: Sequence[EvalItem], preds: Mapping[str, str]) -> Scores:
    """The VizWiz script's accuracy: overall and per answer type (percent)."""
    return _accuracy_scores(items, preds, vizwiz_accuracy, ("answer_type",))


# --------------------------------------------------------------------------------------------------- GQA
def load_gqa(src: TaskSource) -> list[EvalItem]:
    path: Path = require(src.questions or src.annotations, "--questions", "gqa", "e.g. testdev_balanced_questions.json")
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {{question id: question}}, got {type(data).__name__}")
    items = []
    for qid, q in data.items():
        where = f"question '{qid}'"
        image = str(get(q, "imageId", path, where))
        img = image_path(src.images, f"{image}.jpg")
        types = q.get("types") or {}
        meta = {"structural": types.get("structural", ""), "semantic": types.get("semantic", ""),
                "balanced": bool(q.get("isBalanced", True))}
        items.append(EvalItem(str(qid), get(q, "question", path, where, str), [img] if img else [],
                              q.get("answer"), meta))
    return items


def score_gqa(items: Sequence[EvalItem], preds: Mapping[str, str]) -> Scores:
    """GQA `eval.py` accuracy over balanced questions, binary / open, per structural and semantic type."""
    kept = [it for it in items if it.meta.get("balanced", True)]
    if not kept:
        raise VlmkitError("no balanced GQA question has a prediction; nothing to score")
    values = [1.0 if gqa_match(preds[it.id], str(it.target)) else 0.0 for it in kept]

    def avg(vs: list[float]) -> float:
        return float(sum(vs)) / len(vs) * 100 if vs else 0.0

    binary = [v for it, v in zip(kept, values) if it.meta["structural"] != "query"]
    open_ = [v for it, v in zip(kept, values) if it.meta["structural"] == "query"]
    by = {key: {k: avg([v for it, v in zip(kept, values) if it.meta[key] == k])
                for k in sorted({it.meta[key] for it in kept})} for key in ("structural", "semantic")}
    return Scores("accuracy", {"accuracy": avg(values), "binary": avg(binary), "open": avg(open_)}, by)
