"""Captcha images (the CogVLM fine-tuning demo task) rendered offline with the `captcha` package.

The text is drawn from digits and capital letters without the confusable 0/O/1/I. The `captcha` package draws
its noise from the `secrets` module (older versions: `random`), which cannot be seeded; while rendering we swap
in a seeded generator so that the same (seed, index) always gives the same pixels.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from PIL import Image

from ...constants import IMAGE_TOKEN
from ...errors import ConfigError
from ..sample import Sample

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
"""Digits and capital letters without 0, O, 1 and I."""
PROMPT = "What is the text in the image?"
_LOCK = threading.Lock()


class _SeededSource(random.Random):
    """A seeded `random.Random` that also answers the `secrets` calls the captcha package makes."""

    def randbelow(self, n: int) -> int:
        return self.randrange(n)

    def randbits(self, k: int) -> int:
        return self.getrandbits(k)


@contextmanager
def _seeded_captcha(rng: random.Random) -> Iterator[None]:
    import captcha.image as module

    source = _SeededSource(rng.getrandbits(64))
    names = [n for n in ("secrets", "random") if hasattr(module, n)]
    with _LOCK:
        saved = {n: getattr(module, n) for n in names}
        try:
            for n in names:
                setattr(module, n, source)
            yield
        finally:
            for n, v in saved.items():
                setattr(module, n, v)


@lru_cache(maxsize=8)
def _renderer(width: int, height: int):
    from captcha.image import ImageCaptcha

    return ImageCaptcha(width=width, height=height)


def render_captcha(text: str, rng: random.Random, width: int = 160, height: int = 60) -> Image.Image:
    """`text` as a captcha image of width x height px; deterministic given the state of `rng`."""
    with _seeded_captcha(rng):
        return _renderer(width, height).generate_image(text).convert("RGB")


def random_text(rng: random.Random, length: int = 4) -> str:
    if length < 1:
        raise ConfigError(f"captcha length={length}; use 1 or more characters")
    return "".join(rng.choice(ALPHABET) for _ in range(length))


def captcha_sample(
    rng: random.Random, sample_id: str, length: int = 4, width: int = 160, height: int = 60,
    image_size: int | None = None,
) -> Sample:
    """One captcha image and its text as the answer. `image_size` (if given) sets the width; height = 3/8 of it."""
    if image_size is not None:
        width, height = image_size, max(16, round(image_size * 3 / 8))
    text = random_text(rng, length)
    image = render_captcha(text, rng, width, height)
    messages = [{"role": "user", "content": f"{IMAGE_TOKEN}\n{PROMPT}"}, {"role": "assistant", "content": text}]
    meta: dict[str, object] = {"task": "captcha", "answer": text, "image_size": [width, height]}
    return Sample(sample_id, messages, [image], meta)
