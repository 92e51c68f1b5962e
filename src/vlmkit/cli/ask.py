"""`vlmkit ask`: one question about one image, answered by the generation engine; grounding boxes are drawn.

Also owns what `vlmkit chat` shares with it: the `--model` resolution (model directory, preset, or the packaged
default model), the sampling flags (named like the seeds' cli_demo.py) and opening a user's image safely
(size checked from the header before anything is decoded).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from ..api import build, list_presets, load
from ..errors import VlmkitError
from ..generation import Engine, GenerationConfig, Request, default_model_dir, draw_boxes, parse_boxes
from ..models.vlm import VLMModel
from ..processing import VLMProcessor

MAX_PIXELS = 40_000_000


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="answer one question about an image",
                       description="Answer one question about an image; boxes in the answer are drawn.")
    add_model_args(p)
    p.add_argument("--image", required=True, metavar="PATH", help="the image to ask about")
    p.add_argument("--json", action="store_true",
                   help='print {"answer", "boxes", "finish_reason", "usage"} as JSON')
    p.add_argument("--boxes-out", metavar="PNG",
                   help="where to write the image with the answer's boxes drawn (default: ./<image>_boxes.png)")
    add_sampling_args(p)
    p.add_argument("question", help="the question")
    p.set_defaults(run=run)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR_OR_PRESET",
                   help="model directory saved by vlmkit, or a preset (random weights); default: the packaged model")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (greedy unless --temperature, --top_p, --top_k or --do-sample is given)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="most answer tokens (default 128)")
    g.add_argument("--max_length", type=int, default=None, help="most prompt + answer tokens")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (> 0)")
    g.add_argument("--top_p", type=float, default=None, help="nucleus sampling threshold in (0, 1]")
    g.add_argument("--top_k", type=int, default=None, help="sample among the k most likely tokens (0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeats (1 = off)")
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")


def generation_config(args: argparse.Namespace) -> GenerationConfig:
    """The `GenerationConfig` the sampling flags describe (flags left out keep the defaults)."""
    flags = {"max_new_tokens": args.max_new_tokens, "max_length": args.max_length,
             "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
             "repetition_penalty": args.repetition_penalty, "seed": args.seed}
    given = {k: v for k, v in flags.items() if v is not None}
    sample = args.do_sample or any(k in given for k in ("temperature", "top_p", "top_k"))
    return GenerationConfig(do_sample=sample, **given)


def model_directory(spec: str | None) -> Path | None:
    """The directory a model spec loads from: the packaged default model for None, else `spec` if it is a
    directory; None for anything else (a preset name, or a typo)."""
    path = default_model_dir() if spec is None else Path(spec).expanduser()
    return path if path.is_dir() else None


def resolve_model(spec: str | None, device: str | None = None) -> tuple[VLMModel, VLMProcessor]:
    """A model directory -> `load`; a preset name -> `build` (untrained); None -> the packaged default model."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if spec is None:
        return load(default_model_dir(), device=device)
    path = model_directory(spec)
    if path is not None:
        return load(path, device=device)
    if spec in list_presets():
        print(f"note: '{spec}' is a preset; it is built with random weights, so answers are noise",
              file=sys.stderr)
        model, processor = build(spec)
        return model.to(device).eval(), processor
    raise VlmkitError(f"model directory not found: {spec} (pass a directory saved by vlmkit, or a preset: "
                      f"{', '.join(list_presets())})")


def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image as RGB, refusing files over `max_pixels` from the header alone (nothing decoded yet)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise VlmkitError(f"image file not found: {p}")
    try:
        with Image.open(p) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise VlmkitError(f"image {p} is {width}x{height} ({width * height / 1e6:.0f} megapixels); the "
                                  f"limit is {max_pixels / 1e6:.0f} megapixels: downscale it first")
            return im.convert("RGB")
    except Image.DecompressionBombError:
        raise VlmkitError(f"image {p} is too large to open safely; downscale it first") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VlmkitError(f"cannot read image {p}: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def boxes_path(args: argparse.Namespace) -> Path:
    return Path(args.boxes_out) if args.boxes_out else Path.cwd() / f"{Path(args.image).stem}_boxes.png"


def save_image(image: Image.Image, path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    except (OSError, ValueError) as e:
        raise VlmkitError(f"cannot write {path}: {_one_line(e)}") from None
    return path


def run(args: argparse.Namespace) -> int:
    image = open_image(args.image)
    config = generation_config(args)
    model, processor = resolve_model(args.model, args.device)
    request = Request([{"role": "user", "content": args.question}], [image])
    result = Engine(model, processor).generate([request], config)[0]
    boxes = parse_boxes(result.text, *image.size)
    drawn = None
    if boxes and (args.boxes_out or not args.json):
        drawn = save_image(draw_boxes(image, boxes), boxes_path(args))
    if args.json:
        out: dict[str, Any] = {"answer": result.text, "boxes": [b.to_dict() for b in boxes],
                               "finish_reason": result.finish_reason, "usage": result.usage}
        if drawn is not None:
            out["boxes_image"] = str(drawn)
        print(json.dumps(out, ensure_ascii=False))
        return 0
    print(result.text)
    if drawn is not None:
        print(f"boxes drawn: {drawn}")
    return 0
