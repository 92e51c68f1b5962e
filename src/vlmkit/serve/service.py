"""`ChatService`: what both HTTP APIs share between parsing a request and writing the answer.

It owns the model's `Engine` and the continuous-batching `Scheduler`, tokenizes prompts (off the event loop),
enforces the context length (prompt + max_tokens), submits the `n` choices of a request and computes the
grounding boxes of an answer (the vlmkit extension field).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from PIL import Image

from ..errors import VlmkitError
from ..generation import Engine, GenerationConfig, parse_boxes
from ..generation.scheduler import Scheduler, TokenStream
from ..models.vlm import VLMModel
from ..processing import Encoded, VLMProcessor
from ..templates import Message
from .errors import APIError, bad_request
from .settings import ServeSettings

NO_TRUNCATION = 1 << 30


class ChatService:
    """One served model: tokenization and limits, the scheduler, boxes."""

    def __init__(self, model: VLMModel, processor: VLMProcessor, settings: ServeSettings) -> None:
        self.settings = settings
        self.engine = Engine(model, processor)
        self.processor = processor
        self.template = self.engine.template
        self.scheduler = Scheduler(self.engine, settings.max_batch)
        self.context_length = context_length(model, processor)
        # One tokenization at a time: a fast tokenizer's settings are mutable Rust state shared by threads.
        # A first call settles them before the decode thread starts decoding with the same tokenizer.
        self._encode_lock = threading.Lock()
        with contextlib.suppress(APIError):
            self.encode([Message("user", "hello")], [])

    def encode(self, messages: Sequence[Message], images: Sequence[Image.Image]) -> Encoded:
        """Tokenize a conversation (blocking: run it in a worker thread); template mistakes are a 400."""
        try:
            with self._encode_lock:
                return self.processor.encode(messages, images, self.template, add_generation_prompt=True,
                                             max_length=NO_TRUNCATION)
        except VlmkitError as e:
            raise bad_request(str(e), "messages") from None

    def answer_budget(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """max_tokens checked against the context; without it, the default capped by the room left."""
        room = self.context_length - prompt_tokens
        if max_tokens is None:
            if room < 1:
                raise _context_error(self.context_length, prompt_tokens, None)
            return min(self.settings.default_max_tokens, room)
        if max_tokens > room:
            raise _context_error(self.context_length, prompt_tokens, max_tokens)
        return max_tokens

    def submit(self, encoded: Encoded, config: GenerationConfig, n: int = 1, ignore_eos: bool = False
               ) -> list[TokenStream]:
        """Queue `n` choices (choice i samples with seed + i when seeded); call on the event loop."""
        loop = asyncio.get_running_loop()
        streams = []
        for i in range(n):
            choice = config if config.seed is None or i == 0 else config.replace(seed=config.seed + i)
            streams.append(self.scheduler.submit(encoded, choice, ignore_eos, loop))
        return streams

    def boxes(self, text: str, images: Sequence[Image.Image]) -> dict[str, Any] | None:
        """The vlmkit extension of an answer: boxes (pixels of the conversation's last image) or None."""
        if not images:
            return None
        image = images[-1]
        boxes = parse_boxes(text, *image.size)
        return {"boxes": [b.to_dict() for b in boxes], "image_index": len(images) - 1,
                "image_size": list(image.size)}


def context_length(model: VLMModel, processor: VLMProcessor) -> int:
    """The language model's context (max_position_embeddings), else the processor's max_length."""
    cfg = getattr(model.language_model, "config", None)
    value = getattr(cfg, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else int(processor.max_length)


def _context_error(limit: int, prompt: int, max_tokens: int | None) -> APIError:
    asked = f"{prompt} in the messages" + (f" + {max_tokens} in the completion" if max_tokens else "")
    return APIError(400, f"this model's maximum context length is {limit} tokens; the request needs "
                         f"{prompt + (max_tokens or 1)} ({asked}): shorten the messages or lower max_tokens",
                    "max_tokens" if max_tokens and prompt < limit else "messages", "context_length_exceeded")


async def fan_in(streams: Sequence[TokenStream]) -> AsyncIterator[tuple[int, str, Any]]:
    """Events of several streams as they come: (index, "delta", text) and (index, "done", Result).
    A failed stream raises its error; leaving early cancels every stream."""
    if len(streams) == 1:  # no tasks needed
        try:
            async for delta in streams[0]:
                yield 0, "delta", delta
            yield 0, "done", streams[0].result
        finally:
            streams[0].cancel()
        return
    queue: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()

    async def pump(i: int, stream: TokenStream) -> None:
        try:
            async for delta in stream:
                await queue.put((i, "delta", delta))
            await queue.put((i, "done", stream.result))
        except Exception as e:  # delivered to the consumer below
            await queue.put((i, "error", e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            i, kind, value = await queue.get()
            if kind == "error":
                raise value
            left -= kind == "done"
            yield i, kind, value
    finally:
        for stream in streams:
            stream.cancel()  # a no-op for finished ones
        for task in tasks:
            task.cancel()
