"""The run configuration: one YAML per training run (model, data, stage, freezing, peft, optimizer, schedule).

Validated with the same strict rules as model configs (unknown key -> the allowed keys; wrong type -> the field).
Every key can be overridden from the command line with `--set a.b=c`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import _from_dict_fields, apply_overrides, load_mapping, to_dict
from ..errors import ConfigError

STAGES = ("align", "sft", "full")
PEFT_METHODS = ("none", "lora", "qlora", "prefix")


@dataclass
class DataConfig:
    train: str | None = None
    """Training data file or image folder (any supported format)."""
    valid: str | None = None
    """Validation data (same formats); None = no evaluation."""
    synthetic: dict[str, Any] | list[dict[str, Any]] | None = None
    """Instead of files: {kind: shapes|captcha|caption, n: 20000, seed: 0, valid_n: 200, ...options},
    or a list of such entries for a mixture of tasks."""
    image_root: str | None = None
    format: str | None = None
    skip_bad: bool = False
    eval_generate: bool = False
    """Also report exact-match accuracy of generated answers on the validation split."""
    eval_max_samples: int = 200
    max_length: int | None = None
    """Override the model's max_length for training samples."""


@dataclass
class FreezeConfig:
    """Which parts train (the stage sets defaults; these refine them)."""

    vision: bool | None = None
    connector: bool | None = None
    language: bool | None = None
    vision_layers: list[int] | None = None
    """[first, last] layer indices of the vision tower that train (others frozen)."""
    language_layers: list[int] | None = None
    """[first, last] decoder layer indices of the LLM that train (others frozen)."""


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    layer_range: list[int] | None = None
    """[first, last] LLM layers that get LoRA (VisualGLM's --layer_range)."""
    vision_layers: list[int] | None = None
    """[first, last] vision-tower layers that get LoRA (ConLoRA); None = none."""
    vision_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj", "query_key_value"])
    connector: bool = False
    """LoRA on the connector's linear layers instead of training them fully."""
    name: str = "default"
    """Adapter name (several task adapters can live in one model directory)."""


@dataclass
class PeftConfig:
    method: str = "none"
    num_virtual_tokens: int = 16
    """Prefix / P-tuning length."""

    def validate(self, path: str = "peft") -> None:
        if self.method not in PEFT_METHODS:
            raise ConfigError(f"{path}.method='{self.method}'; allowed: {', '.join(PEFT_METHODS)}")


@dataclass
class OptimConfig:
    lr: float = 2e-5
    connector_lr: float | None = None
    vision_lr: float | None = None
    language_lr: float | None = None
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0
    num_workers: int = 0
    group_by_length: bool = False
    """Batch samples of similar length together (less padding; see `vlmkit.train.grouping`)."""
    log_every: int = 10
    eval_every: int | None = None
    save_every: int | None = None
    keep_last: int = 2
    best_metric: str = "valid_loss"

    def validate(self, path: str = "train") -> None:
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"{path}.schedule='{self.schedule}'; allowed: cosine, linear, constant")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError(f"{path}.batch_size and {path}.grad_accum must be >= 1")


@dataclass
class RunConfig:
    model: Any = "llava-tiny"
    """Preset name, model config file, saved model directory (`default`: the packaged default model), or an
    inline model config mapping."""
    model_overrides: list[str] = field(default_factory=list)
    """`a.b=c` changes to the model's config before its weights load (a saved directory) or it is built, e.g.
    `vision.image_size=128` or `image_positions=shared` to continue a checkpoint in a changed shape."""
    data: DataConfig = field(default_factory=DataConfig)
    stage: str = "sft"
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    output_dir: str = "runs/run"
    template: str | None = None
    """Override the model's chat template for this run."""

    def validate(self, path: str = "") -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage='{self.stage}'; allowed: {', '.join(STAGES)}")
        if not isinstance(self.model, (str, dict)):
            raise ConfigError("model: expected a preset name, a path or a model config mapping")
        if self.data.train is None and self.data.synthetic is None:
            raise ConfigError("data: set data.train (a file or folder) or data.synthetic ({kind: shapes, n: ...})")

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "") -> RunConfig:
        return _from_dict_fields(cls, data, path)

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | None = None) -> RunConfig:
        data = apply_overrides(load_mapping(path), overrides or [])
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
