"""The FastAPI app: routes, API-key check, bounded body reading, SSE streaming and client-disconnect handling.

Routes: `POST /v1/chat/completions` (OpenAI), `GET /v1/models[/{id}]`, `GET /health` (no key needed; scheduler
statistics) and `POST /` (VisualGLM-6B). Parsing, image decoding and tokenization run in worker threads and
decoding runs on the scheduler's thread, so the event loop only moves bytes. A client that disconnects has its
request cancelled: streams when the response is torn down, non-streaming requests by polling the connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image

from ..errors import VlmkitError
from ..generation import Result
from ..generation.scheduler import TokenStream
from ..models.vlm import VLMModel
from ..processing import VLMProcessor
from . import responses as R
from .errors import APIError, bad_request, error_response, install_error_handlers
from .images import image_from_url
from .protocol import ChatRequest, parse_chat_request
from .service import ChatService, fan_in
from .settings import ServeSettings
from .visualglm import legacy_response, parse_legacy_request

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25


class ClientGone(Exception):
    """The client closed the connection while its answer was being generated."""


def create_app(model: VLMModel, processor: VLMProcessor, settings: ServeSettings | None = None) -> FastAPI:
    """The server app for one model; the decode thread runs while the app's lifespan is active."""
    settings = settings or ServeSettings()
    service = ChatService(model, processor, settings)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.scheduler.start()
        try:
            yield
        finally:
            service.scheduler.stop()

    app = FastAPI(title="vlmkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    install_error_handlers(app)
    auth = [Depends(api_key_check(settings.api_key))]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": settings.model_name, **service.scheduler.stats()}

    @app.get("/v1/models", dependencies=auth)
    async def models() -> dict[str, Any]:
        return R.models_list(settings.model_name, created)

    @app.get("/v1/models/{model_id:path}", dependencies=auth)
    async def model_card(model_id: str) -> dict[str, Any]:
        if model_id != settings.model_name:
            raise APIError(404, f"the model '{model_id}' does not exist", "model", "model_not_found")
        return R.model_card(model_id, created)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(request: Request) -> Response:
        return await chat(request, service)

    @app.post("/", dependencies=auth)
    async def visualglm(request: Request) -> Response:
        try:
            return await legacy(request, service)
        except APIError as e:
            return error_response(e, {"status": e.status})

    return app


# ------------------------------------------------------------------------------------------------ plumbing
def api_key_check(api_key: str | None) -> Callable[[Request], None]:
    """A dependency requiring `Authorization: Bearer <api_key>` (compared in constant time) when a key is set."""
    expected = hashlib.sha256(api_key.encode()).digest() if api_key else None

    def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
            raise APIError(401, "missing or incorrect API key: send 'Authorization: Bearer <key>'", None,
                           "invalid_api_key")

    return check


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing bodies over `limit` bytes (413) and invalid JSON (400)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(piece)
    try:
        return json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise bad_request(f"the request body is not valid JSON ({e.__class__.__name__}: {e})") from None


def _too_large(size: int, limit: int) -> APIError:
    return APIError(413, f"the request body is {size} bytes or more; the limit is {limit} bytes",
                    None, "request_too_large")


async def until_done_or_gone(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and raising `ClientGone`) when the client disconnects meanwhile."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()


async def collect_all(streams: list[TokenStream]) -> list[Result]:
    try:
        return list(await asyncio.gather(*(s.collect() for s in streams)))
    except VlmkitError as e:
        raise APIError(500, str(e)) from None


# ------------------------------------------------------------------------------------------------ handlers
async def chat(request: Request, service: ChatService) -> Response:
    settings = service.settings
    body = await read_json(request, settings.max_request_bytes)

    def opener(url: str, param: str) -> Image.Image:
        return image_from_url(url, settings, param)

    req = await asyncio.to_thread(parse_chat_request, body, settings, service.template, opener)
    encoded = await asyncio.to_thread(service.encode, req.messages, req.images)
    budget = service.answer_budget(len(encoded.input_ids), req.max_tokens)
    streams = service.submit(encoded, req.config.replace(max_new_tokens=budget), req.n, req.ignore_eos)
    meta = R.Meta(settings.model_name)
    if req.stream:
        return StreamingResponse(stream_chat(service, streams, meta, req), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        results = await until_done_or_gone(request, collect_all(streams))
    except ClientGone:
        return Response(status_code=499)
    extensions = [service.boxes(r.text, req.images) for r in results]
    return JSONResponse(R.completion(meta, results, extensions))


async def stream_chat(service: ChatService, streams: list[TokenStream], meta: R.Meta, req: ChatRequest
                      ) -> AsyncIterator[str]:
    """SSE: a role delta per choice, content deltas, a final delta with finish_reason, usage, [DONE]."""
    usage_null = req.include_usage
    content = R.ContentChunks(meta, usage_null)
    results: list[Result | None] = [None] * len(streams)
    try:
        for i in range(len(streams)):
            yield R.sse(R.chunk(meta, i, {"role": "assistant", "content": ""}, with_usage=usage_null))
        async for i, kind, value in fan_in(streams):
            if kind == "delta":
                yield content(i, value)
                continue
            results[i] = value
            ext = service.boxes(value.text, req.images)
            delta = {} if ext is None else {R.EXTENSION: ext}
            yield R.sse(R.chunk(meta, i, delta, value.finish_reason, usage_null))
        if req.include_usage:
            yield R.sse(R.usage_chunk(meta, [r for r in results if r is not None]))
    except VlmkitError as e:
        yield R.sse(APIError(500, str(e)).body())
    finally:
        for stream in streams:
            stream.cancel()  # the client left (or we are done): stop decoding
    yield R.sse("[DONE]")


async def legacy(request: Request, service: ChatService) -> Response:
    body = await read_json(request, service.settings.max_request_bytes)
    req = await asyncio.to_thread(parse_legacy_request, body, service.settings)
    encoded = await asyncio.to_thread(service.encode, req.messages, req.images)
    prompt = len(encoded.input_ids)
    max_length = req.config.max_length
    if max_length is not None and prompt >= max_length:
        raise bad_request(f"the prompt is {prompt} tokens, which leaves no room for an answer under "
                          f"max_length={max_length}", "max_length", "context_length_exceeded")
    budget = service.answer_budget(prompt, req.max_tokens)
    streams = service.submit(encoded, req.config.replace(max_new_tokens=budget))
    try:
        result = (await until_done_or_gone(request, collect_all(streams)))[0]
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse(legacy_response(req, result.text, service.boxes(result.text, req.images)))
