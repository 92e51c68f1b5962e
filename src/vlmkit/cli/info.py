"""`vlmkit info SPEC`: build a preset / config / model directory and print its parts and parameter counts."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import build, list_presets, load


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a model's architecture and parameter counts",
                       description="Build a preset, YAML config or saved model directory and describe it.")
    p.add_argument("spec", nargs="?", help="preset name, config file or model directory (omit to list presets)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.spec:
        print("presets:", ", ".join(list_presets()))
        return 0
    path = Path(args.spec)
    if path.is_dir():
        model, processor = load(path)
    else:
        model, processor = build(args.spec, args.set)
    cfg = model.config
    print(f"model: {cfg.name or args.spec}")
    print(f"  vision    : {cfg.vision.type} {cfg.vision.image_size}px, patch {cfg.vision.patch_size}, "
          f"{model.vision_tower.num_patches} features x {model.vision_tower.hidden_size}")
    print(f"  connector : {cfg.connector.type} -> {model.num_image_tokens} tokens per image")
    print(f"  language  : {cfg.language.type}, vocab {len(processor.tokenizer)}")
    print(f"  template  : {processor.template.name}")
    print(f"{'component':<16}{'parameters':>14}{'trainable':>14}")
    for name, (total, trainable) in model.parameter_counts().items():
        print(f"{name:<16}{total:>14,}{trainable:>14,}")
    return 0
