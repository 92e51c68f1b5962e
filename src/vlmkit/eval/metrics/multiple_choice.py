"""Multiple-choice answers: option-letter extraction (ScienceQA, MMBench) and MMBench CircularEval.

This module owns:
- `scienceqa_letter`: LLaVA's `eval_science_qa.py` rules: the whole answer is a letter; or it starts with
  "X. "; or the regex `The answer is ([A-Z]).` (any character after the letter, so a bare final
  "The answer is A" fails) matches exactly once. Anything else is "FAILED"; a letter past the number of
  choices counts as wrong.
- `mmbench_letter`: VLMEvalKit's exact-matching `can_infer` (no LLM judge): an option letter standing alone
  among the last words (after turning `.()[],:;!*#{}` into spaces), else "answer is X", else the one option
  whose text appears in the answer (answers longer than twice the options' text are not searched); "Z" when
  the model refuses or answers "Z"; None when nothing matches.
- CircularEval: MMBench repeats a question with its options rotated (index + k * 1e6 in the official TSVs);
  a question counts as correct only if every rotation is answered correctly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SCIENCEQA_OPTIONS = ("A", "B", "C", "D", "E")
CIRCULAR_OFFSET = 1_000_000
_SQA_PATTERN = re.compile(r"The answer is ([A-Z]).")
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
_SEPARATORS = ".()[],:;!*#{}"


def option_letters(n: int) -> list[str]:
    """The first `n` option letters."""
    return list(LETTERS[:n])


def format_options(choices: Sequence[str], letters: str = LETTERS) -> str:
    """"A. first\\nB. second" (LLaVA's option layout)."""
    return "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(choices))


# ----------------------------------------------------------------------------------------------- ScienceQA
def scienceqa_letter(prediction: str, options: Sequence[str] = SCIENCEQA_OPTIONS) -> str:
    """The letter LLaVA's ScienceQA evaluation reads from `prediction`, or "FAILED"."""
    if prediction in options:
        return prediction
    if len(prediction) >= 3 and prediction[0] in options and prediction[1:3] == ". ":
        return prediction[0]
    found = _SQA_PATTERN.findall(prediction)
    return found[0] if len(found) == 1 else "FAILED"


def scienceqa_correct(prediction: str, answer_index: int, n_choices: int) -> bool:
    """Whether the extracted letter is choice `answer_index` (letters past the choices never are)."""
    letter = scienceqa_letter(prediction)
    valid = SCIENCEQA_OPTIONS[:n_choices]
    return letter in valid and valid.index(letter) == answer_index


# ------------------------------------------------------------------------------------------------- MMBench
def _count_choices(words: Sequence[str], choices: Sequence[str]) -> int:
    return sum(1 for c in choices if c in words)


def mmbench_option(answer: str, choices: Mapping[str, str]) -> str | None:
    """VLMEvalKit `can_infer_option`: the option letter standing in `answer`, "Z", or None."""
    if "Failed to obtain answer via API" in answer:
        return None
    if any(r in answer for r in _REFUSALS):
        return "Z"
    text = answer
    for c in _SEPARATORS:
        text = text.replace(c, " ")
    words = [w.strip() for w in text.split()]
    count = _count_choices(words, list(choices))
    if count == 1:
        for ch in choices:
            if ch in words and words.index(ch) > len(words) - 5:
                return ch
    elif count == 0 and _count_choices(words, ["Z", ""]) == 1:
        return "Z"
    m = _VERBOSE_ANSWER.search(answer or "")
    if m and m.group(1).upper() in choices:
        return m.group(1).upper()
    return None


def mmbench_text(answer: str, choices: Mapping[str, str]) -> str | None:
    """VLMEvalKit `can_infer_text`: the only option whose text occurs in the (short) answer, or None."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    found = [k for k, v in choices.items() if str(v).lower() in answer]
    return found[0] if len(found) == 1 else None


def mmbench_letter(answer: str, choices: Mapping[str, str]) -> str | None:
    """VLMEvalKit `can_infer` (exact matching): option letter first, then option text."""
    answer = str(answer)
    return mmbench_option(answer, choices) or mmbench_text(answer, choices)


# ---------------------------------------------------------------------------------------------- circular
def circular_group(index: int) -> int:
    """The question an MMBench row belongs to: `index % 1e6` (rotations are index + k * 1e6)."""
    return int(index % CIRCULAR_OFFSET)


def rotate_choices(choices: Sequence[str], answer: int, shift: int) -> tuple[list[str], int]:
    """Options rotated left by `shift` (LLaVA `--all-rounds`) and the new position of the answer."""
    n = len(choices)
    return [choices[(i + shift) % n] for i in range(n)], (answer - shift) % n


@dataclass(frozen=True)
class ChoiceRecord:
    """One answered row: its group (the original question), whether it is that question's first copy, hit."""

    group: str
    main: bool
    correct: bool


def circular_hits(records: Sequence[ChoiceRecord]) -> dict[str, bool]:
    """{group: every row of the group correct} (CircularEval), for the groups that have a main row."""
    hits: dict[str, bool] = {r.group: True for r in records if r.main}
    for r in records:
        if r.group in hits and not r.correct:
            hits[r.group] = False
    return hits
