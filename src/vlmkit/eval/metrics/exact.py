"""Exact-match scoring: GQA (the official `eval.py` after LLaVA's answer conversion), captcha and custom tasks.

This module owns:
- `gqa_match`: the prediction with trailing periods stripped and lower-cased (LLaVA's
  `convert_gqa_for_eval.py`) equal to the answer (GQA's `eval.py` compares strings exactly);
- `exact_match`: equal after stripping surrounding whitespace (captcha, generic tasks; case matters);
- `relaxed_match`: equal after lower-casing, collapsing whitespace and dropping a trailing period, reported
  beside exact match for custom tasks.
"""

from __future__ import annotations

import re

_SPACES = re.compile(r"\s+")


def gqa_prediction(text: str) -> str:
    """LLaVA's GQA conversion: `text.rstrip('.').lower()`."""
    return text.rstrip(".").lower()


def gqa_match(prediction: str, answer: str) -> bool:
    return gqa_prediction(prediction) == answer


def exact_match(prediction: str, answer: str) -> bool:
    return prediction.strip() == str(answer).strip()


def relax(text: str) -> str:
    """Lower-case, single spaces, no surrounding whitespace, no trailing period."""
    return _SPACES.sub(" ", str(text)).strip().lower().rstrip(".").strip()


def relaxed_match(prediction: str, answer: str) -> bool:
    return relax(prediction) == relax(answer)
