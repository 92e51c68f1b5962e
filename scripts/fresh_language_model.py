"""Keep a model's vision tower and connector, start its language model again from random weights.

    python scripts/fresh_language_model.py runs/default_stage3/final runs/default_stage4_init [--seed 0]

A recipe step of the embedded default model (configs/default/stage4.yaml): the stage-3 LM has settled on
"answer about the leftmost object" and does not leave it, while a fresh LM trained on the same image tokens,
frozen, learns to look objects up by their words within a few hundred steps. The output is an ordinary vlmkit
model directory (same config, tokenizer and template) whose `language_model.*` weights are new.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import vlmkit
from vlmkit.models.vlm import VLMModel

LANGUAGE_PREFIX = "language_model."


def fresh_language_model(source: str | Path, output: str | Path, seed: int = 0) -> tuple[int, int]:
    """Write `source` to `output` with its language model re-initialised; returns (kept, fresh) tensor counts."""
    model, processor = vlmkit.load(source)
    torch.manual_seed(seed)
    fresh = VLMModel(model.resolved_config(), processor.tokenizer)
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith(LANGUAGE_PREFIX)}
    missing, unexpected = fresh.load_state_dict(kept, strict=False)
    if unexpected or any(not k.startswith(LANGUAGE_PREFIX) for k in missing):
        raise RuntimeError(f"{source}: weights do not fit its own config (unexpected {unexpected[:3]}, "
                           f"missing {[k for k in missing if not k.startswith(LANGUAGE_PREFIX)][:3]})")
    vlmkit.save(fresh, processor, output)
    return len(kept), len(missing)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("source", help="a vlmkit model directory (a run's final/ or checkpoint-<step>/)")
    p.add_argument("output", help="where to write the model with a fresh language model")
    p.add_argument("--seed", type=int, default=0, help="seed of the language model's initialisation")
    args = p.parse_args()
    kept, fresh = fresh_language_model(args.source, args.output, args.seed)
    print(f"{args.output}: kept {kept} vision/connector tensors, re-initialised {fresh} language-model tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
