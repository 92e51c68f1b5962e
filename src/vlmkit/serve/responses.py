"""The JSON shapes the OpenAI-compatible API answers with: completions, stream chunks, usage, model lists."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..generation import Result

EXTENSION = "vlmkit"  # the extension field of a choice's message / final delta (grounding boxes)


@dataclass(frozen=True)
class Meta:
    """What every chunk of one completion repeats."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}


def usage(results: Sequence[Result]) -> dict[str, int]:
    """Prompt tokens once (every choice shares the prompt), completion tokens of all choices."""
    prompt = results[0].prompt_tokens if results else 0
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(meta: Meta, results: Sequence[Result], extensions: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    choices = []
    for i, (r, ext) in enumerate(zip(results, extensions)):
        message: dict[str, Any] = {"role": "assistant", "content": r.text}
        if ext is not None:
            message[EXTENSION] = ext
        choices.append({"index": i, "message": message, "finish_reason": r.finish_reason, "logprobs": None})
    return {**meta.head("chat.completion"), "choices": choices, "usage": usage(results)}


def chunk(meta: Meta, index: int, delta: dict[str, Any], finish_reason: str | None = None,
          with_usage: bool = False) -> dict[str, Any]:
    out = {**meta.head("chat.completion.chunk"),
           "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
    if with_usage:
        out["usage"] = None
    return out


class ContentChunks:
    """Content chunks of one stream, written straight to SSE text (the hot path: one per delta)."""

    def __init__(self, meta: Meta, with_usage: bool) -> None:
        head = json.dumps(meta.head("chat.completion.chunk"), ensure_ascii=False, separators=(",", ":"))
        self._head = head[:-1]
        self._tail = ',"usage":null}' if with_usage else "}"

    def __call__(self, index: int, text: str) -> str:
        content = json.dumps(text, ensure_ascii=False)
        return (f'data: {self._head},"choices":[{{"index":{index},"delta":{{"content":{content}}},'
                f'"finish_reason":null,"logprobs":null}}]{self._tail}\n\n')


def usage_chunk(meta: Meta, results: Sequence[Result]) -> dict[str, Any]:
    return {**meta.head("chat.completion.chunk"), "choices": [], "usage": usage(results)}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n"


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "vlmkit"}


def models_list(name: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(name, created)]}
