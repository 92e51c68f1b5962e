"""`vlmkit web`: the Gradio web demo (image upload, streaming multi-turn chat, boxes, adapter picker)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import VlmkitError
from .ask import add_model_args
from .serve import add_adapter_arg, load_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("web", help="chat with a model in the browser (Gradio demo)",
                       description="Start the Gradio web demo: upload an image, chat with streaming answers, "
                                   "sampling sliders, grounding boxes drawn, clear / regenerate, and an adapter "
                                   "picker when the model directory has several adapters.")
    add_model_args(p)
    add_adapter_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="initial value of the length slider")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from ..serve.web import launch_demo
        from ..serve.web_chat import ModelPool, list_adapters
    except ImportError as e:
        raise VlmkitError(f"the web demo needs the 'serve' extra ({e.name} is missing): "
                          "pip install 'vlmkit[serve]'") from None
    is_dir = args.model is not None and Path(args.model).expanduser().is_dir()
    adapters = list_adapters(args.model) if is_dir else []
    if args.adapter is not None and args.adapter not in adapters:
        raise VlmkitError(f"no adapter '{args.adapter}' in {args.model} (adapters there: "
                          f"{', '.join(adapters) or 'none'})")
    pool = ModelPool(lambda name: load_model(args.model, args.device, name), adapters, args.adapter)
    pool.get()  # load now: errors show before the server starts
    print(f"vlmkit: web demo on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    launch_demo(pool, args.host, args.port, args.share, block=True, max_new_tokens=args.max_new_tokens)
    return 0
