"""Copy a trained run's model into the package as the embedded default model (weights only, no training state).

    python scripts/ship_default_model.py runs/default_stage5/final  # or a checkpoint-<step> directory

The model is loaded and saved again with `vlmkit.save`, so only the model files land in
src/vlmkit/assets/default_model/ (config, safetensors weights, tokenizer, template, image settings). Its name
and description are configs/default/model.yaml's (the run's config keeps the ones it was started with).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import vlmkit
from vlmkit.config import VLMConfig

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "src" / "vlmkit" / "assets" / "default_model"
RECIPE_MODEL = ROOT / "configs" / "default" / "model.yaml"
MAX_BYTES = 30 * 2**20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir", help="a run's final/ or checkpoint-<step>/ directory")
    args = p.parse_args()
    model, processor = vlmkit.load(args.model_dir)
    recipe = VLMConfig.from_file(RECIPE_MODEL)
    model.config.name, model.config.description = recipe.name, recipe.description
    vlmkit.save(model, processor, TARGET)
    size = sum(f.stat().st_size for f in TARGET.rglob("*") if f.is_file())
    print(f"shipped {args.model_dir} -> {TARGET} ({size / 2**20:.1f} MiB)")
    if size > MAX_BYTES:
        print(f"error: the default model must stay under {MAX_BYTES // 2**20} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
