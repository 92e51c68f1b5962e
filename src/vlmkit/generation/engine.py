"""The generation engine: ONE decoding loop for every front end (CLI, web demo, HTTP server, chat sessions).

This module owns turning requests `(messages, images)` into a left-padded batch with the images encoded once
(`Engine.prepare`), the KV-cached decoding loop (`Engine.steps`), stopping (eos, stop token ids, stop strings
of the template and the config; the stop string is never part of the answer), `Result`s, and streaming text
deltas that never split a UTF-8 character nor show the start of a stop string. Chat sessions hand the loop a
`Prefill` whose cache already holds the shared prefix of the conversation.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import DynamicCache

from ..errors import VlmkitError
from ..models.vlm import VLMModel
from ..processing import Encoded, ImageInput, VLMBatch, VLMProcessor
from ..templates import Template, get_template
from .sampling import GenerationConfig, TokenChooser

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "default_model"
REPLACEMENT_CHAR = "\ufffd"


def default_model_dir() -> Path:
    """The model shipped inside the package (`vlmkit/assets/default_model`); raises when it is not installed."""
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        raise VlmkitError(
            f"no default model is installed ({DEFAULT_MODEL_DIR} is missing): pass --model with a model "
            "directory saved by vlmkit (or a preset name for an untrained model)"
        )
    return DEFAULT_MODEL_DIR


class Request(NamedTuple):
    """One conversation to answer: OpenAI-style message dicts (or `Message`s) and its images in order."""

    messages: Sequence[Any]
    images: Sequence[ImageInput] = ()


@dataclass
class Result:
    """One answer: cleaned text, generated ids (incl. a final stop token), why it ended, token counts."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass
class Prefill:
    """Where a decoding run starts. With a non-empty `cache`, `input_ids` are only the tokens after it."""

    input_ids: torch.Tensor  # [B, L] tokens to feed first
    attention_mask: torch.Tensor  # [B, P+L] cached + new (0 on left padding)
    position_ids: torch.Tensor  # [B, L]
    token_type_ids: torch.Tensor  # [B, L] 1 on image placeholders
    history: torch.Tensor  # [B, P+L] every prompt id (for the repetition penalty)
    prompt_tokens: list[int]  # real (unpadded) prompt length per row
    image_features: torch.Tensor | None = None  # [N_img, T, D] for the placeholders in input_ids
    cache: DynamicCache | None = None  # filled in place by the loop


@dataclass
class Row:
    """Decoding state of one request, updated after every step."""

    prompt_tokens: int
    limit: int  # most new tokens
    ids: list[int] = field(default_factory=list)
    text: str = ""  # answer so far, cut before any stop string, special tokens skipped
    finish_reason: str | None = None


@dataclass(frozen=True)
class Stops:
    token_ids: frozenset[int]
    strings: tuple[str, ...]


class Engine:
    """Batched, KV-cached generation for a `VLMModel` and its `VLMProcessor`."""

    def __init__(self, model: VLMModel, processor: VLMProcessor, template: Template | str | None = None) -> None:
        self.model = model
        self.processor = processor
        self.template = get_template(template) if isinstance(template, str) else (template or processor.template)
        self.tokenizer = processor.tokenizer
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        # LMs may have more embedding rows than the tokenizer has tokens (padded vocabularies): never emit those.
        self.vocab_limit: int = len(self.tokenizer)

    # ---------------------------------------------------------------------------------------- front ends
    def generate(
        self, requests: Sequence[Request | tuple], config: GenerationConfig | None = None,
        batch_size: int | None = None,
    ) -> list[Result]:
        """Answer every request; batches of `batch_size` (default: all at once) are left-padded."""
        config = config or GenerationConfig()
        requests = list(requests)
        size = batch_size or max(len(requests), 1)
        results: list[Result] = []
        for start in range(0, len(requests), size):
            results.extend(self.run(self.prepare(requests[start:start + size]), config))
        return results

    def stream(self, request: Request | tuple, config: GenerationConfig | None = None) -> Iterator[str]:
        """Yield the answer to one request as text deltas; their concatenation is `generate(...)[0].text`."""
        yield from self.stream_run(self.prepare([request]), config or GenerationConfig())

    def run(self, prefill: Prefill, config: GenerationConfig) -> list[Result]:
        """Decode a prepared batch to the end."""
        final: list[Row] = []
        for rows in self.steps(prefill, config):
            final = rows
        return [self.result(r) for r in final]

    def stream_run(self, prefill: Prefill, config: GenerationConfig) -> Generator[str, None, Result]:
        """Decode a one-row prefill, yielding text deltas; returns the `Result`."""
        tracker = DeltaTracker(self.template, self.stops(config).strings)
        rows: list[Row] = []
        for rows in self.steps(prefill, config):
            delta = tracker.update(rows[0])
            if delta:
                yield delta
        return self.result(rows[0])

    def result(self, row: Row) -> Result:
        return Result(text=self.template.parse_response(row.text), token_ids=list(row.ids),
                      finish_reason=row.finish_reason or "length", prompt_tokens=row.prompt_tokens,
                      completion_tokens=len(row.ids))

    # ------------------------------------------------------------------------------------------- inputs
    def prepare(self, requests: Sequence[Request | tuple]) -> Prefill:
        """Tokenize with the template, left-pad, encode all images once."""
        if not requests:
            raise VlmkitError("no requests to generate for")
        reqs = [as_request(r) for r in requests]
        batch = self.processor(images=[list(r.images) for r in reqs], messages=[list(r.messages) for r in reqs],
                               template=self.template, add_generation_prompt=True, padding_side="left")
        return self.prefill_from_batch(batch)

    def prepare_encoded(self, encoded: Sequence[Encoded]) -> Prefill:
        """Like `prepare`, for prompts already tokenized by `processor.encode` (the server does that off the
        decoding thread, to check lengths before a request is queued)."""
        if not encoded:
            raise VlmkitError("no requests to generate for")
        return self.prefill_from_batch(self.processor.collate(encoded, padding_side="left"))

    def prefill_from_batch(self, batch: VLMBatch) -> Prefill:
        """A left-padded `VLMBatch` -> `Prefill` on the model's device, with every image encoded once."""
        device = self.model.device
        ids = batch["input_ids"].to(device)  # [B, L]
        mask = batch["attention_mask"].to(device)  # [B, L]
        types = batch["token_type_ids"].to(device)  # [B, L]
        feats = None
        if batch["pixel_values"] is not None:
            with torch.inference_mode():
                feats = self.model.encode_images(batch["pixel_values"])  # [N_img, T, D]
        return Prefill(ids, mask, self.position_ids(mask, types), types, ids,
                       [int(n) for n in mask.sum(-1).tolist()], feats)

    def position_ids(self, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """Positions of a whole (uncached) prompt, as the model computes them: [B, L]."""
        return self.model.position_ids(attention_mask, token_type_ids)

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=getattr(self.model.language_model, "config", None))

    def stops(self, config: GenerationConfig) -> Stops:
        """eos + config ids + stop strings that are one special token; all stop strings for text matching."""
        strings = tuple(dict.fromkeys(self.template.stop_strings + config.stop_strings))
        ids = set(config.stop_token_ids)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        for s in strings:
            enc = self.tokenizer.encode(s, add_special_tokens=False)
            if len(enc) == 1 and self.tokenizer.decode(enc, skip_special_tokens=True) == "":
                ids.add(enc[0])
        return Stops(frozenset(ids), strings)

    # --------------------------------------------------------------------------------------------- loop
    def steps(self, prefill: Prefill, config: GenerationConfig) -> Iterator[list[Row]]:
        """The decoding loop: yields the rows after each new token until every row has finished."""
        rows = [Row(n, _row_limit(n, config)) for n in prefill.prompt_tokens]
        stops = self.stops(config)
        chooser = TokenChooser(config, len(rows), suppress_ids=[self.model.image_token_id])
        if prefill.cache is None:
            prefill.cache = self.new_cache()
        ids, mask, pos = prefill.input_ids, prefill.attention_mask, prefill.position_ids
        types, feats, history = prefill.token_type_ids, prefill.image_features, prefill.history
        was_training = self.model.training
        self.model.eval()
        try:
            while True:
                with torch.inference_mode():
                    out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, token_type_ids=types,
                                     image_features=feats, past_key_values=prefill.cache, use_cache=True,
                                     logits_to_keep="last")
                    prefill.cache = out.past_key_values  # wrappers (prefix tuning) may return a new cache
                    logits = out.logits[:, -1, : self.vocab_limit]  # [B, V]
                    if len(rows[0].ids) < config.min_new_tokens and stops.token_ids:
                        logits[:, sorted(stops.token_ids)] = float("-inf")
                    nxt = chooser(history, logits)  # [B]
                for row, tok in zip(rows, nxt.tolist()):
                    if row.finish_reason is None:
                        self.advance(row, tok, stops, config.min_new_tokens)
                yield rows
                if all(r.finish_reason is not None for r in rows):
                    return
                fed = [self.pad_id if r.finish_reason is not None else r.ids[-1] for r in rows]
                ids = torch.tensor(fed, device=mask.device).unsqueeze(1)  # [B, 1]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # [B, P+1]
                pos = pos[:, -1:] + 1  # [B, 1]
                types = torch.zeros_like(ids)  # [B, 1]
                feats = None
                history = torch.cat([history, ids], dim=1)  # [B, T+1]
        finally:
            self.model.train(was_training)

    def advance(self, row: Row, token: int, stops: Stops, min_new_tokens: int = 0) -> None:
        """Append `token` to the row and decide whether it has finished."""
        row.ids.append(token)
        if token in stops.token_ids:
            row.finish_reason = "stop"  # the text (without this token) is unchanged
            return
        text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        cut = find_stop(text, stops.strings) if len(row.ids) >= min_new_tokens else None
        row.text = text if cut is None else text[:cut]
        if cut is not None:
            row.finish_reason = "stop"
        elif len(row.ids) >= row.limit:
            row.finish_reason = "length"


def as_request(r: Request | tuple) -> Request:
    if isinstance(r, Request):
        return r
    if isinstance(r, tuple) and len(r) in (1, 2):
        return Request(*r)
    raise VlmkitError(f"a request is (messages, images), got {type(r).__name__}")


def _row_limit(prompt_tokens: int, config: GenerationConfig) -> int:
    limit = config.max_new_tokens
    if config.max_length is not None:
        limit = min(limit, config.max_length - prompt_tokens)
        if limit < 1:
            raise VlmkitError(f"the prompt is {prompt_tokens} tokens, which leaves no room for an answer "
                              f"under max_length={config.max_length}: raise max_length")
    return limit


def find_stop(text: str, stop_strings: Sequence[str]) -> int | None:
    """Index of the earliest stop string in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return min(hits) if hits else None


def partial_stop_length(text: str, stop_strings: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string (it may complete)."""
    best = 0
    for s in stop_strings:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class DeltaTracker:
    """Turns a row's growing text into deltas whose concatenation is the final cleaned answer."""

    def __init__(self, template: Template, stop_strings: Sequence[str]) -> None:
        self.template = template
        self.stop_strings = tuple(stop_strings)
        self.emitted = ""

    def update(self, row: Row) -> str:
        """The new complete text since the last call ('' when nothing is safe to show yet)."""
        if row.finish_reason is not None:
            target = self.template.parse_response(row.text)
        else:
            text = row.text.rstrip(REPLACEMENT_CHAR)  # an incomplete UTF-8 sequence decodes to U+FFFD
            text = text[:len(text) - partial_stop_length(text, self.stop_strings)]
            target = self.template.parse_response(text)
        if not target.startswith(self.emitted):
            return ""
        delta, self.emitted = target[len(self.emitted):], target
        return delta
