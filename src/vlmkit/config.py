"""Typed model configuration: `VisionConfig`, `ConnectorConfig`, `LanguageConfig` nested in `VLMConfig`.

Configs are dataclasses that round-trip through dicts, YAML and JSON. Loading validates strictly: an unknown
key names the key and the allowed keys, a wrong type names the field and the expected type. Connector options
are typed per connector (each registered connector declares an ``Options`` dataclass) and written flat in YAML::

    connector: {type: mlp, num_layers: 2}
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from .errors import ConfigError

C = TypeVar("C")

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Keys written into config.json next to the model config that are not part of it.
META_KEYS = ("vlmkit_version",)
IMAGE_POSITIONS = ("sequential", "shared")


# ---------------------------------------------------------------------------------------------- validation
def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """Check `value` against the type `hint` and return it (ints are accepted where floats are expected)."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        errors = []
        for arm in typing.get_args(hint):
            try:
                return _coerce(value, arm, path)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{path}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected None, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {hint.__name__}, got {value!r}")
        return from_dict(hint, value, path)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)  # `2e-4`: YAML 1.1 (PyYAML) reads an exponent without a dot as a string
    elif hint is str:
        if isinstance(value, str):
            return value
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{path}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")


def check_known_keys(cls: type, data: dict[str, Any], what: str) -> None:
    """Raise `ConfigError` naming the unknown keys of `data` and the fields of dataclass `cls`."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; known: {sorted(known)}")


def from_dict(cls: type[C], data: dict[str, Any], path: str = "") -> C:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types with the field's path."""
    custom = cls.__dict__.get("from_dict")
    if custom is not None:
        return cls.from_dict(data, path)  # type: ignore[attr-defined]
    return _from_dict_fields(cls, data, path)


def _from_dict_fields(cls: type[C], data: dict[str, Any], path: str) -> C:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f"{path}: " if path else ""
        raise ConfigError(
            f"{where}unknown key '{unknown[0]}' in {cls.__name__}; allowed keys: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{path}.{name}" if path else name)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{path or cls.__name__}: missing required key '{missing[0]}'")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (dataclasses -> dicts), suitable for YAML and JSON."""
    custom = getattr(obj, "to_dict", None)
    if dataclasses.is_dataclass(obj) and custom is not None and type(obj).__dict__.get("to_dict"):
        return custom()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ------------------------------------------------------------------------------------------------- configs
@dataclass
class VisionConfig:
    """The vision encoder: a registry ID plus architecture and feature-selection options."""

    type: str = "clip"
    """Registry ID: clip | siglip | blip2 | eva2clip | resnet | convnext."""
    pretrained: str | None = None
    """Local Hugging Face directory to load weights and architecture from (clip, siglip, blip2)."""
    image_size: int = 224
    patch_size: int = 14
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-6
    feature_layer: int | list[int] = -2
    """Hidden state to take the features from (-1 last, -2 penultimate, ...); a list concatenates."""
    drop_cls: bool = True
    """Drop the CLS token from the features (LLaVA's 'default' strategy)."""
    post_layernorm: bool = False
    """Apply the tower's final LayerNorm to the selected features (BLIP-2's ln_vision)."""
    position_encoding: str = "none"
    """CNN towers (resnet, convnext): `sincos2d` adds fixed 2D sine-cosine positions to the features (as DETR
    does), so the LLM knows each token's row and column (boxes, reading order); `none` leaves them as they are."""
    position_grid: int | None = None
    """sincos2d only: the grid side the positions are scaled to (ViT position interpolation). None: a feature's
    position is its row / column index. A number G: cell centres are mapped onto a G x G grid, so a model trained
    at image_size S keeps its positions at another size when G = S / stride (e.g. 32 for a stride-4 tower trained
    at 128 px): the same place in the image gets the same code, only finer."""
    pad_to_square: bool = False
    image_mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    resample: str = "bicubic"
    frozen: bool = True
    hf_config: dict[str, Any] | None = None
    """Extra (or, in saved checkpoints, the complete) Hugging Face config of the tower."""

    def validate(self, path: str = "vision") -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"{path}.image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ConfigError(f"{path}.image_mean and image_std need 3 values (R, G, B)")
        if self.position_encoding not in ("none", "sincos2d"):
            raise ConfigError(f"{path}.position_encoding='{self.position_encoding}'; allowed: none, sincos2d")
        if self.position_grid is not None and (self.position_grid < 1 or self.position_encoding != "sincos2d"):
            raise ConfigError(f"{path}.position_grid={self.position_grid}: needs position_encoding: sincos2d and a "
                              "grid side >= 1 (or null for index positions)")
        if self.resample not in ("bicubic", "bilinear", "nearest", "lanczos"):
            raise ConfigError(f"{path}.resample='{self.resample}'; allowed: bicubic, bilinear, nearest, lanczos")


@dataclass
class LanguageConfig:
    """The causal language model: a transformers model type (or a local directory) plus sizes."""

    type: str = "llama"
    """A transformers `model_type` (llama, qwen2, mistral, gpt2, phi, gemma, glm, ...)."""
    pretrained: str | None = None
    """Local Hugging Face directory of a causal LM (weights, config and tokenizer)."""
    tokenizer: str | None = None
    """Tokenizer directory; defaults to `pretrained`, else the tokenizer shipped with vlmkit."""
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None
    intermediate_size: int = 11008
    max_position_embeddings: int = 4096
    rope_theta: float | None = None
    tie_word_embeddings: bool = False
    frozen: bool = False
    hf_config: dict[str, Any] | None = None
    """Extra (or, in saved checkpoints, the complete) Hugging Face config of the LM."""


@dataclass
class ConnectorConfig:
    """The bridge from vision features to LM embeddings: a registry ID and that connector's typed options."""

    type: str = "mlp"
    options: Any = None
    """The connector's own ``Options`` dataclass; written flat next to `type` in YAML/JSON."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "connector") -> ConnectorConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping with a 'type' key, got {data!r}")
        data = dict(data)
        kind = _coerce(data.pop("type", "mlp"), str, f"{path}.type")
        nested = data.pop("options", None)
        if isinstance(nested, dict):
            data.update(nested)
        options_cls = connector_options_class(kind)
        options = _from_dict_fields(options_cls, data, path) if options_cls else None
        return cls(type=kind, options=options)

    def __post_init__(self) -> None:
        if self.options is None:
            options_cls = connector_options_class(self.type)
            self.options = options_cls() if options_cls else None
        elif isinstance(self.options, dict):
            self.options = _from_dict_fields(connector_options_class(self.type), self.options, "connector")

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **(to_dict(self.options) if self.options is not None else {})}


def connector_options_class(kind: str) -> type:
    from .models.connectors import CONNECTORS  # late import: the registry lives with the modules

    return CONNECTORS.get(kind).Options


@dataclass
class VLMConfig:
    """A whole VLM: vision encoder x connector x language model, plus prompt and token settings."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    fusion: dict[str, Any] | None = None
    """Deep fusion inside the LLM (e.g. {"type": "visual_expert"}); None for prefix-only models."""
    image_positions: str = "sequential"
    """Position ids of image tokens: "sequential" (0, 1, 2, ... like text; LLaVA) or "shared" (every token of
    one image at one position, text counting on from the next; CogVLM). With shared positions RoPE rotates a
    text token's query by the same angle against every image token of an image."""
    template: str = "vicuna"
    """Chat template registry ID used by the processor."""
    max_length: int = 2048
    """Longest tokenized sample (image tokens included) the processor produces."""
    dtype: str = "float32"
    name: str | None = None
    description: str | None = None

    def validate(self, path: str = "") -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype='{self.dtype}'; allowed: float32, bfloat16, float16")
        if self.fusion is not None and "type" not in self.fusion:
            raise ConfigError("fusion: needs a 'type' key")
        if self.image_positions not in IMAGE_POSITIONS:
            raise ConfigError(f"image_positions='{self.image_positions}'; allowed: {', '.join(IMAGE_POSITIONS)}")

    # -------------------------------------------------------------------------------------------- I/O
    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "") -> VLMConfig:
        data = {k: v for k, v in data.items() if k not in META_KEYS}
        return _from_dict_fields(cls, data, path)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_file(cls, path: str | Path) -> VLMConfig:
        data = load_mapping(path)
        if "model" in data and isinstance(data["model"], dict) and "vision" not in data:
            data = data["model"]
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = (
            json.dumps(self.to_dict(), indent=2)
            if path.suffix == ".json"
            else yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        )
        path.write_text(text, encoding="utf-8")

    def replace(self, **changes: Any) -> VLMConfig:
        return dataclasses.replace(self, **changes)


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file that must contain a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=c` overrides (values parsed as YAML) to a nested dict, in place; returns it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set language.num_layers=4")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a mapping")
        node[parts[-1]] = value
    return data
