"""What an evaluation task is: items, where they come from, how a prompt is made, how answers are scored.

This module owns the shared records (`EvalItem`, `TaskSource`, `Task`, `Scores`), prompt rendering from a
template (a format string over `{question}` and the item's text fields), and the file helpers every loader
uses so that a bad file fails with an error naming the file, the record and the field.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...data.sample import DataError
from ...errors import VlmkitError

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."


@dataclass
class EvalItem:
    """One question to ask.

    `images` are paths, raw bytes or PIL images; `target` is the ground truth in the shape the task's scorer
    expects (None when the split has no answers: predictions are then written but not scored); `meta` holds
    text fields prompt templates may use (e.g. "options", "context") and the keys of per-type breakdowns;
    `group` ties items that are scored together (MMBench rotations): subsets keep a group whole.
    """

    id: str
    question: str
    images: list[Any] = field(default_factory=list)
    target: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    group: str | None = None


@dataclass(frozen=True)
class TaskSource:
    """The files a loader reads (CLI flags of the same names); `count` is the size of generated tasks."""

    questions: Path | None = None
    annotations: Path | None = None
    images: Path | None = None
    data: Path | None = None
    split: str | None = None
    count: int | None = None


@dataclass
class Scores:
    """A task's results: headline metrics, the name of the main one, and per-type breakdowns."""

    main: str
    metrics: dict[str, Any]
    breakdowns: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"main_metric": self.main, "metrics": self.metrics, "breakdowns": self.breakdowns, **self.notes}


Loader = Callable[[TaskSource], list[EvalItem]]
Scorer = Callable[[Sequence[EvalItem], Mapping[str, str]], Scores]


@dataclass(frozen=True)
class Task:
    """A benchmark: its loader, scorer, default prompt template (data; `--prompt` overrides it) and limits."""

    name: str
    description: str
    load: Loader
    score: Scorer
    prompt: str
    max_new_tokens: int = 16
    inputs: str = ""
    """How to point the loader at the files, shown in errors and in `--help`."""
    unit: str = "percent"
    """Unit of the headline metrics, the official tool's own (counts and `mean_iou` excepted)."""
    needs_images: bool = True
    """Every item must have an image to be asked (False: text-only items are allowed)."""


# ------------------------------------------------------------------------------------------------ prompts
class _Fields(dict):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def prompt_fields(item: EvalItem) -> dict[str, str]:
    """The values a template can use: `question` and every text / number field of `item.meta`."""
    fields = {k: str(v) for k, v in item.meta.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)}
    fields["question"] = item.question
    return fields


def render_prompt(template: str, item: EvalItem) -> str:
    """Fill `template` (str.format syntax; write literal braces as {{ }}) for one item."""
    fields = prompt_fields(item)
    try:
        return template.format_map(_Fields(fields))
    except KeyError as e:
        raise VlmkitError(f"the prompt template uses {{{e.args[0]}}}, which this task's items do not have; "
                          f"available: {', '.join('{' + k + '}' for k in sorted(fields))}") from None
    except (ValueError, IndexError) as e:
        raise VlmkitError(f"the prompt template {template!r} is not a valid format string ({e}); write "
                          "literal braces as {{ and }}") from None


def check_template(template: str) -> None:
    """Fail early on a template that is not a format string with named fields."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise VlmkitError(f"the prompt template {template!r} is not a valid format string ({e})") from None
    if any(n == "" or n.isdigit() for n in names):
        raise VlmkitError(f"the prompt template {template!r} has a positional field; use names like {{question}}")


# -------------------------------------------------------------------------------------------- file helpers
def require(path: Path | None, flag: str, task: str, what: str) -> Path:
    """`path`, which must exist, or an error telling which flag to pass."""
    if path is None:
        raise VlmkitError(f"task '{task}' needs {flag} ({what})")
    if not Path(path).exists():
        raise VlmkitError(f"{flag} {path}: no such file or directory ({what})")
    return Path(path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON Lines file (blank lines skipped); a JSON array is accepted too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if text.lstrip().startswith("["):
        return as_list(read_json(path), path, "the file")
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {i}: not valid JSON ({e})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}, line {i}: expected a JSON object, got {type(rec).__name__}")
        out.append(rec)
    return out


def as_list(value: Any, path: Path, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise DataError(f"{path}: {what} must be a JSON list, got {type(value).__name__}")
    return value


def get(record: Any, key: str, path: Path, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """`record[key]`, or a DataError naming the file, the record and the field (and the expected type)."""
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where} must be a JSON object, got {type(record).__name__}")
    if key not in record:
        raise DataError(f"{path}: {where} has no field '{key}'")
    value = record[key]
    if kind is not None and not isinstance(value, kind):
        names = "/".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataError(f"{path}: {where}, field '{key}' must be {names}, got {type(value).__name__}")
    return value


def answers_of(record: dict[str, Any], path: Path, where: str) -> list[str]:
    """The human answers of a VQA-style record: a list of {"answer": str} (or of strings)."""
    answers = get(record, "answers", path, where, list)
    out = []
    for j, a in enumerate(answers):
        value = a.get("answer") if isinstance(a, dict) else a
        if not isinstance(value, str):
            raise DataError(f"{path}: {where}, field 'answers[{j}]' must be a string or {{\"answer\": str}}")
        out.append(value)
    return out


def image_path(images: Path | None, *names: str) -> Path | None:
    """The first of `images/name` that exists, else the first candidate (None without an image folder)."""
    if images is None:
        return None
    candidates = [images / n for n in names]
    return next((c for c in candidates if c.is_file()), candidates[0])


def by_key(records: Iterable[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {str(r[key]): r for r in records}
