"""Continuous batching: one decode thread that runs the `Engine`'s model over a batch that changes every step.

This module owns what a server needs on top of the engine: the queue of submitted prompts, the running batch
(one left-padded KV cache shared by all rows, its attention mask and each row's next position), admission of
new requests between decode steps (their prompts are prefilled together, then their caches are left-padded to
a common length and concatenated to the batch), removal of finished and cancelled rows (the batch is narrowed
and columns no row needs any more are dropped), and the `TokenStream`s that carry text deltas and the final
`Result` back to an asyncio event loop (or to a plain thread) without ever blocking it.

Each row keeps its own `TokenChooser` and its own (unpadded) token history, so a request gets the same greedy
(or seeded) tokens whether it is decoded alone or while other requests join and leave; padded cache columns
are masked out. Caches that cannot be merged this way (sliding-window layers, prefix tuning) still work:
new requests then wait until the running batch has finished.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..errors import VlmkitError
from ..processing import Encoded
from .engine import DeltaTracker, Engine, Result, Row, Stops
from .sampling import GenerationConfig, TokenChooser

logger = logging.getLogger(__name__)

Event = tuple[str, Any]  # ("delta", str) | ("done", Result) | ("error", Exception)


class TokenStream:
    """The submitter's end of one request: iterate it (`for` or `async for`) for text deltas, then read
    `result`; iteration raises the request's error. `cancel()` (any thread) drops it before the next step."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._async: asyncio.Queue[Event] | None = asyncio.Queue() if loop is not None else None
        self._sync: queue.Queue[Event] | None = None if loop is not None else queue.Queue()
        self._cancelled = threading.Event()
        self.result: Result | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop decoding this request (its client went away); safe from any thread, idempotent."""
        self._cancelled.set()

    def put(self, event: Event) -> None:
        deliver([(self, event)])

    def _handle(self, event: Event) -> str | None:
        kind, value = event
        if kind == "delta":
            return value
        if kind == "done":
            self.result = value
            return None
        raise value

    def __iter__(self) -> Iterator[str]:
        assert self._sync is not None, "this stream was submitted with an event loop: use `async for`"
        while True:
            delta = self._handle(self._sync.get())
            if delta is None:
                return
            yield delta

    async def __aiter__(self) -> AsyncIterator[str]:
        """Text deltas; those that arrived together come as one (fewer, larger chunks under load)."""
        assert self._async is not None, "this stream was submitted without an event loop: use `for`"
        events = self._async
        while True:
            pending = [await events.get()]
            while not events.empty():
                pending.append(events.get_nowait())
            text, finished = "", False
            for event in pending:
                delta = self._handle(event)
                if delta is None:
                    finished = True
                    break
                text += delta
            if text:
                yield text
            if finished:
                return

    async def collect(self) -> Result:
        """Wait for the whole answer (async); cancels the request if the waiting task is cancelled."""
        try:
            async for _ in self:
                pass
        finally:
            if self.result is None:
                self.cancel()
        assert self.result is not None
        return self.result


def deliver(items: list[tuple[TokenStream, Event]]) -> None:
    """Hand events to their streams: one wake-up per event loop (not per event), plain puts for sync streams."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[TokenStream, Event]]] = {}
    for stream, event in items:
        if stream._sync is not None:
            stream._sync.put(event)
        else:
            by_loop.setdefault(stream._loop, []).append((stream, event))  # type: ignore[arg-type]
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, batch)
        except RuntimeError:  # the event loop is closed: nobody listens any more
            for stream, _ in batch:
                stream.cancel()


def _put_all(items: list[tuple[TokenStream, Event]]) -> None:
    for stream, event in items:
        stream._async.put_nowait(event)  # type: ignore[union-attr]


@dataclass
class _Job:
    encoded: Encoded
    config: GenerationConfig
    ignore_eos: bool
    stream: TokenStream
    solo: bool = False  # decode alone (its group's prefill failed)


@dataclass
class _Slot:
    """One running request: the engine's `Row` plus its own chooser, stops, history and delta tracker."""

    stream: TokenStream
    row: Row
    stops: Stops
    chooser: TokenChooser
    tracker: DeltaTracker
    history: torch.Tensor  # [1, T] prompt + answer ids, unpadded (kept only when the chooser needs it)
    greedy: bool  # plain argmax: chosen for all such rows at once


@dataclass
class _Batch:
    """The running batch: rows in cache order, the shared cache, its mask [B, C] and next positions [B, 1]."""

    slots: list[_Slot]
    cache: DynamicCache
    mask: torch.Tensor
    pos: torch.Tensor
    mergeable: bool = field(default=True)


class Scheduler:
    """Continuous batching over one `Engine`: `submit` from any thread, results stream back per request."""

    def __init__(self, engine: Engine, max_batch: int = 8) -> None:
        if max_batch < 1:
            raise VlmkitError(f"max_batch={max_batch}; it must be >= 1")
        self.engine = engine
        self.max_batch = max_batch
        self._waiting: deque[_Job] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._batch: _Batch | None = None
        self.counters = {"steps": 0, "prefills": 0, "generated_tokens": 0, "completed": 0, "cancelled": 0,
                         "failed": 0, "peak_batch": 0}

    # ------------------------------------------------------------------------------------------ public
    def start(self) -> Scheduler:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="vlmkit-decode", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the decode thread; requests still queued or running end with an error."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        with self._lock:
            jobs, self._waiting = list(self._waiting), deque()
        for job in jobs:
            job.stream.put(("error", VlmkitError("the server is shutting down")))

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def submit(
        self, encoded: Encoded, config: GenerationConfig, ignore_eos: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> TokenStream:
        """Queue one prompt (from `processor.encode(..., add_generation_prompt=True)`); never blocks.

        With `loop`, the returned stream is consumed with `async for` on that loop; without, with `for`.
        `ignore_eos` decodes until `max_new_tokens` or the config's own stops (for benchmarks).
        """
        stream = TokenStream(loop)
        with self._lock:
            self._waiting.append(_Job(encoded, config, ignore_eos, stream))
        self._wake.set()
        return stream

    def stats(self) -> dict[str, int]:
        """Running / waiting request counts and the counters (steps, tokens, completed, cancelled, ...)."""
        batch = self._batch
        with self._lock:
            waiting = len(self._waiting)
        return {"running": len(batch.slots) if batch else 0, "waiting": waiting, **self.counters}

    # -------------------------------------------------------------------------------------- the thread
    def _loop(self) -> None:
        self.engine.model.eval()
        while not self._stop.is_set():
            try:
                self._admit()
                if self._batch is None:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                self._step()
            except Exception as e:  # never let the decode thread die: fail the running rows, keep serving
                logger.exception("decoding failed")
                self._fail(self._batch, e)
        self._fail(self._batch, VlmkitError("the server is shutting down"))

    def _fail(self, batch: _Batch | None, error: Exception) -> None:
        if batch is self._batch:
            self._batch = None
        for slot in batch.slots if batch else []:
            self.counters["failed"] += 1
            slot.stream.put(("error", _as_user_error(error)))

    def _take_jobs(self, n: int) -> list[_Job]:
        """Up to `n` live jobs in arrival order; a job marked `solo` (its group failed) is taken alone."""
        jobs: list[_Job] = []
        with self._lock:
            while self._waiting and len(jobs) < n:
                if jobs and self._waiting[0].solo:
                    break
                job = self._waiting.popleft()
                if job.stream.cancelled:
                    self.counters["cancelled"] += 1
                    continue
                jobs.append(job)
                if job.solo:
                    break
        return jobs

    def _admit(self) -> None:
        """Prefill waiting requests into free slots and merge them into the running batch."""
        batch = self._batch
        if batch is not None and not batch.mergeable:  # static batching for caches that cannot be merged
            return
        jobs = self._take_jobs(self.max_batch - (len(batch.slots) if batch else 0))
        if not jobs:
            return
        try:
            new = self._prefill(jobs)
        except Exception as e:
            self._prefill_failed(jobs, e)
            return
        self.counters["prefills"] += 1
        if new is None:
            return
        try:
            self._batch = new if batch is None else _merge(batch, new)
        except Exception as e:  # the new rows are not in the batch yet: fail them here, the batch in `_loop`
            self._fail(new, e)
            raise
        self.counters["peak_batch"] = max(self.counters["peak_batch"], len(self._batch.slots))

    def _prefill_failed(self, jobs: list[_Job], error: Exception) -> None:
        """A lone job gets the error; a group is retried one job at a time so only the bad ones fail."""
        if len(jobs) == 1:
            logger.warning("prefill failed: %s", error)
            self.counters["failed"] += 1
            jobs[0].stream.put(("error", _as_user_error(error)))
            return
        for job in jobs:
            job.solo = True
        with self._lock:
            self._waiting.extendleft(reversed(jobs))

    def _prefill(self, jobs: list[_Job]) -> _Batch | None:
        """Prefill `jobs` together and choose their first tokens; None when all of them finished at once."""
        engine = self.engine
        slots = [self._slot(job) for job in jobs]
        prefill = engine.prepare_encoded([job.encoded for job in jobs])
        cache = engine.new_cache()
        with torch.no_grad():
            out = engine.model(input_ids=prefill.input_ids, attention_mask=prefill.attention_mask,
                               position_ids=prefill.position_ids, token_type_ids=prefill.token_type_ids,
                               image_features=prefill.image_features, past_key_values=cache, use_cache=True,
                               logits_to_keep="last")
        cache = out.cache if out.cache is not None else cache  # prefix tuning makes its own
        mask = prefill.attention_mask  # [B, C]
        batch = _Batch(slots, cache, mask, prefill.position_ids[:, -1:] + 1, _mergeable(cache, mask))
        self._choose(batch, out.logits[:, -1])
        return self._drop(batch, [s for s in slots if s.row.finish_reason is not None])

    def _slot(self, job: _Job) -> _Slot:
        engine, config, n = self.engine, job.config, len(job.encoded.input_ids)
        limit = config.max_new_tokens if config.max_length is None else min(config.max_new_tokens,
                                                                              config.max_length - n)
        if limit < 1:
            raise VlmkitError(f"the prompt is {n} tokens, which leaves no room for an answer under "
                              f"max_length={config.max_length}")
        stops = engine.stops(config)
        if job.ignore_eos:
            stops = Stops(frozenset(config.stop_token_ids), tuple(config.stop_strings))
        chooser = TokenChooser(config, 1, suppress_ids=[engine.model.image_token_id])
        history = torch.tensor([job.encoded.input_ids], device=engine.model.device)  # [1, T]
        greedy = not config.do_sample and config.repetition_penalty == 1.0
        return _Slot(job.stream, Row(n, limit), stops, chooser, DeltaTracker(engine.template, stops.strings),
                     history, greedy)

    def _step(self) -> None:
        """One decode step of the whole batch: feed every row's last token, choose the next ones."""
        cancelled = [s for s in self._batch.slots if s.stream.cancelled]
        self.counters["cancelled"] += len(cancelled)
        batch = self._batch = self._drop(self._batch, cancelled)
        if batch is None:
            return
        device = batch.mask.device
        ids = torch.tensor([[s.row.ids[-1]] for s in batch.slots], device=device)  # [B, 1]
        mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)  # [B, C+1]
        with torch.no_grad():
            out = self.engine.model(input_ids=ids, attention_mask=mask, position_ids=batch.pos,
                                    token_type_ids=torch.zeros_like(ids), past_key_values=batch.cache,
                                    use_cache=True, logits_to_keep="last")
        batch.mask, batch.pos = mask, batch.pos + 1
        self.counters["steps"] += 1
        self._choose(batch, out.logits[:, -1])
        self._batch = self._drop(batch, [s for s in batch.slots if s.row.finish_reason is not None])

    def _choose(self, batch: _Batch, logits: torch.Tensor) -> None:
        """logits [B, V]: pick each row's next token, stream the deltas, report the rows that finished.

        Greedy rows without a repetition penalty take one batched argmax with the image token suppressed (what
        their `TokenChooser` computes); the others use their own chooser and history."""
        picks = self._greedy_picks(batch, logits)
        events: list[tuple[TokenStream, Event]] = []
        for i, slot in enumerate(batch.slots):
            token = picks.get(i)
            if token is None:
                token = int(slot.chooser(slot.history, logits[i:i + 1])[0])
                slot.history = torch.cat([slot.history, slot.history.new_tensor([[token]])], dim=1)  # [1, T+1]
            self.engine.advance(slot.row, token, slot.stops)
            delta = slot.tracker.update(slot.row)
            if delta:
                events.append((slot.stream, ("delta", delta)))
            if slot.row.finish_reason is not None:
                events.append((slot.stream, ("done", self.engine.result(slot.row))))
        self.counters["generated_tokens"] += len(batch.slots)
        self.counters["completed"] += sum(event[0] == "done" for _, event in events)
        deliver(events)

    def _greedy_picks(self, batch: _Batch, logits: torch.Tensor) -> dict[int, int]:
        rows = [i for i, s in enumerate(batch.slots) if s.greedy]
        if not rows:
            return {}
        scores = logits[rows].float() if len(rows) < len(batch.slots) else logits.float()  # [G, V]
        scores[:, self.engine.model.image_token_id] = float("-inf")
        return dict(zip(rows, scores.argmax(-1).tolist()))

    @staticmethod
    def _drop(batch: _Batch | None, gone: list[_Slot]) -> _Batch | None:
        """The batch without the rows `gone` (narrowed in place); None when no row is left."""
        if batch is None or not gone:
            return batch
        ids = {id(s) for s in gone}
        keep = [i for i, s in enumerate(batch.slots) if id(s) not in ids]
        if not keep:
            return None
        _narrow(batch, keep)
        return batch


# ------------------------------------------------------------------------------------------ cache surgery
def _mergeable(cache: DynamicCache, mask: torch.Tensor) -> bool:
    """Only plain full-attention layers whose length equals the mask's can be padded and concatenated."""
    layers = getattr(cache, "layers", [])
    return bool(layers) and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers) \
        and cache.get_seq_length() == mask.shape[1]


def _narrow(batch: _Batch, keep: list[int]) -> None:
    """Keep rows `keep` (in place); for mergeable caches also drop leading columns no remaining row attends to."""
    if len(keep) < len(batch.slots):
        index = torch.tensor(keep, device=batch.mask.device)
        batch.cache.batch_select_indices(index)
        batch.mask, batch.pos = batch.mask[index], batch.pos[index]
        batch.slots = [batch.slots[i] for i in keep]
    if not batch.slots or not batch.mergeable:
        return
    start = int(batch.mask.any(dim=0).long().argmax())  # first column some row attends to
    if start > 0:
        for layer in batch.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
        batch.mask = batch.mask[:, start:]


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = width - t.shape[dim]
    return t if shape[dim] == 0 else torch.cat([t.new_zeros(shape), t], dim=dim)


def _merge(a: _Batch, b: _Batch) -> _Batch:
    """Rows of `b` appended to `a`: both caches left-padded (masked zeros) to the longer one, then stacked."""
    if not b.slots:
        return a
    if not a.slots:
        return b
    width = max(a.mask.shape[1], b.mask.shape[1])
    for la, lb in zip(a.cache.layers, b.cache.layers):
        la.keys = torch.cat([_left_pad(la.keys, width, 2), _left_pad(lb.keys, width, 2)], dim=0)
        la.values = torch.cat([_left_pad(la.values, width, 2), _left_pad(lb.values, width, 2)], dim=0)
    a.mask = torch.cat([_left_pad(a.mask, width, 1), _left_pad(b.mask, width, 1)], dim=0)
    a.pos = torch.cat([a.pos, b.pos], dim=0)
    a.slots = a.slots + b.slots
    return a


def _as_user_error(e: Exception) -> VlmkitError:
    return e if isinstance(e, VlmkitError) else VlmkitError(f"generation failed: {type(e).__name__}: {e}")
