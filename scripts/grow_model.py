"""Deepen a trained model without changing what it computes: more ResNet blocks, more LM layers, as identities.

    python scripts/grow_model.py runs/default_stage13/final runs/grown_init --vision-depth 6

Adds capacity to a model that has settled (the README's default-model section reports two tries with it on the
embedded default model). Every weight of `source` is kept; the new residual blocks start as identities, so the
grown model answers exactly as `source` did and training adds capacity from there (Net2DeeperNet; the zero-initialised last norm of each block as in Goyal et al.'s ResNets):
- `--vision-depth N`: the ResNet tower's last stage gets N basic blocks; each new block's last batch-norm scale is
  zero, so the block adds nothing to its skip connection.
- `--language-layers M`: the LM gets M decoder layers; the new ones (appended on top) have zero output projections
  (`o_proj`, `down_proj`), so each adds nothing to the residual stream.
The output is an ordinary vlmkit model directory (config, tokenizer, template); the script checks that it gives
the source's logits on a probe batch before it writes anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import vlmkit
from vlmkit.api import saved_config
from vlmkit.config import VLMConfig
from vlmkit.errors import ConfigError
from vlmkit.models.vlm import VLMModel
from vlmkit.processing import VLMProcessor

VISION_STAGES = "vision_tower.model.encoder.stages."
LANGUAGE_LAYERS = "language_model.model.layers."
ZERO_IN_NEW_LANGUAGE_LAYERS = ("self_attn.o_proj.", "mlp.down_proj.")


def growth_overrides(config: VLMConfig, vision_depth: int | None, language_layers: int | None) -> list[str]:
    """`a.b=c` overrides (as `vlmkit.load` takes them) giving the last tower stage `vision_depth` blocks and the LM
    `language_layers` layers; refuses anything that is not growth."""
    overrides = []
    if vision_depth is not None:
        hf = config.vision.hf_config or {}
        if config.vision.type != "resnet" or "depths" not in hf or hf.get("layer_type") != "basic":
            raise ConfigError(f"--vision-depth needs a resnet tower of basic blocks with its depths in "
                              f"vision.hf_config; this model's tower is '{config.vision.type}' "
                              f"({hf.get('layer_type', 'no layer_type')})")
        if vision_depth < hf["depths"][-1]:
            raise ConfigError(f"--vision-depth {vision_depth} is below the tower's {hf['depths'][-1]} blocks; "
                              "this script only adds blocks")
        overrides.append(f"vision.hf_config.depths={[*hf['depths'][:-1], vision_depth]}")
    if language_layers is not None:
        if language_layers < config.language.num_layers:
            raise ConfigError(f"--language-layers {language_layers} is below the LM's "
                              f"{config.language.num_layers}; this script only adds layers")
        overrides.append(f"language.num_layers={language_layers}")
    return overrides


def _identity_init(grown: VLMModel, new_keys: list[str], last_stage: int) -> None:
    """Zero what makes each new block or layer add nothing: a block's last BN scale, a layer's output projections."""
    params = dict(grown.named_parameters())
    with torch.no_grad():
        for key in new_keys:
            last_bn = key.startswith(f"{VISION_STAGES}{last_stage}.") and ".layer.1.normalization.weight" in key
            new_out = key.startswith(LANGUAGE_LAYERS) and any(z in key for z in ZERO_IN_NEW_LANGUAGE_LAYERS)
            if last_bn or new_out:
                params[key].zero_()


def _probe(model: VLMModel, processor: VLMProcessor) -> torch.Tensor:
    """Logits of one image question, for checking that growth preserved the function."""
    from PIL import Image

    image = Image.new("RGB", (96, 64), (200, 40, 40))
    batch = processor(text="What colour is it?", images=[image])
    model.eval()
    with torch.no_grad():
        return model(**batch).logits.float()


def grow_model(source: str | Path, output: str | Path, vision_depth: int | None = None,
               language_layers: int | None = None, seed: int = 0) -> list[str]:
    """Write `source` deepened to `output`; returns the names of the new tensors."""
    model, processor = vlmkit.load(source)
    config = saved_config(source, growth_overrides(model.config, vision_depth, language_layers))
    torch.manual_seed(seed)
    grown = VLMModel(config, processor.tokenizer)
    old = model.state_dict()
    _, unexpected = grown.load_state_dict(old, strict=False)
    new = [k for k in grown.state_dict() if k not in old]
    if unexpected:
        raise RuntimeError(f"{source}: weights with no place in the grown model: {unexpected[:3]}")
    last_stage = len((config.vision.hf_config or {}).get("depths", [0])) - 1
    _identity_init(grown, new, last_stage)
    before, after = _probe(model, processor), _probe(grown, processor)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    vlmkit.save(grown, processor, output)
    return new


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("source", help="a vlmkit model directory (a run's final/ or checkpoint-<step>/)")
    p.add_argument("output", help="where to write the grown model")
    p.add_argument("--vision-depth", type=int, help="blocks in the ResNet tower's last stage")
    p.add_argument("--language-layers", type=int, help="decoder layers of the language model")
    p.add_argument("--seed", type=int, default=0, help="seed of the new weights' initialisation")
    args = p.parse_args()
    if args.vision_depth is None and args.language_layers is None:
        p.error("nothing to grow: give --vision-depth and/or --language-layers")
    try:
        new = grow_model(args.source, args.output, args.vision_depth, args.language_layers, args.seed)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.output}: kept every weight of {args.source}, added {len(new)} tensors as identities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
