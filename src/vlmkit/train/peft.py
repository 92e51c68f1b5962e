"""Parameter-efficient fine-tuning with `peft`: LoRA / QLoRA / prefix tuning of a VLMModel, adapters, merging.

LoRA is injected in place (`peft.inject_adapter_in_model`), so the model stays a `VLMModel` whose adapted
Linear layers become peft LoRA layers around a `base_layer`. One peft `LoraConfig` covers all of them; its
`target_modules` is a regex over real module names: `lora.target_modules` in the LLM decoder layers of
`lora.layer_range` (VisualGLM's --layer_range; peft's `layers_to_transform` cannot give each component its own
range, so ranges are resolved to names), the vision blocks of `lora.vision_layers` (ConLoRA) and every Linear
of the connector (`lora.connector`).

QLoRA first swaps the LLM's Linear layers (not the output head) in place for bitsandbytes `Linear4bit` (NF4,
bf16 compute) holding the current weights, then adds LoRA (peft builds its bnb 4-bit LoRA layers).

Prefix tuning (P-tuning v2, VisualGLM's --use_ptuning) makes `language_model` a `PrefixTunedLM`, a peft
`PeftModelForCausalLM` with a `PrefixTuningConfig`. The virtual tokens are extra past keys/values in every
attention layer, not extra input embeddings, so `VLMModel.forward` is unchanged: it passes `inputs_embeds`
[B, L, D], `attention_mask` [B, L] and position ids of the real tokens; peft prepends `num_virtual_tokens`
ones to the mask and shifts the position ids by `num_virtual_tokens`; logits stay [B, L, V] and labels [B, L]
line up as without a prefix (left padding included). With a KV cache, the first call (no or empty cache)
fills it with prefix + prompt; later calls bypass peft (which would start a fresh cache) and only widen the
mask and shift the positions.

An adapter on disk is `<dir>/adapters/<name>/`: peft's `adapter_config.json` + `adapter_model.safetensors`
(LoRA keys relative to the VLMModel, or `prompt_embeddings`), `extra_trainable.safetensors` (trained
non-adapter parameters, e.g. the connector of an sft LoRA run, by plain-model name) and `vlmkit_adapter.json`
(method, quantization). `save_peft_model` (used by `vlmkit.save`) writes base weights under plain-model names
(4-bit weights dequantized) plus the adapter; `vlmkit.load` builds the plain model, loads the base and applies
the adapter, quantizing QLoRA again (NF4 maps its own dequantized values back to the same codes).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftConfig as HFPeftConfig
from peft import (
    PeftModel,
    PeftModelForCausalLM,
    PrefixTuningConfig,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.cache_utils import Cache

from .. import __version__
from ..checkpoint import CONFIG_NAME, atomic_directory, remove_stale_weights, save_weights, write_json
from ..errors import CheckpointError, ConfigError, VlmkitError
from ..models.language import CACHE_ARG
from .config import LoraConfig, PeftConfig
from .freeze import adapter_parameters, layer_list, resolve_range
from .state import named_tensors, trained_buffers

ADAPTERS_DIR = "adapters"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EXTRA_WEIGHTS = "extra_trainable.safetensors"
ADAPTER_META = "vlmkit_adapter.json"
QUANTIZATION = {"quant_type": "nf4", "compute_dtype": "bfloat16", "double_quant": False}
_META = {"format": "pt"}


# ------------------------------------------------------------------------------------------------ apply
def apply_peft(model: nn.Module, peft: PeftConfig, lora: LoraConfig) -> None:
    """Add the run's adapter in place; then only adapter parameters train (refine with `apply_stage`)."""
    peft.validate()
    if peft.method == "none":
        return
    if adapter_method(model) != "none":
        raise VlmkitError("the model already carries an adapter; start from the base model or merge_lora")
    if peft.method == "prefix":
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=peft.num_virtual_tokens)
        _wrap_prefix(model, config, lora.name)
    else:
        config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules=lora_target_pattern(model, lora))
        if peft.method == "qlora":
            quantize_language_model(model)
        _inject_lora(model, config, lora.name)
    _train_only(model, set())


def lora_target_pattern(model: nn.Module, lora: LoraConfig) -> str:
    """The regex (matched in full against module names of the VLMModel) of every module that gets LoRA."""
    parts = [_layer_pattern(model, "language_model", lora.target_modules, lora.layer_range, "layer_range")]
    if lora.vision_layers is not None:
        parts.append(_layer_pattern(model, "vision_tower", lora.vision_target_modules, lora.vision_layers,
                                    "vision_layers"))
    if lora.connector:
        names = [n for n, m in model.connector.named_modules(prefix="connector") if type(m) is nn.Linear]
        if not names:
            raise ConfigError("lora.connector: the connector has no nn.Linear layer to adapt")
        parts.append("|".join(re.escape(n) for n in names))
    return "|".join(f"(?:{p})" for p in parts)


def _layer_pattern(
    model: nn.Module, component: str, targets: list[str], bounds: list[int] | None, field: str
) -> str:
    what = f"lora.{field}"
    if not targets:
        raise ConfigError(f"{what}: no target modules given for the {component}")
    scope = re.escape(component)
    if bounds is not None:
        name, blocks = layer_list(model, component)
        scope = rf"{re.escape(name)}\.(?:{'|'.join(map(str, resolve_range(bounds, len(blocks), what)))})"
    pattern = rf"{scope}\.(?:.*\.)?(?:{'|'.join(re.escape(t) for t in targets)})"
    if not any(re.fullmatch(pattern, n) for n, _ in model.named_modules()):
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in getattr(model, component).named_modules()
                         if isinstance(m, nn.Linear)})
        raise ConfigError(
            f"LoRA targets {targets} match no module of the {component}; its linear layers are named: "
            f"{', '.join(leaves)}"
        )
    return pattern


def _inject_lora(model: nn.Module, config: PeftLoraConfig, name: str) -> None:
    quantized = any(_is_4bit(m) for m in model.language_model.modules())
    if quantized:
        model.is_loaded_in_4bit = True  # peft reads this flag on the root to build its bnb 4-bit LoRA layers
    try:
        inject_adapter_in_model(config, model, adapter_name=name)
    finally:
        if quantized:
            del model.is_loaded_in_4bit


def _wrap_prefix(model: nn.Module, config: PrefixTuningConfig, name: str) -> None:
    model.language_model = PrefixTunedLM(model.language_model, config, adapter_name=name)


def _train_only(model: nn.Module, extra: set[int]) -> None:
    adapters = adapter_parameters(model)
    for p in model.parameters():
        p.requires_grad_(id(p) in adapters or id(p) in extra)


class PrefixTunedLM(PeftModelForCausalLM):
    """peft prefix tuning of the LLM that keeps the KV cache across decode steps (see module docstring)."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        cache = kwargs.get(CACHE_ARG)
        if cache is None or (isinstance(cache, Cache) and cache.get_seq_length() == 0):
            kwargs.pop(CACHE_ARG, None)
            return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                   inputs_embeds=inputs_embeds, labels=labels, **kwargs)
        n = self.active_peft_config.num_virtual_tokens
        if attention_mask is not None:  # [B, cached + new] -> [B, n + cached + new]
            ones = attention_mask.new_ones(attention_mask.shape[0], n)
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"] + n
        return self.get_base_model()(input_ids=input_ids, attention_mask=attention_mask,
                                     inputs_embeds=inputs_embeds, labels=labels, **kwargs)


# ------------------------------------------------------------------------------------------- QLoRA
def _bnb() -> Any:
    try:
        import bitsandbytes
    except ImportError as e:
        raise VlmkitError("QLoRA needs bitsandbytes: pip install 'vlmkit[qlora]'") from e
    return bitsandbytes


def _is_4bit(module: nn.Module) -> bool:
    return type(module).__name__ == "Linear4bit" and type(module).__module__.startswith("bitsandbytes")


def quantize_language_model(model: nn.Module, quantization: dict[str, Any] | None = None) -> int:
    """Replace the LLM's nn.Linear layers (all but the output head) by 4-bit bitsandbytes layers, in place."""
    bnb = _bnb()
    q = {**QUANTIZATION, **(quantization or {})}
    lm = model.language_model
    head = lm.get_output_embeddings()
    names = [n for n, m in lm.named_modules() if type(m) is nn.Linear and m is not head]
    if not names:
        raise ConfigError("qlora: the language model has no nn.Linear layer to quantize")
    for name in names:
        lm.set_submodule(name, _to_4bit(bnb, lm.get_submodule(name), q))
    return len(names)


def _to_4bit(bnb: Any, linear: nn.Linear, q: dict[str, Any]) -> nn.Module:
    kind, double = q["quant_type"], q["double_quant"]
    new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                            compute_dtype=getattr(torch, q["compute_dtype"]), quant_type=kind,
                            compress_statistics=double, device="meta")
    new.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type=kind,
                                   compress_statistics=double)
    if linear.bias is not None:
        new.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    # bnb 0.50's CPU inference path repacks the weight (bf16 absmax) on the first eval forward, and its
    # state_dict() only partly undoes that, which changes the weights: keep the plain layout.
    new.support_avx512bf16_for_cpu = False
    return new.to(linear.weight.device)  # moving the Params4bit quantizes it


def _quantization_of(model: nn.Module) -> dict[str, Any]:
    m = next(m for m in model.language_model.modules() if _is_4bit(m))
    return {"quant_type": m.weight.quant_type, "compute_dtype": str(m.compute_dtype).removeprefix("torch."),
            "double_quant": bool(m.weight.compress_statistics)}


def _dequantize(module: nn.Module) -> torch.Tensor:
    return _bnb().functional.dequantize_4bit(module.weight.data, module.weight.quant_state)  # [out, in]


def _plain_linear(like: nn.Module, weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(like.in_features, like.out_features, bias=like.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if like.bias is not None:
            linear.bias.copy_(like.bias)
    return linear.requires_grad_(False)


# ------------------------------------------------------------------------------------------ inspect
def adapter_method(model: nn.Module) -> str:
    """"none", "lora", "qlora" or "prefix": what the model currently carries."""
    if isinstance(model.language_model, PeftModel):
        return "prefix"
    if not getattr(model, "peft_config", None):
        return "none"
    return "qlora" if any(_is_4bit(m) for m in model.language_model.modules()) else "lora"


def adapter_name(model: nn.Module) -> str | None:
    """The name of the model's adapter (None without one)."""
    method = adapter_method(model)
    if method == "prefix":
        return model.language_model.active_adapter
    return None if method == "none" else next(iter(model.peft_config))


def _base_key(key: str, prefix_wrapped: bool) -> str | None:
    """A parameter name of the adapted model -> its plain-model name (None: peft's own module)."""
    if prefix_wrapped and key.startswith("language_model."):
        head = "language_model.base_model."
        if not key.startswith(head):
            return None
        key = "language_model." + key[len(head):]
    return ".".join(part for part in key.split(".") if part != "base_layer")


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain-model state dict: no adapters, unwrapped names, 4-bit weights dequantized, ties kept once."""
    adapters = adapter_parameters(model)
    quantized = {f"{n}.weight": m for n, m in model.named_modules() if _is_4bit(m)}
    prefix_wrapped = isinstance(model.language_model, PeftModel)
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...], tuple[int, ...]]] = set()
    for key, t in model.state_dict(keep_vars=True).items():
        if id(t) in adapters:
            continue
        if ".weight." in key and key[: key.index(".weight.") + 7] in quantized:
            continue  # bitsandbytes quantization state of a 4-bit weight
        if key in quantized:
            t = _dequantize(quantized[key])
        base = _base_key(key, prefix_wrapped)
        ident = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
        if base is None or (t.numel() and ident in seen):
            continue
        seen.add(ident)
        out[base] = t.detach().contiguous()
    return out


def extra_trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable non-adapter parameters (e.g. the connector in an sft LoRA run) and the buffers trained with
    them (`trained_buffers`), by plain-model name."""
    adapters = adapter_parameters(model)
    prefix_wrapped = isinstance(model.language_model, PeftModel)
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        key = _base_key(name, prefix_wrapped)
        if p.requires_grad and id(p) not in adapters and key is not None:
            out[key] = p.detach().contiguous()
    for name, b in trained_buffers(model).items():
        key = _base_key(name, prefix_wrapped)
        if key is not None and key not in out:
            out[key] = b.detach().contiguous()
    return out


# ------------------------------------------------------------------------------------------ on disk
def save_adapter(model: nn.Module, directory: str | Path, name: str | None = None) -> Path:
    """Write `directory/adapters/<name>/` (name defaults to the model's adapter name); returns that path."""
    method = adapter_method(model)
    if method == "none":
        raise VlmkitError("the model has no adapter to save (apply_peft or load_adapter first)")
    internal = adapter_name(model)
    owner = model.language_model if method == "prefix" else model
    weights = get_peft_model_state_dict(owner, adapter_name=internal, save_embedding_layers=False)
    extra = extra_trainable_state(model)
    target = Path(directory) / ADAPTERS_DIR / (name or internal)
    with atomic_directory(target) as tmp:
        owner.peft_config[internal].save_pretrained(str(tmp))
        save_file({k: v.detach().contiguous() for k, v in weights.items()}, str(tmp / ADAPTER_WEIGHTS), _META)
        if extra:
            save_file(extra, str(tmp / EXTRA_WEIGHTS), _META)
        write_json(tmp / ADAPTER_META, {
            "vlmkit_version": __version__, "method": method, "extra_trainable": sorted(extra),
            "quantization": _quantization_of(model) if method == "qlora" else None,
        })
    if not extra:
        (target / EXTRA_WEIGHTS).unlink(missing_ok=True)
    return target


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> None:
    """Apply an adapter written by `save_adapter` to a plain model (quantizing the LLM first for QLoRA)."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{adapter_dir} is not an adapter directory: {ADAPTER_CONFIG} is missing")
    if adapter_method(model) != "none":
        raise VlmkitError("the model already carries an adapter; load the base model again to switch")
    meta_file = adapter_dir / ADAPTER_META
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    config = HFPeftConfig.from_pretrained(str(adapter_dir))
    weights = _read_tensors(adapter_dir / ADAPTER_WEIGHTS)
    name = adapter_dir.name
    extra = _load_extra(model, adapter_dir)  # into the plain model, whose parameter objects the adapter keeps
    if config.is_prompt_learning:
        _wrap_prefix(model, config, name)
        owner = model.language_model
    else:
        if meta.get("method") == "qlora":
            quantize_language_model(model, meta.get("quantization"))
        try:
            _inject_lora(model, config, name)
        except ValueError as e:  # peft: the target modules are not in this model
            raise CheckpointError(f"{adapter_dir} does not fit this model: {e}") from None
        owner = model
    _set_adapter_weights(owner, weights, name, adapter_dir)
    _train_only(model, extra)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"adapter file missing: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or not safetensors ({e})") from None


def _set_adapter_weights(owner: nn.Module, weights: dict[str, torch.Tensor], name: str, source: Path) -> None:
    expected = set(get_peft_model_state_dict(owner, adapter_name=name, save_embedding_layers=False))
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source / ADAPTER_WEIGHTS} does not fit the model: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    try:
        set_peft_model_state_dict(owner, weights, adapter_name=name)
    except RuntimeError as e:
        raise CheckpointError(f"{source / ADAPTER_WEIGHTS}: {e}") from None


def _load_extra(model: nn.Module, adapter_dir: Path) -> set[int]:
    path = adapter_dir / EXTRA_WEIGHTS
    if not path.is_file():
        return set()
    state = _read_tensors(path)
    tensors = named_tensors(model, remove_duplicate=False)
    for key, t in state.items():
        if key not in tensors or tensors[key].shape != t.shape:
            raise CheckpointError(
                f"{path} does not fit this model: no parameter or buffer '{key}' {tuple(t.shape)}"
            )
    with torch.no_grad():
        for key, t in state.items():
            tensors[key].copy_(t)
    return {id(tensors[k]) for k in state if isinstance(tensors[k], nn.Parameter)}


def find_adapter(directory: str | Path, name: str | None = None) -> Path | None:
    """`directory/adapters/<name>`; with no name the only adapter there (None when there is none)."""
    root = Path(directory) / ADAPTERS_DIR
    names = sorted(p.name for p in root.iterdir() if (p / ADAPTER_CONFIG).is_file()) if root.is_dir() else []
    if name is not None:
        if name not in names:
            there = ", ".join(names) or "none"
            raise CheckpointError(f"{directory}: no adapter '{name}' (adapters there: {there})")
        return root / name
    if len(names) > 1:
        raise CheckpointError(f"{directory} holds adapters {', '.join(names)}: choose one (adapter=NAME)")
    return root / names[0] if names else None


def save_peft_model(model: nn.Module, directory: str | Path, max_shard_size: int | str = "5GB") -> Path:
    """A model directory of an adapted model: plain base weights + config.json + `adapters/<name>/`."""
    directory = Path(directory)
    state = base_state_dict(model)
    with atomic_directory(directory) as tmp:
        written = save_weights(state, tmp, max_shard_size)
        write_json(tmp / CONFIG_NAME, {"vlmkit_version": __version__, **model.resolved_config().to_dict()})
        save_adapter(model, tmp)
    remove_stale_weights(directory, keep=written)
    return directory


# ------------------------------------------------------------------------------------------- merge
def merge_lora(model: nn.Module) -> None:
    """Fold LoRA into the base weights (4-bit ones dequantized first): a plain VLMModel again."""
    method = adapter_method(model)
    if method == "prefix":
        raise VlmkitError("prefix tuning adds virtual keys/values, not weight deltas: it cannot be merged")
    if method == "none":
        raise VlmkitError("the model has no LoRA adapter to merge")
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            model.set_submodule(name, _merged(module))
    for name, module in list(model.named_modules()):
        if _is_4bit(module):
            model.set_submodule(name, _plain_linear(module, _dequantize(module)))
    del model.peft_config


def _merged(layer: BaseTunerLayer) -> nn.Module:
    base = layer.get_base_layer()
    if not _is_4bit(base):
        layer.merge()
        return base
    weight = _dequantize(base)  # merge in full precision instead of re-quantizing the sum
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A:
            weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
    return _plain_linear(base, weight)
