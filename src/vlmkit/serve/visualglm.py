"""The VisualGLM-6B legacy API: `POST /` with {"text", "image" (base64 or ""), "history": [[q, a], ...]}.

Answers {"result", "history" (with the new turn appended), "status": 200, "time": "YYYY-MM-DD HH:MM:SS"}; the
image belongs to the whole conversation (VisualGLM attaches it to the first turn). Optional sampling
overrides: max_length (prompt + answer, as in VisualGLM), max_new_tokens, temperature, top_p, top_k,
repetition_penalty, seed. Boxes in the answer come back in the `vlmkit` extension field.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..generation import GenerationConfig
from ..templates import Message
from .errors import bad_request
from .images import b64decode, data_url_bytes, decode_image
from .protocol import int_field, sampling_config
from .settings import ServeSettings


@dataclass
class LegacyRequest:
    text: str
    history: list[list[str]]
    messages: list[Message]
    images: list[Image.Image]
    config: GenerationConfig
    max_tokens: int | None


def parse_legacy_request(body: Any, settings: ServeSettings) -> LegacyRequest:
    """Validate the legacy body (blocking: decodes the image)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise bad_request("'text' is required (a non-empty string)", "text")
    history = _history(body.get("history"))
    images = _image(body.get("image"), settings)
    messages: list[Message] = []
    for q, a in history:
        messages += [Message("user", q), Message("assistant", a)]
    messages.append(Message("user", text))
    config = sampling_config(body)
    max_length = int_field(body, "max_length", None, lo=1)
    if max_length is not None:
        config = config.replace(max_length=max_length)
    max_tokens = int_field(body, "max_new_tokens", None, lo=1)
    return LegacyRequest(text, history, messages, images, config, max_tokens)


def _history(raw: Any) -> list[list[str]]:
    if raw is None:
        return []
    ok = isinstance(raw, list) and all(
        isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in raw)
    if not ok:
        raise bad_request("'history' must be a list of [question, answer] string pairs", "history")
    return [list(t) for t in raw]


def _image(raw: Any, settings: ServeSettings) -> list[Image.Image]:
    if raw is None or raw == "":
        return []
    if not isinstance(raw, str):
        raise bad_request("'image' must be a base64 string (or empty)", "image")
    data = data_url_bytes(raw, "image") if raw.startswith("data:") else b64decode(raw, "image")
    return [decode_image(data, settings.max_image_pixels, "image")]


def legacy_response(req: LegacyRequest, answer: str, extension: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"result": answer, "history": req.history + [[req.text, answer]], "status": 200,
                           "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if extension is not None:
        out["vlmkit"] = extension
    return out
