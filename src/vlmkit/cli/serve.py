"""`vlmkit serve`: the OpenAI-compatible HTTP API (plus the VisualGLM-6B endpoint) for one model, via uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import VlmkitError
from .ask import add_model_args

if TYPE_CHECKING:
    from ..models.vlm import VLMModel
    from ..processing import VLMProcessor

API_KEY_ENV = "VLMKIT_API_KEY"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                       description="Serve a model: POST /v1/chat/completions (OpenAI-compatible, streaming, "
                                   "continuous batching), GET /v1/models, GET /health and the VisualGLM-6B "
                                   "endpoint POST /.")
    add_model_args(p)
    add_adapter_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} when set, else no key)")
    p.add_argument("--served-model-name", default="vlmkit", help="the model id clients use (default vlmkit)")
    p.add_argument("--max-batch", type=int, default=8, help="most requests decoded together (default 8)")
    p.add_argument("--max-tokens", type=int, default=512,
                   help="answer length when a request gives no max_tokens (default 512, capped by the context)")
    p.add_argument("--max-images", type=int, default=4, help="most images per request (default 4)")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                   help="largest image, width x height (default 4096x4096)")
    p.add_argument("--max-request-mb", type=float, default=32.0, help="largest request body in MiB (default 32)")
    p.add_argument("--allow-remote-images", action="store_true",
                   help="let the server fetch http(s) image URLs (default: only inline data: URLs)")
    p.add_argument("--local-image-dir", metavar="DIR", default=None,
                   help="accept file:// image URLs for files inside DIR (default: refused)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch's operators (default: torch's choice; 1 suits small models on "
                        "busy CPUs)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=run)


def add_adapter_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", metavar="NAME", default=None,
                   help="adapter of the model directory to apply (adapters/NAME); needed when there are several")


def load_model(spec: str | None, device: str | None, adapter: str | None) -> tuple[VLMModel, VLMProcessor]:
    """`resolve_model`, with `--adapter` for model directories."""
    from ..api import load
    from .ask import resolve_model

    if adapter is not None:
        if spec is None or not Path(spec).expanduser().is_dir():
            raise VlmkitError("--adapter needs --model with a model directory")
        import torch

        return load(Path(spec).expanduser(), device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
                    adapter=adapter)
    return resolve_model(spec, device)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve import ServeSettings
        from ..serve.app import create_app
    except ImportError as e:
        raise VlmkitError(f"serving needs the 'serve' extra ({e.name} is missing): "
                          "pip install 'vlmkit[serve]'") from None
    local_dir = Path(args.local_image_dir) if args.local_image_dir else None
    settings = ServeSettings(
        model_name=args.served_model_name, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_batch=args.max_batch, max_request_bytes=int(args.max_request_mb * 2**20), max_images=args.max_images,
        max_image_pixels=args.max_image_pixels, allow_remote_images=args.allow_remote_images,
        local_image_dir=local_dir, default_max_tokens=args.max_tokens,
    )
    if args.threads is not None:
        if args.threads < 1:
            raise VlmkitError(f"--threads {args.threads}: give a number >= 1")
        import torch

        torch.set_num_threads(args.threads)
    model, processor = load_model(args.model, args.device, args.adapter)
    app = create_app(model, processor, settings)
    key_note = "an API key is required" if settings.api_key else "no API key required"
    print(f"vlmkit: serving '{settings.model_name}' on http://{args.host}:{args.port}/v1 ({key_note})",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
