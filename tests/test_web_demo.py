"""The Gradio web demo: its chat logic, the adapter picker, and the real page in headless Chromium (Playwright).

The browser is Debian's `chromium` package (never downloaded by Playwright): when /usr/bin/chromium is missing and
the tests run as root, the session fixture installs it with apt-get; the browser test is skipped, with the
reason, only when that is impossible.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vlmkit
from conftest import make_image
from vlmkit.generation import GenerationConfig

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")
from vlmkit.serve.web import build_demo  # noqa: E402
from vlmkit.serve.web_chat import DemoChat, ModelPool, list_adapters  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # pandas 3 deprecations in gradio
CHROMIUM = Path(os.environ.get("VLMKIT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ANSWER = "The circle is at [[100,100,600,600]]."
GREEDY = GenerationConfig(max_new_tokens=8)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing (as root); skip only when that cannot be done."""
    if CHROMIUM.is_file():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get): "
                    "apt-get install -y chromium")
    cmd = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium"
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0 or not CHROMIUM.is_file():
        pytest.skip(f"'{cmd}' exited with {done.returncode} and {CHROMIUM} is still missing: "
                    f"{done.stderr[-500:]}")
    return CHROMIUM


@pytest.fixture(scope="module")
def tiny():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    yield model.eval(), processor
    torch.set_num_threads(threads)


def scripted(model, processor, answer: str, delay: float = 0.0):
    """Make `model` answer `answer` (then eos) from every new prompt; the real forward still runs."""
    target = processor.tokenizer.encode(answer, add_special_tokens=False) + [processor.tokenizer.eos_token_id]
    original, step = model.forward, [0]

    def forward(*args, **kwargs):
        if kwargs["input_ids"].shape[1] > 1:  # a prompt, not a decode step
            step[0] = 0
        out = original(*args, **kwargs)
        out.logits = torch.full_like(out.logits, -1e4)
        out.logits[..., target[min(step[0], len(target) - 1)]] = 0.0
        step[0] += 1
        time.sleep(delay)
        return out

    model.forward = forward
    return model


def test_chat_turns_regenerate_and_clear(tiny):
    chat = DemoChat.new(ModelPool(lambda name: tiny), None)
    first = "".join(chat.ask("Hello there", None, GREEDY))
    assert first == chat.answer and chat.session.images == [] and chat.boxes_image() is None
    image = make_image(1)
    second = "".join(chat.ask("And this?", image, GREEDY))
    assert len(chat.session.images) == 1 and len(chat.session.history) == 4
    "".join(chat.ask("Once more?", image.copy(), GREEDY))  # the same picture is not attached again
    assert len(chat.session.images) == 1 and len(chat.session.history) == 6
    again = "".join(chat.regenerate(GREEDY))
    assert len(chat.session.history) == 6 and again == chat.answer
    assert second and chat.session.history[-1].content == again
    chat.clear()
    assert chat.session.history == [] and chat.turns == [] and chat.last_image is None


def test_adapter_picker(tmp_path, tiny):
    for name in ("captions", "counting"):
        (tmp_path / "adapters" / name).mkdir(parents=True)
        (tmp_path / "adapters" / name / "adapter_config.json").write_text("{}")
    (tmp_path / "adapters" / "junk").mkdir()
    assert list_adapters(tmp_path) == ["captions", "counting"] and list_adapters(tmp_path / "none") == []
    loaded: list[str | None] = []
    pool = ModelPool(lambda name: loaded.append(name) or tiny, list_adapters(tmp_path))
    assert pool.get() == tiny and pool.get("captions") == tiny and pool.get("counting") == tiny
    assert loaded == ["captions", "counting"]  # loaded once per switch
    pickers = [b for b in build_demo(pool).blocks.values() if getattr(b, "elem_id", None) == "vlmkit-adapter"]
    assert pickers[0].visible and pickers[0].choices == [("captions", "captions"), ("counting", "counting")]
    single = [b for b in build_demo(ModelPool(lambda name: tiny)).blocks.values()
              if getattr(b, "elem_id", None) == "vlmkit-adapter"]
    assert not single[0].visible


def test_adapter_switch_loads_each_adapter(tmp_path):
    from vlmkit.cli.serve import load_model
    from vlmkit.train.config import LoraConfig, PeftConfig
    from vlmkit.train.peft import apply_peft, save_adapter

    torch.manual_seed(0)
    base, processor = vlmkit.build("llava-tiny")
    vlmkit.save(base, processor, tmp_path / "base")
    vlmkit.save(base, processor, tmp_path)
    for name in ("counting", "captions"):
        model, _ = vlmkit.load(tmp_path / "base")
        apply_peft(model, PeftConfig(method="lora"), LoraConfig(rank=4))
        with torch.no_grad():
            for key, p in model.named_parameters():
                if "lora_B" in key:
                    p.normal_(std=2.0)
        save_adapter(model, tmp_path, name)
    pool = ModelPool(lambda name: load_model(str(tmp_path), "cpu", name), list_adapters(tmp_path))
    assert pool.adapters == ["captions", "counting"] and pool.default == "captions"
    answers = {}
    for name in pool.adapters:
        chat = DemoChat.new(pool, name)
        answers[name] = chat.session.engine.generate([([{"role": "user", "content": "Hi"}], [])], GREEDY)[0]
    assert answers["captions"].token_ids != answers["counting"].token_ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(tiny):
    model, processor = vlmkit.build("llava-tiny")
    scripted(model.eval(), processor, ANSWER, delay=0.03)
    demo = build_demo(ModelPool(lambda name: (model, processor)))
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}"
    demo.close()


def chat_texts(page) -> list[str]:
    return [t.strip() for t in page.locator("#vlmkit-chat .message-row").all_inner_texts()]


def test_browser_upload_ask_stream_and_box(chromium, demo_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    make_image(1, 64).save(tmp_path / "shapes.png")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(demo_url)
            page.set_input_files("#vlmkit-image input[type=file]", str(tmp_path / "shapes.png"))
            page.wait_for_selector("#vlmkit-image img", timeout=15000)
            page.fill("#vlmkit-input textarea", "Where is the circle?")
            page.click("#vlmkit-send")
            seen = watch_answer(page, ANSWER)
            assert any(s and s != ANSWER and ANSWER.startswith(s) for s in seen), f"not streamed: {seen}"
            box_src = page.wait_for_selector("#vlmkit-boxes img", timeout=15000).get_attribute("src")
            assert red_pixels(urllib.request.urlopen(box_src, timeout=10).read()) > 50
            page.fill("#vlmkit-input textarea", "And now without a new image?")  # a text-only turn
            page.click("#vlmkit-send")
            watch_answer(page, ANSWER, turns=2)
            texts = chat_texts(page)
            assert "(image attached)" in texts[0] and "(image attached)" not in texts[2]
        finally:
            browser.close()


def watch_answer(page, answer: str, turns: int = 1, timeout: float = 30.0) -> list[str]:
    """Poll the last chat message until it equals `answer`; returns every distinct text it showed."""
    seen: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        texts = chat_texts(page)
        if len(texts) >= 2 * turns:
            if not seen or seen[-1] != texts[-1]:
                seen.append(texts[-1])
            if texts[-1] == answer:
                return seen
        time.sleep(0.02)
    raise AssertionError(f"the answer never completed; saw {seen}")


def red_pixels(png: bytes) -> int:
    """Pixels of the first box colour (#e6194b) in an image."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)  # [H, W, 3]
    return int((np.abs(pixels - np.array([0xE6, 0x19, 0x4B])).max(-1) < 8).sum())
