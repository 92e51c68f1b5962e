"""The HTTP server on loopback, driven by the official openai client and raw HTTP: answers, streams, the
VisualGLM endpoint, concurrency and disconnects. Bad inputs are in test_serve_errors.py."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import pytest
import torch
from openai import OpenAI

import vlmkit
from conftest import make_image
from vlmkit.serve import ServeSettings
from vlmkit.serve import app as serve_app
from vlmkit.serve.app import create_app

KEY = "test-key"


def data_url(image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def start_server(app):
    """uvicorn in a thread on 127.0.0.1 with a free port; returns (server, thread, base_url)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < end, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def tiny():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # intra-op threads only add barrier waits for a toy model on a busy machine
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    yield model.eval(), processor
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    local = tmp_path_factory.mktemp("images")
    make_image(5).save(local / "ok.png")
    settings = ServeSettings(api_key=KEY, max_images=2, max_image_pixels=512 * 512, max_request_bytes=300_000,
                             local_image_dir=local, default_max_tokens=16, max_n=3, max_batch=4)
    srv, thread, url = start_server(create_app(*tiny, settings))
    yield url, local
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def url(server):
    return server[0]


@pytest.fixture(scope="module")
def client(url):
    return OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=30)


def ask(text: str = "How many circles?", image=None) -> list[dict]:
    parts = [{"type": "text", "text": text}]
    if image is not None:
        parts.append({"type": "image_url", "image_url": {"url": data_url(image)}})
    return [{"role": "user", "content": parts}]


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()


def test_models_and_health(client, url):
    assert [m.id for m in client.models.list()] == ["vlmkit"]
    assert client.models.retrieve("vlmkit").id == "vlmkit"
    h = health(url)
    assert h["status"] == "ok" and h["model"] == "vlmkit" and "running" in h


def test_completion_structure_and_usage(client):
    r = client.chat.completions.create(model="vlmkit", messages=ask(image=make_image(1)), max_tokens=8)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "vlmkit"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    ext = choice.message.model_extra["vlmkit"]
    assert ext["boxes"] == [] and ext["image_size"] == [48, 48]
    text_only = client.chat.completions.create(model="vlmkit", messages=ask("Say hi."), max_completion_tokens=4)
    assert text_only.usage.completion_tokens <= 4 and "vlmkit" not in text_only.choices[0].message.model_extra


def test_stream_equals_non_stream(client):
    messages = ask(image=make_image(2))
    whole = client.chat.completions.create(model="vlmkit", messages=messages, max_tokens=12)
    chunks = list(client.chat.completions.create(model="vlmkit", messages=messages, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_raw_sse_ends_with_done(url):
    body = {"model": "vlmkit", "messages": ask("Hi"), "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_multi_turn_system_and_several_images(client, tiny):
    first = ask("What is left?", make_image(3))
    messages = [{"role": "system", "content": "You count shapes."}, *first,
                {"role": "assistant", "content": "Two squares."},
                {"role": "user", "content": [{"type": "text", "text": "And now?"},
                                             {"type": "image_url", "image_url": {"url": data_url(make_image(4))}}]}]
    r = client.chat.completions.create(model="vlmkit", messages=messages, max_tokens=4)
    one_image = client.chat.completions.create(model="vlmkit", messages=messages[:-1] + [
        {"role": "user", "content": "And now?"}], max_tokens=4)
    tokens_per_image = tiny[0].num_image_tokens
    assert r.usage.prompt_tokens >= one_image.usage.prompt_tokens + tokens_per_image  # the second image is in
    assert r.choices[0].message.model_extra["vlmkit"]["image_index"] == 1


def test_n_choices_and_seeded_sampling(client):
    kwargs = dict(model="vlmkit", messages=ask("Hi"), max_tokens=6, n=2, temperature=1.0, seed=7)
    a = client.chat.completions.create(**kwargs)
    b = client.chat.completions.create(**kwargs)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert 2 <= a.usage.completion_tokens <= 12  # both choices are counted
    single = client.chat.completions.create(model="vlmkit", messages=ask("Hi"), max_tokens=6, temperature=1.0, seed=7)
    assert single.choices[0].message.content == a.choices[0].message.content


def test_two_concurrent_streams_are_batched(client, url):
    before = health(url)["prefills"]
    prompts = [ask("First question?", make_image(6)), ask("Second, longer question about it?", make_image(7))]
    expected = [client.chat.completions.create(model="vlmkit", messages=m, max_tokens=24,
                                               extra_body={"ignore_eos": True}).choices[0].message.content
                for m in prompts]
    out: dict[int, str] = {}

    def run(i: int) -> None:
        stream = client.chat.completions.create(model="vlmkit", messages=prompts[i], max_tokens=24, stream=True,
                                                extra_body={"ignore_eos": True})
        out[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [out.get(0), out.get(1)] == expected
    h = health(url)
    assert h["peak_batch"] >= 2 and h["prefills"] >= before + 3


def test_disconnected_stream_stops_decoding(url):
    cancelled = health(url)["cancelled"]
    tokens = health(url)["generated_tokens"]
    body = {"model": "vlmkit", "messages": ask("Tell me a long story."), "max_tokens": 400, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    end = time.monotonic() + 15
    while health(url)["cancelled"] == cancelled or health(url)["running"]:
        assert time.monotonic() < end, "the abandoned request kept decoding"
        time.sleep(0.05)
    assert health(url)["generated_tokens"] - tokens < 400


def test_disconnected_non_streaming_request_is_cancelled(url, monkeypatch):
    # the client leaves after 0.1 s and the server looks every 0.05 s: far sooner than the toy model can
    # decode 400 tokens (with 0.3 s and the default 0.25 s, a fast machine sometimes finished them first)
    monkeypatch.setattr(serve_app, "DISCONNECT_POLL_S", 0.05)
    cancelled = health(url)["cancelled"]
    body = {"model": "vlmkit", "messages": ask("Another long story."), "max_tokens": 400, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                   timeout=httpx.Timeout(30, read=0.1))
    end = time.monotonic() + 15
    while health(url)["cancelled"] == cancelled:
        assert time.monotonic() < end, "the abandoned request kept decoding"
        time.sleep(0.05)


def test_visualglm_endpoint(url):
    image = data_url(make_image(8)).split(",", 1)[1]  # plain base64, as VisualGLM clients send it
    body = {"text": "What is this?", "image": image, "history": [["Hi", "Hello."]], "max_new_tokens": 5}
    r = httpx.post(f"{url}/", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 200
    out = r.json()
    assert set(out) >= {"result", "history", "status", "time"} and out["status"] == 200
    assert out["history"] == [["Hi", "Hello."], ["What is this?", out["result"]]]
    assert len(out["time"]) == 19 and out["vlmkit"]["boxes"] == []
    text_only = httpx.post(f"{url}/", json={"text": "Hello", "image": ""}, timeout=30,
                           headers={"Authorization": f"Bearer {KEY}"})
    assert text_only.status_code == 200 and text_only.json()["history"][-1][0] == "Hello"


def test_local_image_file_inside_the_allowed_directory(client, server):
    _, local = server
    messages = [{"role": "user", "content": [{"type": "text", "text": "What?"},
                                             {"type": "image_url", "image_url": {"url": f"file://{local}/ok.png"}}]}]
    r = client.chat.completions.create(model="vlmkit", messages=messages, max_tokens=2)
    assert r.choices[0].message.model_extra["vlmkit"]["image_size"] == [48, 48]


def test_grounding_boxes_in_the_extension_field(client, tiny, monkeypatch):
    model, processor = tiny
    answer = "the square [[100,200,500,600]]"
    target = processor.tokenizer.encode(answer, add_special_tokens=False) + [processor.tokenizer.eos_token_id]
    original, step = model.forward, [0]

    def scripted(*args, **kwargs):
        if kwargs["input_ids"].shape[1] > 1:
            step[0] = 0
        out = original(*args, **kwargs)
        out.logits = torch.full_like(out.logits, -1e4)
        out.logits[..., target[min(step[0], len(target) - 1)]] = 0.0
        step[0] += 1
        return out

    monkeypatch.setattr(model, "forward", scripted)
    r = client.chat.completions.create(model="vlmkit", messages=ask("Where?", make_image(9)), max_tokens=40)
    assert r.choices[0].message.content == answer
    box = r.choices[0].message.model_extra["vlmkit"]["boxes"][0]
    assert box["phrase"] == "the square"
    assert [box["x0"], box["y0"], box["x1"], box["y1"]] == pytest.approx([4.8, 9.6, 24.0, 28.8])


def test_stream_with_two_choices(client):
    chunks = list(client.chat.completions.create(model="vlmkit", messages=ask("Hi"), max_tokens=5, n=2,
                                                 stream=True, temperature=0.8, seed=3))
    texts, finished = {0: "", 1: ""}, set()
    for c in chunks:
        choice = c.choices[0]
        texts[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finished.add(choice.index)
    assert finished == {0, 1}
    whole = client.chat.completions.create(model="vlmkit", messages=ask("Hi"), max_tokens=5, n=2, temperature=0.8,
                                           seed=3)
    assert [texts[0], texts[1]] == [c.message.content for c in whole.choices]
