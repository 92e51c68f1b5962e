"""The OpenAI chat-completions request, checked field by field: JSON body -> `ChatRequest` or a 400 naming the field.

Messages become vlmkit `Message`s: content may be a string or a list of `text` / `image_url` parts; the images of
a message are placed before its text (as vLLM does), each with the template's image marker; `developer` is an
alias of `system`. Sampling follows the CLI: greedy unless `temperature` (> 0), `top_p` or `top_k` is given;
`temperature: 0` is greedy. Unknown fields are ignored (as vLLM does); fields vlmkit cannot honour (logprobs,
tools) are refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..constants import IMAGE_TOKEN
from ..errors import ConfigError
from ..generation import GenerationConfig
from ..templates import Message, Template
from .errors import APIError, bad_request
from .settings import ServeSettings

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS = 16
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call")

ImageOpener = Callable[[str, str], Image.Image]  # (url, param) -> image


@dataclass
class ChatRequest:
    """A validated chat-completions request."""

    messages: list[Message]
    images: list[Image.Image]
    config: GenerationConfig  # max_new_tokens is filled in once the prompt length is known
    max_tokens: int | None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False


def parse_chat_request(body: Any, settings: ServeSettings, template: Template,
                       open_image: ImageOpener) -> ChatRequest:
    """Validate a chat-completions body; `open_image(url, param)` turns image URLs into images."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    check_model(body.get("model"), settings)
    for key in UNSUPPORTED:
        if body.get(key):
            raise bad_request(f"'{key}' is not supported by this server", key, "unsupported_parameter")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad_request("logprobs are not supported by this server", "logprobs", "unsupported_parameter")
    messages, images = parse_messages(body.get("messages"), template, open_image)
    if len(images) > settings.max_images:
        raise bad_request(f"the request has {len(images)} images; this server allows at most "
                          f"{settings.max_images} per request", "messages", "too_many_images")
    n = int_field(body, "n", 1, lo=1)
    if n > settings.max_n:
        raise bad_request(f"n={n}; this server allows at most n={settings.max_n}", "n")
    stream = bool_field(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise bad_request("stream_options must be an object, and only with stream=true", "stream_options")
    include_usage = bool_field(options or {}, "include_usage", False, "stream_options.include_usage")
    max_tokens = _max_tokens(body)
    config = sampling_config(body)
    return ChatRequest(messages, images, config, max_tokens, n, stream, include_usage,
                       bool_field(body, "ignore_eos", False))


def check_model(model: Any, settings: ServeSettings) -> None:
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required (a string); see GET /v1/models", "model")
    if model != settings.model_name:
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{settings.model_name}'",
                       "model", "model_not_found")


# ------------------------------------------------------------------------------------------------ messages
def parse_messages(raw: Any, template: Template, open_image: ImageOpener) -> tuple[list[Message], list[Image.Image]]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", "messages")
    messages: list[Message] = []
    images: list[Image.Image] = []
    for i, m in enumerate(raw):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request("a message must be an object with 'role' and 'content'", param)
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(f"role {role!r} is not supported; allowed: {', '.join(ROLES)}", f"{param}.role")
        text, urls = _content(m.get("content"), role, f"{param}.content")
        if urls and ROLES[role] != "user":
            raise bad_request("only user messages may contain images", f"{param}.content")
        images.extend(open_image(url, p) for url, p in urls)
        messages.append(Message(ROLES[role], _marker(template) * len(urls) + text, len(urls)))
    if messages[-1].role != "user":
        raise bad_request("the last message must be from the user", f"messages[{len(messages) - 1}].role")
    return messages, images


def _marker(template: Template) -> str:
    prefix = template.missing_image_prefix
    return prefix if IMAGE_TOKEN in prefix else IMAGE_TOKEN + "\n"


def _content(content: Any, role: str, param: str) -> tuple[str, list[tuple[str, str]]]:
    """(text, [(image url, its param)]) of one message's content."""
    if content is None and role == "assistant":
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad_request("content must be a string or a list of content parts", param)
    texts: list[str] = []
    urls: list[tuple[str, str]] = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request("a text part needs 'text' (a string)", f"{p}.text")
            texts.append(part["text"])
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if not isinstance(url, str):
                raise bad_request("an image_url part needs image_url.url (a string)", f"{p}.image_url")
            urls.append((url, f"{p}.image_url"))
        else:
            raise bad_request(f"content part type {kind!r} is not supported; allowed: text, image_url", f"{p}.type")
    return "\n".join(texts), urls


# ------------------------------------------------------------------------------------------------ sampling
def sampling_config(body: dict[str, Any]) -> GenerationConfig:
    """temperature / top_p / top_k / repetition_penalty / stop / seed -> a `GenerationConfig` (greedy default)."""
    temperature = number_field(body, "temperature", None, lo=0.0, hi=2.0)
    top_p = number_field(body, "top_p", None, lo=0.0, hi=1.0, lo_open=True)
    top_k = int_field(body, "top_k", None, lo=-1)
    top_k = None if top_k in (-1, 0) else top_k
    penalty = number_field(body, "repetition_penalty", None, lo=0.0, lo_open=True)
    seed = int_field(body, "seed", None, lo=0)
    sample = temperature != 0 and (temperature is not None or (top_p is not None and top_p < 1) or bool(top_k))
    kwargs: dict[str, Any] = {"do_sample": sample, "stop_strings": _stops(body.get("stop")), "seed": seed}
    if sample:
        kwargs.update(temperature=temperature or 1.0, top_p=top_p or 1.0, top_k=top_k or 0)
    if penalty is not None:
        kwargs["repetition_penalty"] = penalty
    try:
        return GenerationConfig(**kwargs)
    except ConfigError as e:
        raise bad_request(str(e)) from None


def _max_tokens(body: dict[str, Any]) -> int | None:
    a = int_field(body, "max_completion_tokens", None, lo=1)
    b = int_field(body, "max_tokens", None, lo=1)
    return a if a is not None else b


def _stops(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOPS:
        raise bad_request(f"at most {MAX_STOPS} stop strings are allowed", "stop")
    return tuple(s for s in stops if s)


def int_field(body: dict[str, Any], key: str, default: int | None, lo: int) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise bad_request(f"'{key}' must be an integer >= {lo}, got {value!r}", key)
    return value


def number_field(body: dict[str, Any], key: str, default: float | None, lo: float, hi: float | None = None,
            lo_open: bool = False) -> float | None:
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (hi is None or value <= hi)
    if not ok:
        allowed = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise bad_request(f"'{key}' must be a number {allowed}, got {value!r}", key)
    return float(value)


def bool_field(body: dict[str, Any], key: str, default: bool, param: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"'{key}' must be true or false, got {value!r}", param or key)
    return value
