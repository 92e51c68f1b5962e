"""Checks a `Sample` must pass before training: roles and turn order, empty turns, `<image>` markers vs images,
and image files that exist and decode. Owns `Problem` (one finding, named by file and sample) and `LoadReport`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..constants import IMAGE_TOKEN
from .sample import Sample

ROLES = ("system", "user", "assistant")
MAX_LISTED = 10
"""How many problems an error message lists before summarising the rest as a count."""


@dataclass
class Problem:
    """One thing wrong with one sample: the file, where in it (index / line / file name), its id and what."""

    file: Path
    where: str
    message: str
    sample_id: str | None = None

    def __str__(self) -> str:
        who = f"sample '{self.sample_id}' ({self.where})" if self.sample_id is not None else self.where
        return f"{self.file}: {who}: {self.message}"


@dataclass
class LoadReport:
    """What `load_samples` did: the format used, how many samples were loaded or skipped, and why."""

    path: Path
    format: str
    loaded: int = 0
    skipped: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (f"{self.path} ({self.format}): {self.loaded} samples loaded, {self.skipped} skipped, "
                f"{len(self.problems)} problems")

    def describe(self, limit: int | None = MAX_LISTED) -> str:
        """The summary line, then the problems (the first `limit`; all when None)."""
        shown = self.problems if limit is None else self.problems[:limit]
        lines = [self.summary(), *(f"  - {p}" for p in shown)]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


class ImageChecker:
    """Opens each image file once (PIL `verify()`) and remembers the verdict: None when fine, else why not."""

    def __init__(self) -> None:
        self._seen: dict[Path, str | None] = {}

    def __call__(self, image: Any) -> str | None:
        if isinstance(image, Image.Image):
            return None
        if not isinstance(image, (str, Path)):
            return f"image entry {image!r} is not a file path"
        path = Path(image)
        if path not in self._seen:
            self._seen[path] = _check_file(path)
        return self._seen[path]


def _check_file(path: Path) -> str | None:
    if not path.is_file():
        return f"image file not found: {path}"
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"image file is unreadable: {path} ({e})"
    return None


def validate_sample(sample: Sample, check_image: ImageChecker | None = None) -> list[str]:
    """Everything wrong with `sample` (empty when it is fit for training)."""
    problems = _check_turns(sample.messages)
    problems += _check_markers(sample.messages, len(sample.images))
    checker = check_image or ImageChecker()
    for image in sample.images:
        reason = checker(image)
        if reason:
            problems.append(reason)
    return problems


def _check_turns(messages: list[dict[str, Any]]) -> list[str]:
    if not messages:
        return ["the conversation is empty"]
    problems: list[str] = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            problems.append(f"turn {i} has role '{role}'; allowed: {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            problems.append(f"turn {i} ({role}) is empty")
    if problems:
        return problems
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        problems.append("a system turn may only come first")
    turns = [r for r in roles if r != "system"]
    if "assistant" not in turns:
        problems.append("there is no assistant turn (nothing to learn from)")
    expected = ["user", "assistant"] * len(turns)
    bad = next((i for i, r in enumerate(turns) if r != expected[i]), None)
    if bad is not None:
        problems.append(f"turns must alternate user/assistant starting with user; turn {bad} is '{turns[bad]}'")
    return problems


def _check_markers(messages: list[dict[str, Any]], n_images: int) -> list[str]:
    contents = [m.get("content") if isinstance(m.get("content"), str) else "" for m in messages]
    markers = sum(c.count(IMAGE_TOKEN) for c in contents)
    problems = []
    if any(IMAGE_TOKEN in c for m, c in zip(messages, contents) if m.get("role") == "assistant"):
        problems.append(f"an assistant turn contains '{IMAGE_TOKEN}'")
    if markers and markers != n_images:
        problems.append(f"the text has {markers} '{IMAGE_TOKEN}' markers but the sample has {n_images} images")
    return problems
