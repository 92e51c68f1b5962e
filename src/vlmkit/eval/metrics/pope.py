"""POPE (object hallucination) yes/no scoring, as the official `evaluate.py` (AoiDragon/POPE) does it.

This module owns reading "yes"/"no" from an answer and the counts: only the text before the first period is
kept, commas are deleted, it is split on single spaces, and the answer is "no" iff one of the words is
exactly "No", "not" or "no" (so "NO" or "no!" read as yes); a label other than "no" is "yes". "yes" is the
positive class: accuracy, precision, recall, F1 and the share of "yes" answers. Where the official script
divides by zero (no positive predictions) the value here is 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass


def pope_answer(text: str) -> str:
    """'yes' or 'no', by the official rule."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_label(label: str) -> int:
    """1 for yes (anything but "no"), 0 for no."""
    return 0 if label == "no" else 1


@dataclass(frozen=True)
class PopeScores:
    """Confusion counts and the derived scores (fractions, as the official script prints them)."""

    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def pope_scores(predictions: Sequence[str], labels: Sequence[str]) -> PopeScores:
    """Scores of answer texts against "yes"/"no" labels (same length)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    preds = [0 if pope_answer(p) == "no" else 1 for p in predictions]
    golds = [pope_label(g) for g in labels]
    tp = sum(1 for p, g in zip(preds, golds) if p == 1 and g == 1)
    fp = sum(1 for p, g in zip(preds, golds) if p == 1 and g == 0)
    tn = sum(1 for p, g in zip(preds, golds) if p == 0 and g == 0)
    fn = sum(1 for p, g in zip(preds, golds) if p == 0 and g == 1)
    precision = _ratio(float(tp), float(tp + fp))
    recall = _ratio(float(tp), float(tp + fn))
    f1 = _ratio(2 * precision * recall, precision + recall)
    accuracy = _ratio(tp + tn, tp + tn + fp + fn)
    yes_ratio = _ratio(preds.count(1), len(preds))
    return PopeScores(tp, fp, tn, fn, accuracy, precision, recall, f1, yes_ratio)
