"""Deterministic synthetic datasets generated locally (PIL + the `captcha` package): no downloads needed.

Kinds (registry `SYNTHETIC`): `shapes` (count / color / position / grounding questions about simple shapes),
`caption` (captions of shapes scenes, for alignment), `captcha` (read the text of a captcha image) and
`scene_text` (the shapes questions about a scene written out as text: no image).
Sample `i` of seed `s` depends only on (kind, s, i, options): `generate(kind, n, s)` is reproducible, and a
held-out set is simply another seed.
"""

from __future__ import annotations

import bisect
import inspect
import random
from collections.abc import Callable, Sequence
from typing import Any, overload

from ...errors import ConfigError
from ...registry import Registry
from ..sample import Sample
from .captcha import captcha_sample
from .caption import caption_sample
from .scene_text import scene_text_sample
from .shapes import shapes_sample
from .writer import write_dataset

SampleFactory = Callable[..., Sample]
"""`factory(rng: random.Random, sample_id: str, **options) -> Sample`."""

SYNTHETIC: Registry[SampleFactory] = Registry("synthetic kind")
SYNTHETIC.add("shapes", shapes_sample)
SYNTHETIC.add("caption", caption_sample)
SYNTHETIC.add("captcha", captcha_sample)
SYNTHETIC.add("scene_text", scene_text_sample)


def options_of(kind: str) -> list[str]:
    """The option names `generate(kind, ...)` accepts."""
    params = list(inspect.signature(SYNTHETIC.get(kind)).parameters)
    return params[2:]


def make_sample(kind: str, index: int, seed: int = 0, **options: Any) -> Sample:
    """Sample `index` of the dataset (kind, seed, options); id `<kind>-<seed>-<index:06d>`."""
    factory = SYNTHETIC.get(kind)
    allowed = options_of(kind)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for '{kind}'; allowed: {', '.join(allowed)}")
    rng = random.Random(f"vlmkit-synthetic:{kind}:{seed}:{index}")
    return factory(rng, f"{kind}-{seed}-{index:06d}", **options)


def generate(kind: str, n: int, seed: int = 0, **options: Any) -> list[Sample]:
    """`n` samples of `kind` with in-memory PIL images (fast enough to build eval sets on the fly)."""
    if n < 1:
        raise ConfigError(f"n={n}; generate at least one sample")
    return [make_sample(kind, i, seed, **options) for i in range(n)]


class SyntheticSet(Sequence[Sample]):
    """`n` samples of (kind, seed, options) made on access: sample `i` equals `make_sample(kind, i, seed, ...)`.

    Training on hundreds of thousands of generated samples then costs no memory and no start-up time, and a
    resumed run sees the same pixels.
    """

    def __init__(self, kind: str, n: int, seed: int = 0, **options: Any) -> None:
        if n < 1:
            raise ConfigError(f"n={n}; generate at least one sample")
        make_sample(kind, 0, seed, **options)  # unknown kind / options fail here, not mid-training
        self.kind, self.n, self.seed, self.options = kind, n, seed, options

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> Sample: ...
    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...
    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        if not -self.n <= index < self.n:
            raise IndexError(f"sample {index} of {self.n}")
        return make_sample(self.kind, index % self.n, self.seed, **self.options)


class ChainedSamples(Sequence[Sample]):
    """Several sample sequences read as one, in order (without copying them)."""

    def __init__(self, parts: Sequence[Sequence[Sample]]) -> None:
        self.parts = [p for p in parts if len(p)]
        self.ends: list[int] = []
        total = 0
        for p in self.parts:
            total += len(p)
            self.ends.append(total)

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        part = bisect.bisect_right(self.ends, index)
        return self.parts[part][index - (self.ends[part - 1] if part else 0)]


__all__ = ["SYNTHETIC", "ChainedSamples", "SyntheticSet", "generate", "make_sample", "options_of",
           "write_dataset"]
