"""`vlmkit demo`: the main job a new user meets first.

Until the embedded default model ships, it builds the `llava-tiny` preset, runs one training step's forward and
backward on a synthetic image, saves and reloads the model and checks the logits are identical.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..api import build, load, save


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the out-of-the-box demo")
    p.add_argument("--preset", default="llava-tiny", help="preset to build (default: llava-tiny)")
    p.set_defaults(run=run)


def synthetic_image(size: int = 64) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([8, 8, 28, 28], fill="red")
    d.ellipse([34, 30, 58, 54], fill="blue")
    return img


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model, processor = build(args.preset)
    print(f"built {args.preset} in {time.perf_counter() - t0:.2f}s: "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{model.num_image_tokens} tokens per image")
    messages = [
        {"role": "user", "content": "<image>\nWhat shapes are in the picture?"},
        {"role": "assistant", "content": "A red square and a blue circle."},
    ]
    batch = processor(images=[synthetic_image()], messages=messages)
    out = model(**batch, labels=batch["labels"])
    out.loss.backward()
    print(f"forward + backward: loss {out.loss.item():.4f} over {int((batch['labels'] != -100).sum())} label tokens")
    with tempfile.TemporaryDirectory() as tmp:
        save(model, processor, Path(tmp) / "model")
        model2, _ = load(Path(tmp) / "model")
        with torch.no_grad():
            same = torch.equal(model.eval()(**batch).logits, model2(**batch).logits)
    print(f"save -> load: logits identical: {same}")
    print(f"done in {time.perf_counter() - t0:.2f}s")
    return 0 if same else 1
