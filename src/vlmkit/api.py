"""The top-level Python API: `build` a model + processor from a preset, YAML file or config; `load`/`save` them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    BASE_REF_NAME,
    CONFIG_NAME,
    atomic_directory,
    load_into,
    load_weights,
    read_config,
    remove_stale_weights,
)
from .config import VLMConfig, apply_overrides, load_mapping
from .errors import CheckpointError, ConfigError
from .models.language import load_tokenizer, sync_saved_sizes
from .models.vlm import VLMModel
from .processing import ImageTransform, VLMProcessor

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config(spec: str | Path | VLMConfig | dict[str, Any], overrides: list[str] | None = None) -> VLMConfig:
    """A preset name, a YAML/JSON file, a dict or a VLMConfig -> validated VLMConfig (with `a.b=c` overrides)."""
    if isinstance(spec, VLMConfig):
        data = spec.to_dict()
    elif isinstance(spec, dict):
        data = dict(spec)
    else:
        path = Path(spec)
        if path.suffix in (".yaml", ".yml", ".json") or path.is_file():
            data = load_mapping(path)
            data = data["model"] if isinstance(data.get("model"), dict) and "vision" not in data else data
        elif (PRESETS_DIR / f"{spec}.yaml").is_file():
            data = load_mapping(PRESETS_DIR / f"{spec}.yaml")
        else:
            raise ConfigError(
                f"'{spec}' is neither a preset nor a config file; presets: {', '.join(list_presets())}"
            )
    if overrides:
        apply_overrides(data, overrides)
    return VLMConfig.from_dict(data)


def build(
    spec: str | Path | VLMConfig | dict[str, Any], overrides: list[str] | None = None
) -> tuple[VLMModel, VLMProcessor]:
    """Build a model (random init, or pretrained parts named in the config) and its processor."""
    config = resolve_config(spec, overrides)
    tokenizer = load_tokenizer(config.language)
    model = VLMModel(config, tokenizer)
    return model, processor_for(model, tokenizer)


def processor_for(model: VLMModel, tokenizer: Any) -> VLMProcessor:
    cfg = model.config
    return VLMProcessor(tokenizer, ImageTransform.from_vision_config(cfg.vision), cfg.template,
                        model.num_image_tokens, cfg.max_length)


def load(
    directory: str | Path,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    adapter: str | None = None,
    overrides: list[str] | None = None,
) -> tuple[VLMModel, VLMProcessor]:
    """Load a model directory written by `save_pretrained` / `save` (config.json, safetensors, processor).

    With `adapters/<name>/` in the directory, `adapter=name` applies that adapter (LoRA / QLoRA / prefix);
    `adapter=None` applies the only one there (an error when there are several), none when there is none.
    `overrides` (`a.b=c`, like `build`'s) change the saved config before the weights load, e.g.
    `vision.image_size=128` to continue a CNN-tower model at a higher resolution; every weight must still fit,
    and the processor follows the new config (image size, image token count, template, max_length).
    A training checkpoint of an adapter run (`checkpoint-N/`: adapters + `base_model.json`) loads too: its base
    model first, then its adapter.
    """
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file() and (directory / BASE_REF_NAME).is_file():
        return _load_adapter_checkpoint(directory, dtype, device, adapter, overrides)
    config = saved_config(directory, overrides)
    if dtype is not None:
        config.dtype = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    processor = VLMProcessor.from_pretrained(directory)
    model = VLMModel(config, processor.tokenizer)
    if overrides:
        processor = processor_for(model, processor.tokenizer)
    load_into(model, load_weights(directory), directory)
    _apply_adapter(model, directory, adapter)
    if processor.num_image_tokens != model.num_image_tokens:
        raise CheckpointError(
            f"{directory}: processor_config.json says {processor.num_image_tokens} image tokens but the model "
            f"emits {model.num_image_tokens}"
        )
    if device is not None:
        model.to(device)
    return model.eval(), processor


def saved_config(directory: str | Path, overrides: list[str] | None = None) -> VLMConfig:
    """The config a model directory was saved with, `overrides` (`a.b=c`) applied; LM size overrides are written
    into its complete `hf_config` too, which would otherwise win over them."""
    directory = Path(directory)
    data = read_config(directory)
    try:
        if overrides:
            apply_overrides(data, overrides)
            keys = [item.split("=", 1)[0].strip() for item in overrides]
            changed = [k.removeprefix("language.") for k in keys if k.startswith("language.")]
            sync_saved_sizes(data.get("language") or {}, changed)
        return VLMConfig.from_dict(data)
    except ConfigError as e:
        raise CheckpointError(f"{directory / 'config.json'}: {e}") from None


def save(model: VLMModel, processor: VLMProcessor, directory: str | Path, max_shard_size: int | str = "5GB") -> Path:
    """Write model and processor into `directory` in one atomic step."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        if _has_adapter(model):
            from .train.peft import save_peft_model

            save_peft_model(model, tmp / "m", max_shard_size)  # base weights + adapters/<name>/
        else:
            model.save_pretrained(tmp / "m", max_shard_size)
        processor.save_pretrained(tmp / "m")
        written = {f.name for f in (tmp / "m").iterdir()}
        for name in written:
            (tmp / "m" / name).rename(tmp / name)
        (tmp / "m").rmdir()
    remove_stale_weights(directory, keep=written)
    return directory


def _load_adapter_checkpoint(
    directory: Path, dtype: torch.dtype | str | None, device: torch.device | str | None, adapter: str | None,
    overrides: list[str] | None,
) -> tuple[VLMModel, VLMProcessor]:
    """An adapter-only checkpoint: the base model its `base_model.json` names, then the checkpoint's adapter."""
    ref_path = directory / BASE_REF_NAME
    try:
        ref = json.loads(ref_path.read_text(encoding="utf-8"))
        base = directory / ref["path"]  # an absolute path stays absolute
        base_overrides = list(ref.get("overrides") or [])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ref_path}: not a base-model reference ({e})") from None
    if not (base / CONFIG_NAME).is_file():
        raise CheckpointError(
            f"{directory} holds only an adapter; its base model {base} (named in {ref_path}) is missing. Restore "
            f"that directory, or use the run's final/ directory, which holds the base weights too"
        )
    model, processor = load(base, dtype, overrides=[*base_overrides, *(overrides or [])] or None)
    saved = VLMProcessor.from_pretrained(directory)  # with the template the run trained with
    if overrides:  # the base's processor follows the overrides; keep the run's template
        processor.template = saved.template
    else:
        processor = saved
    model.config.template = saved.template.name
    _apply_adapter(model, directory, adapter)
    if device is not None:
        model.to(device)
    return model.eval(), processor


def _apply_adapter(model: VLMModel, directory: Path, adapter: str | None) -> None:
    if adapter is None and not (directory / "adapters").is_dir():
        return
    from .train.peft import find_adapter, load_adapter

    path = find_adapter(directory, adapter)
    if path is not None:
        load_adapter(model, path)


def _has_adapter(model: VLMModel) -> bool:
    if "peft" not in sys.modules:  # no adapter without peft having been imported
        return False
    from .train.peft import adapter_method

    return adapter_method(model) != "none"
