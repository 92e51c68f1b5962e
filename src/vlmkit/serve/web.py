"""The Gradio web demo: layout and event wiring over `web_chat.DemoChat` (which holds all the behaviour).

Upload an image, chat over several turns with the answer streamed in, sampling sliders, the answer's grounding
boxes drawn on the image, clear / regenerate, and an adapter picker when the model directory holds several
adapters. Generation events share one queue slot, so turns of all users run one after another on the model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from ..errors import VlmkitError  # noqa: E402
from .web_chat import DemoChat, ModelPool, sampling  # noqa: E402

TITLE = "vlmkit web demo"
INTRO = ("Upload an image, then ask about it; later messages continue the conversation (they may be text "
         "only). Boxes the model names are drawn on the image below.")
Chat = list[dict[str, Any]]


def build_demo(pool: ModelPool, max_new_tokens: int = 256) -> gr.Blocks:
    """The demo's Blocks (call `.queue().launch(...)` or `launch_demo`)."""
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        state = gr.State(None)
        gr.Markdown(f"## {TITLE}\n{INTRO}")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard"], elem_id="vlmkit-image")
                boxes = gr.Image(type="pil", label="Boxes in the answer", interactive=False, format="png",
                                 elem_id="vlmkit-boxes")
                adapter = gr.Dropdown(pool.adapters, value=pool.default, label="Adapter (task LoRA)",
                                      visible=len(pool.adapters) > 1, elem_id="vlmkit-adapter")
                with gr.Accordion("Sampling", open=False):
                    sliders = [
                        gr.Slider(1, 2048, value=max_new_tokens, step=1, label="Max new tokens"),
                        gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)"),
                        gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p"),
                        gr.Slider(0, 200, value=0, step=1, label="Top-k (0 = off)"),
                        gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty"),
                    ]
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Chat", height=420, elem_id="vlmkit-chat")
                text = gr.Textbox(label="Message", placeholder="Ask about the image...", elem_id="vlmkit-input")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="vlmkit-send")
                    regen = gr.Button("Regenerate", elem_id="vlmkit-regenerate")
                    clear = gr.Button("Clear", elem_id="vlmkit-clear")

        def on_send(message: str, img: Image.Image | None, chat: Chat | None, st: DemoChat | None,
                    name: str | None, *values: float) -> Iterator[tuple]:
            yield from _send(pool, message, img, chat or [], st, name, values)

        def on_regenerate(chat: Chat | None, st: DemoChat | None, *values: float) -> Iterator[tuple]:
            yield from _regenerate(chat or [], st, values)

        def on_clear(st: DemoChat | None) -> tuple:
            if st is not None:
                st.clear()
            return [], None, st, ""

        def on_adapter(name: str | None) -> tuple:
            return [], None, DemoChat.new(pool, name), ""

        outputs = [chatbot, boxes, state, text]
        for trigger in (send.click, text.submit):
            trigger(on_send, [text, image, chatbot, state, adapter, *sliders], outputs,
                    concurrency_id="generate", concurrency_limit=1)
        regen.click(on_regenerate, [chatbot, state, *sliders], outputs, concurrency_id="generate",
                    concurrency_limit=1)
        clear.click(on_clear, [state], outputs)
        adapter.change(on_adapter, [adapter], outputs)
    return demo


def _send(pool: ModelPool, message: str, img: Image.Image | None, chat: Chat, st: DemoChat | None,
          adapter: str | None, values: tuple[float, ...]) -> Iterator[tuple]:
    message = (message or "").strip()
    if st is None or st.adapter != (adapter if adapter is not None else pool.default):
        st = DemoChat.new(pool, adapter)
    if not message:
        yield chat, st.boxes_image(), st, ""
        return
    note = " (image attached)" if img is not None and st.last_image is None else ""
    chat = chat + [{"role": "user", "content": message + note}]
    yield from _stream(chat, st, st.ask(message, img, sampling(*values)))


def _regenerate(chat: Chat, st: DemoChat | None, values: tuple[float, ...]) -> Iterator[tuple]:
    if st is None or not st.turns:
        yield chat, None, st, ""
        return
    if chat and chat[-1]["role"] == "assistant":
        chat = chat[:-1]
    yield from _stream(chat, st, st.regenerate(sampling(*values)))


def _stream(chat: Chat, st: DemoChat, deltas: Iterator[str]) -> Iterator[tuple]:
    """Append the assistant's answer to `chat` as it streams; draw the boxes at the end."""
    answer = ""
    chat = chat + [{"role": "assistant", "content": ""}]
    try:
        for delta in deltas:
            answer += delta
            chat[-1] = {"role": "assistant", "content": answer}
            yield chat, None, st, ""
    except VlmkitError as e:
        raise gr.Error(str(e)) from None
    chat[-1] = {"role": "assistant", "content": st.answer}
    yield chat, st.boxes_image(), st, ""


def launch_demo(pool: ModelPool, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
                block: bool = True, max_new_tokens: int = 256) -> gr.Blocks:
    """Build and serve the demo; with `block=False` return at once (the caller closes it with `.close()`)."""
    demo = build_demo(pool, max_new_tokens)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=not block,
                show_error=True)
    return demo
