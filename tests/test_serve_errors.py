"""Every bad input and limit answers 4xx with an OpenAI-style error naming the problem, and the server keeps serving."""

from __future__ import annotations

import base64
import http.server
import io
import struct
import threading
import zlib

import httpx
import openai
import pytest
from PIL import Image

import test_serve_api as api
from conftest import make_image
from test_serve_api import KEY, ask, data_url
from vlmkit.serve import ServeSettings
from vlmkit.serve.errors import APIError
from vlmkit.serve.images import image_from_url

tiny, server, url, client = api.tiny, api.server, api.url, api.client  # the same live server fixtures


def huge_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny file whose header claims a huge image (a decompression bomb is refused before decoding)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_msg(url_: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "?"},
                                         {"type": "image_url", "image_url": {"url": url_}}]}]


GOOD = {"model": "vlmkit", "messages": ask("Hi"), "max_tokens": 2}
PNG = data_url(make_image(0))
TRUNCATED = "data:image/png;base64," + b64(base64.b64decode(PNG.split(",")[1])[:60])

CASES = {  # name: (body changes, status, param, code)
    "bad base64": ({"messages": image_msg("data:image/png;base64,@@not base64@@")}, 400, None, "invalid_base64"),
    "not an image": ({"messages": image_msg("data:image/png;base64," + b64(b"hello world"))}, 400, None,
                     "invalid_image"),
    "corrupt image": ({"messages": image_msg(TRUNCATED)}, 400, None, "invalid_image"),
    "huge image": ({"messages": image_msg("data:image/png;base64," + b64(huge_png()))}, 400, None,
                   "image_too_large"),
    "too many pixels": ({"messages": image_msg(data_url(Image.new("RGB", (600, 600))))}, 400, None,
                        "image_too_large"),
    "too many images": ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]
                                       * 3}]}, 400, "messages", "too_many_images"),
    "remote url": ({"messages": image_msg("http://127.0.0.1:9/x.png")}, 400, None, "image_url_not_allowed"),
    "local file outside": ({"messages": image_msg("file:///etc/hostname")}, 400, None, "image_url_not_allowed"),
    "unknown scheme": ({"messages": image_msg("ftp://x/y.png")}, 400, None, "invalid_image_url"),
    "unknown model": ({"model": "gpt-4o"}, 404, "model", "model_not_found"),
    "missing model": ({"model": None}, 400, "model", None),
    "messages not a list": ({"messages": "hi"}, 400, "messages", None),
    "empty messages": ({"messages": []}, 400, "messages", None),
    "content of wrong type": ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", None),
    "bad role": ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", None),
    "bad part type": ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400,
                      "messages[0].content[0].type", None),
    "last message not user": ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
                              400, "messages[1].role", None),
    "max_tokens text": ({"max_tokens": "ten"}, 400, "max_tokens", None),
    "max_tokens zero": ({"max_tokens": 0}, 400, "max_tokens", None),
    "temperature text": ({"temperature": "hot"}, 400, "temperature", None),
    "temperature too high": ({"temperature": 5}, 400, "temperature", None),
    "top_p zero": ({"top_p": 0}, 400, "top_p", None),
    "stop of wrong type": ({"stop": 3}, 400, "stop", None),
    "seed negative": ({"seed": -1}, 400, "seed", None),
    "n too large": ({"n": 50}, 400, "n", None),
    "stream not bool": ({"stream": "yes"}, 400, "stream", None),
    "stream_options without stream": ({"stream_options": {"include_usage": True}}, 400, "stream_options", None),
    "context exceeded": ({"max_tokens": 100000}, 400, "max_tokens", "context_length_exceeded"),
    "long prompt": ({"messages": ask("word " * 3000)}, 400, "messages", "context_length_exceeded"),
    "marker without image": ({"messages": ask("<image> here")}, 400, "messages", None),
    "tools": ({"tools": [{"type": "function"}]}, 400, "tools", "unsupported_parameter"),
}


def post(url_: str, json=None, content=None, headers=None, path="/v1/chat/completions") -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    return httpx.post(f"{url_}{path}", json=json, content=content, headers=headers, timeout=30)


def assert_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


def assert_still_serving(url_: str) -> None:
    r = post(url_, json=GOOD)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_is_4xx_and_the_next_one_works(url, name):
    changes, status, param, code = CASES[name]
    body = {**GOOD, **changes}
    err = assert_error(post(url, json=body), status, param, code)
    assert err["type"] == "invalid_request_error"
    assert_still_serving(url)


def test_transport_level_errors(url):
    assert_error(post(url, content=b"{not json", headers={"Content-Type": "application/json"}), 400)
    assert_error(post(url, content=b"[1, 2]"), 400)
    assert_error(post(url, content=b"x" * 400_000), 413, code="request_too_large")
    assert_error(httpx.get(f"{url}/v1/nothing-here", timeout=10), 404)
    assert_error(httpx.get(f"{url}/v1/chat/completions", timeout=10), 405)
    assert_still_serving(url)


def test_auth(url):
    assert_error(httpx.post(f"{url}/v1/chat/completions", json=GOOD, timeout=10), 401, code="invalid_api_key")
    assert_error(post(url, json=GOOD, headers={"Authorization": "Bearer wrong"}), 401, code="invalid_api_key")
    assert_error(post(url, json=GOOD, headers={"Authorization": f"Basic {KEY}"}), 401)
    assert_error(httpx.get(f"{url}/v1/models", timeout=10), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # no key needed
    assert_still_serving(url)


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=ask("x"))
    with pytest.raises(openai.BadRequestError, match="base64"):
        client.chat.completions.create(model="vlmkit", messages=image_msg("data:image/png;base64,%%%"))


def test_visualglm_errors_keep_a_status(url):
    r = post(url, json={"text": "hi", "image": "@@@"}, path="/")
    assert_error(r, 400, "image", "invalid_base64")
    assert r.json()["status"] == 400
    assert_error(post(url, json={"image": ""}, path="/"), 400, "text")
    assert_error(post(url, json={"text": "hi", "history": [["only question"]]}, path="/"), 400, "history")
    assert_error(post(url, json={"text": "hi", "max_length": 3}, path="/"), 400, "max_length")
    assert_error(httpx.post(f"{url}/", json={"text": "hi"}, timeout=10), 401)
    assert_still_serving(url)


def test_remote_images_only_when_enabled():
    buf = io.BytesIO()
    make_image(1).save(buf, "PNG")
    payload = buf.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        link = f"http://127.0.0.1:{httpd.server_address[1]}/img.png"
        with pytest.raises(APIError, match="disabled"):
            image_from_url(link, ServeSettings(), "p")
        assert image_from_url(link, ServeSettings(allow_remote_images=True), "p").size == (48, 48)
    finally:
        httpd.shutdown()
