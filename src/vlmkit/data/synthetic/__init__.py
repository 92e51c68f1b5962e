"""Deterministic synthetic datasets generated locally (PIL + the `captcha` package): no downloads needed.

Kinds (registry `SYNTHETIC`): `shapes` (count / color / position / grounding questions about simple shapes),
`caption` (captions of shapes scenes, for alignment) and `captcha` (read the text of a captcha image).
Sample `i` of seed `s` depends only on (kind, s, i, options): `generate(kind, n, s)` is reproducible, and a
held-out set is simply another seed.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from typing import Any

from ...errors import ConfigError
from ...registry import Registry
from ..sample import Sample
from .captcha import captcha_sample
from .caption import caption_sample
from .shapes import shapes_sample
from .writer import write_dataset

SampleFactory = Callable[..., Sample]
"""`factory(rng: random.Random, sample_id: str, **options) -> Sample`."""

SYNTHETIC: Registry[SampleFactory] = Registry("synthetic kind")
SYNTHETIC.add("shapes", shapes_sample)
SYNTHETIC.add("caption", caption_sample)
SYNTHETIC.add("captcha", captcha_sample)


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


__all__ = ["SYNTHETIC", "generate", "make_sample", "options_of", "write_dataset"]
