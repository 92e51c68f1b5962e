"""What the web demo does, without any UI: one `ChatSession` per browser tab, turns, regenerate, boxes, adapters.

`ModelPool` loads the model directory with the chosen adapter (the task LoRA picker) and keeps the current one;
`DemoChat` wraps a `ChatSession` (the same session machinery as `vlmkit chat`): a newly uploaded image is
attached to the next message only, text-only turns follow freely, `regenerate` rewinds the session to before the
last turn and answers it again, and the boxes of each answer are drawn on the conversation's latest image.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..generation import ChatSession, GenerationConfig, draw_boxes, parse_boxes
from ..models.vlm import VLMModel
from ..processing import VLMProcessor

Loader = Callable[[str | None], tuple[VLMModel, VLMProcessor]]
ADAPTER_CONFIG = "adapter_config.json"
MIN_DISPLAY_SIDE = 256


def list_adapters(model_dir: str | Path | None) -> list[str]:
    """Names of the adapters saved in `<model_dir>/adapters/<name>/` (sorted; [] when none)."""
    if model_dir is None:
        return []
    root = Path(model_dir).expanduser() / "adapters"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / ADAPTER_CONFIG).is_file())


class ModelPool:
    """The model with the selected adapter, loaded on first use and reloaded when the adapter changes."""

    def __init__(self, loader: Loader, adapters: list[str] | None = None, adapter: str | None = None) -> None:
        self.loader = loader
        self.adapters = list(adapters or [])
        self.default = adapter if adapter is not None else (self.adapters[0] if self.adapters else None)
        self._lock = threading.Lock()
        self._current: tuple[str | None, VLMModel, VLMProcessor] | None = None

    def get(self, adapter: str | None = None) -> tuple[VLMModel, VLMProcessor]:
        name = adapter if adapter is not None else self.default
        with self._lock:
            if self._current is None or self._current[0] != name:
                self._current = None  # free the previous model before loading the next
                self._current = (name, *self.loader(name))
            return self._current[1], self._current[2]


def sampling(max_new_tokens: float, temperature: float, top_p: float, top_k: float,
             repetition_penalty: float) -> GenerationConfig:
    """Slider values -> config; temperature 0 means greedy decoding."""
    sample = temperature > 0
    return GenerationConfig(max_new_tokens=int(max_new_tokens), do_sample=sample,
                            temperature=float(temperature) if sample else 1.0, top_p=float(top_p) if sample else 1.0,
                            top_k=int(top_k) if sample else 0, repetition_penalty=float(repetition_penalty))


def image_key(image: Image.Image | None) -> str | None:
    if image is None:
        return None
    return hashlib.sha1(image.convert("RGB").tobytes()).hexdigest() + f"{image.size}"


@dataclass
class Turn:
    """What regenerate needs: the session's size before the turn, the text and the image sent with it."""

    history_len: int
    images_len: int
    text: str
    image: Image.Image | None


@dataclass
class DemoChat:
    """One browser tab's conversation."""

    session: ChatSession
    adapter: str | None = None
    last_image: str | None = None  # key of the image already in the conversation
    turns: list[Turn] = field(default_factory=list)

    @classmethod
    def new(cls, pool: ModelPool, adapter: str | None) -> DemoChat:
        model, processor = pool.get(adapter)
        return cls(ChatSession(model, processor), adapter)

    def ask(self, text: str, image: Image.Image | None, config: GenerationConfig) -> Iterator[str]:
        """Stream the answer to `text`; `image` is attached when it is not the one already sent."""
        key = image_key(image)
        new_image = image if image is not None and key != self.last_image else None
        turn = Turn(len(self.session.history), len(self.session.images), text, new_image)
        yield from self.session.stream(text, new_image, config)
        self.turns.append(turn)
        if new_image is not None:
            self.last_image = key

    def regenerate(self, config: GenerationConfig) -> Iterator[str]:
        """Answer the last question again (a new sample when sampling); nothing when there is no turn yet."""
        if not self.turns:
            return
        turn = self.turns.pop()
        del self.session.history[turn.history_len:]
        del self.session.images[turn.images_len:]
        yield from self.session.stream(turn.text, turn.image, config)
        self.turns.append(turn)

    def clear(self) -> None:
        self.session.clear()
        self.turns.clear()
        self.last_image = None

    @property
    def answer(self) -> str:
        result = self.session.last_result
        return result.text if result is not None else ""

    def boxes_image(self) -> Image.Image | None:
        """The latest image with the last answer's boxes drawn; None when there is no image or no box."""
        if not self.session.images:
            return None
        image = self.session.images[-1]
        if not isinstance(image, Image.Image):
            return None
        scale = max(1, -(-MIN_DISPLAY_SIDE // max(image.size)))  # small images are enlarged to be seen
        if scale > 1:
            image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
        boxes = parse_boxes(self.answer, *image.size)
        return draw_boxes(image, boxes, line_width=max(2, max(image.size) // 128)) if boxes else None
