"""`vlmkit merge-lora MODEL_DIR [--adapter NAME] --out DIR`: fold a LoRA / QLoRA adapter into the weights.

The output is a plain model directory (no `adapters/`; loading it needs neither peft adapters nor
bitsandbytes) whose outputs match the adapted model's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import load, save
from ..errors import VlmkitError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge-lora", help="merge a LoRA adapter into the base weights",
                       description="Load MODEL_DIR with one of its adapters (adapters/<name>/), merge the "
                                   "LoRA weights into the base weights and write a plain model directory.")
    p.add_argument("model_dir", help="model directory holding adapters/<name>/")
    p.add_argument("--adapter", default=None, metavar="NAME",
                   help="adapter to merge (default: the only adapter in MODEL_DIR)")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the merged model")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..train.peft import adapter_method, adapter_name, merge_lora

    model_dir, out = Path(args.model_dir), Path(args.out)
    if out.resolve() == model_dir.resolve():
        raise VlmkitError("--out must differ from MODEL_DIR (its adapters would no longer fit the weights)")
    model, processor = load(model_dir, adapter=args.adapter)
    method = adapter_method(model)
    if method == "none":
        raise VlmkitError(f"{model_dir} has no adapter to merge (expected {model_dir / 'adapters'}/<name>/)")
    name = adapter_name(model)
    merge_lora(model)
    save(model, processor, out)
    print(f"merged {method} adapter '{name}' of {model_dir} into {out}")
    return 0
