"""Which parameters train: training stages, per-component and per-layer freezing, optimizer parameter groups.

Stages set the defaults (True = trains):

    align   connector only (the LLaVA / MiniGPT-4 / BLIP-2 alignment stage)
    sft     connector + language model
    full    vision tower + connector + language model

`FreezeConfig` refines them: `vision` / `connector` / `language` force a component on or off, and
`vision_layers` / `language_layers` ([first, last], inclusive, negative indices count from the end) train only
those blocks of the component (its embeddings, final norm and head stay frozen); giving a range turns the
component on unless its flag is explicitly False. A `fusion` module follows the connector.

With adapters (LoRA / QLoRA / prefix from `train.peft`; call `apply_peft` BEFORE `apply_stage`), a component
carrying adapters trains only its adapter parameters, never its base weights (nor its other, non-adapted
weights). It trains when its flag says so and, with the flag unset, in every stage but `align` (so ConLoRA's
vision adapters train in `sft` without `freeze.vision: true`). Its layer ranges come from `LoraConfig`.

Decoder / vision blocks are found generically: the `nn.ModuleList` holding most of the component's parameters
(preferring one whose length is the configured layer count), e.g. `language_model.model.layers`,
`vision_tower.model.encoder.layers` (CLIP / SigLIP / BLIP-2) or `vision_tower.transformer.layers` (EVA2-CLIP).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..errors import ConfigError
from .config import STAGES, FreezeConfig, OptimConfig

COMPONENTS = ("vision_tower", "connector", "language_model", "fusion")
# FreezeConfig / OptimConfig field stem -> VLMModel component.
FIELD_COMPONENT = {"vision": "vision_tower", "connector": "connector", "language": "language_model"}
STAGE_DEFAULTS: dict[str, dict[str, bool]] = {
    "align": {"vision": False, "connector": True, "language": False},
    "sft": {"vision": False, "connector": True, "language": True},
    "full": {"vision": True, "connector": True, "language": True},
}


# ------------------------------------------------------------------------------------------ discovery
def adapter_parameters(model: nn.Module) -> dict[int, str]:
    """`id(param) -> kind` ("lora" or "prefix") for every adapter parameter of the model."""
    kinds: dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names:
                sub = getattr(module, attr, None)
                if isinstance(sub, nn.Module):
                    kinds.update(dict.fromkeys(map(id, sub.parameters()), "lora"))
        elif isinstance(module, PeftModel) and module.active_peft_config.is_prompt_learning:
            kinds.update(dict.fromkeys(map(id, module.prompt_encoder.parameters()), "prefix"))
    return kinds


def layer_list(model: nn.Module, component: str) -> tuple[str, nn.ModuleList]:
    """The block list of a component and its full name, e.g. ("language_model.model.layers", ModuleList)."""
    root = getattr(model, component)
    expected = _expected_layers(model, component)
    best: tuple[int, int, str, nn.ModuleList] | None = None
    for name, module in root.named_modules(prefix=component):
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        key = (int(len(module) == expected), sum(p.numel() for p in module.parameters()))
        if best is None or key > best[:2]:
            best = (*key, name, module)
    if best is None:
        raise ConfigError(f"{component}: no list of layers (nn.ModuleList) found for a layer range")
    return best[2], best[3]


def _expected_layers(model: nn.Module, component: str) -> int | None:
    if component == "language_model":
        return getattr(model.language_model.config, "num_hidden_layers", None)
    if component == "vision_tower":
        return getattr(getattr(getattr(model, "config", None), "vision", None), "num_layers", None)
    return None


def resolve_range(bounds: list[int] | tuple[int, int], n: int, what: str) -> list[int]:
    """[first, last] (inclusive; negative = from the end) over `n` layers -> the layer indices."""
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or not all(type(b) is int for b in bounds):
        raise ConfigError(f"{what}={bounds!r}: expected [first, last] layer indices (inclusive)")
    first, last = (b + n if b < 0 else b for b in bounds)
    if not (0 <= first <= last < n):
        raise ConfigError(
            f"{what}={list(bounds)}: the model has {n} layers (indices 0..{n - 1} or -{n}..-1) and first "
            f"must not come after last"
        )
    return list(range(first, last + 1))


def component_of(name: str) -> str:
    """The VLMModel component a parameter name belongs to."""
    return name.split(".", 1)[0]


# ------------------------------------------------------------------------------------------- freezing
def apply_stage(model: nn.Module, stage: str, freeze: FreezeConfig | None = None) -> None:
    """Set `requires_grad` for a training stage refined by `freeze` (see the module docstring)."""
    if stage not in STAGES:
        raise ConfigError(f"stage='{stage}'; allowed: {', '.join(STAGES)}")
    freeze = freeze or FreezeConfig()
    adapters = adapter_parameters(model)
    model.requires_grad_(False)
    flags: dict[str, bool] = {}
    for field, component in FIELD_COMPONENT.items():
        module = getattr(model, component)
        own = [p for p in module.parameters() if id(p) in adapters]
        explicit: bool | None = getattr(freeze, field)
        layers: list[int] | None = getattr(freeze, f"{field}_layers", None)
        if own:
            if layers is not None:
                raise ConfigError(
                    f"freeze.{field}_layers is set but the {component} carries adapters, whose layers are "
                    f"chosen by lora.{'layer_range' if field == 'language' else 'vision_layers'}"
                )
            trains = explicit if explicit is not None else (stage != "align" or field == "connector")
            _set(own, trains)
        else:
            default = layers is not None or STAGE_DEFAULTS[stage][field]
            trains = explicit if explicit is not None else default
            if trains:
                _train_full(model, component, layers, f"freeze.{field}_layers")
        flags[field] = trains
    fusion = getattr(model, "fusion", None)
    if fusion is not None:
        fusion.requires_grad_(flags["connector"])


def _train_full(model: nn.Module, component: str, layers: list[int] | None, what: str) -> None:
    module = getattr(model, component)
    if layers is None:
        module.requires_grad_(True)
        return
    _, blocks = layer_list(model, component)
    for i in resolve_range(layers, len(blocks), what):
        blocks[i].requires_grad_(True)


def _set(params: Iterable[nn.Parameter], trains: bool) -> None:
    for p in params:
        p.requires_grad_(trains)


# ------------------------------------------------------------------------------------ optimizer groups
def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """Trainable parameters grouped by component and decay: per-component lr (default `optim.lr`),
    `optim.weight_decay` except on biases and normalization weights (and any 0/1-d tensor)."""
    lrs = {component: getattr(optim, f"{field}_lr") for field, component in FIELD_COMPONENT.items()}
    no_decay = _no_decay_ids(model)
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        component = component_of(name)
        lr = lrs.get(component)
        decays = id(p) not in no_decay
        key = (component, decays)
        if key not in groups:
            groups[key] = {
                "name": component if decays else f"{component}.no_decay",
                "params": [],
                "lr": optim.lr if lr is None else lr,
                "weight_decay": optim.weight_decay if decays else 0.0,
            }
        groups[key]["params"].append(p)
    return list(groups.values())


def _no_decay_ids(model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for module in model.modules():
        is_norm = "norm" in type(module).__name__.lower()
        for pname, p in module.named_parameters(recurse=False):
            if is_norm or pname.endswith("bias") or p.ndim <= 1:
                ids.add(id(p))
    return ids


# --------------------------------------------------------------------------------------------- table
def trainable_table(model: nn.Module) -> str:
    """A table of total / trainable / frozen parameters per component, with LoRA and prefix rows apart."""
    adapters = adapter_parameters(model)
    rows: dict[str, list[int]] = {}
    quantized: set[str] = set()
    for name, p in model.named_parameters():
        component = component_of(name)
        kind = adapters.get(id(p))
        row = f"  {kind} ({component})" if kind else component
        counts = rows.setdefault(row, [0, 0])
        n = _numel(p)
        counts[0] += n
        counts[1] += n if p.requires_grad else 0
        if getattr(p, "quant_state", None) is not None:
            quantized.add(row)
    order = sorted(rows, key=lambda r: (_component_rank(r), r.startswith(" "), r))
    lines = [f"{'component':<28}{'parameters':>14}{'trainable':>14}{'frozen':>14}{'trainable %':>13}"]
    for row in order:
        total, trainable = rows[row]
        label = f"{row} [4-bit]" if row in quantized else row
        lines.append(_table_line(label, total, trainable))
    total = sum(r[0] for r in rows.values())
    trainable = sum(r[1] for r in rows.values())
    lines.append(_table_line("total", total, trainable))
    return "\n".join(lines)


def _component_rank(row: str) -> int:
    name = row.strip().split(" ")[-1].strip("()")
    return COMPONENTS.index(name) if name in COMPONENTS else len(COMPONENTS)


def _table_line(label: str, total: int, trainable: int) -> str:
    share = 100.0 * trainable / total if total else 0.0
    return f"{label:<28}{total:>14,}{trainable:>14,}{total - trainable:>14,}{share:>12.2f}%"


def _numel(p: nn.Parameter) -> int:
    """Logical parameter count (a packed 4-bit weight counts its unpacked shape)."""
    state = getattr(p, "quant_state", None)
    return math.prod(state.shape) if state is not None else p.numel()
