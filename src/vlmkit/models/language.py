"""The language side: any transformers causal LM and its tokenizer, from a local directory or from a config.

Owns the tokenizer's special tokens (the image placeholder is added when missing, with the embeddings resized)
and the mapping from `LanguageConfig`'s generic size fields to each transformers config class.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ..config import LanguageConfig
from ..constants import IMAGE_TOKEN
from ..errors import ConfigError

logger = logging.getLogger(__name__)

BUILTIN_TOKENIZER = Path(__file__).resolve().parents[1] / "assets" / "tokenizer"

# LanguageConfig field -> standard transformers attribute (resolved through each config's attribute_map).
_SIZE_FIELDS = {
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "tie_word_embeddings": "tie_word_embeddings",
}
# Configs that name the MLP width differently and have no attribute_map entry for it.
_INTERMEDIATE_ALIASES = ("n_inner", "ffn_hidden_size", "ffn_dim")


CACHE_ARG = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
"""The LM's KV-cache argument and output field: `cache` from transformers 5.24 on, `past_key_values` before."""


def _require_dir(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{what}: directory not found: {p} (give a local Hugging Face model directory)")
    return p


def load_tokenizer(config: LanguageConfig, directory: str | Path | None = None) -> PreTrainedTokenizerBase:
    """Load the LM's tokenizer (from `directory`, the config, or the built-in one) with vlmkit's tokens added."""
    if directory is not None:
        src = Path(directory)
    elif config.tokenizer:
        src = _require_dir(config.tokenizer, "language.tokenizer")
    elif config.pretrained:
        src = _require_dir(config.pretrained, "language.pretrained")
    else:
        src = BUILTIN_TOKENIZER
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add the image placeholder as a special token and make sure a pad token exists."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def hf_language_config(config: LanguageConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The transformers config for a from-scratch LM: vlmkit's size fields, with `hf_config` keys winning
    (as on the vision side), and the tokenizer's vocabulary and special ids.

    Everything is passed to the config's constructor, so derived fields (e.g. per-layer types) stay consistent.
    """
    extra: dict[str, Any] = dict(config.hf_config or {})
    model_type = extra.pop("model_type", config.type)
    config_cls = _config_class(model_type)
    probe = config_cls()
    aliases = getattr(config_cls, "attribute_map", {}) or {}
    sizes: dict[str, Any] = {}
    for ours, theirs in _SIZE_FIELDS.items():
        value = getattr(config, ours)
        if value is None:
            continue
        if ours == "intermediate_size" and not hasattr(probe, theirs):
            theirs = next((a for a in _INTERMEDIATE_ALIASES if hasattr(probe, a)), None)
        if theirs is not None and hasattr(probe, theirs):
            sizes[aliases.get(theirs, theirs)] = value
    if config.rope_theta is not None and isinstance(getattr(probe, "rope_parameters", None), dict):
        sizes["rope_parameters"] = {**(extra.get("rope_parameters") or probe.rope_parameters),
                                    "rope_theta": config.rope_theta}
    # A larger vocab_size in hf_config (a padded embedding table, as many real LMs have) is kept.
    vocab = max(len(tokenizer), int(extra.get("vocab_size") or 0))
    special = {"vocab_size": vocab, "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    return config_cls(**{**sizes, **extra, **special})


def sync_saved_sizes(language: dict[str, Any], changed: Iterable[str]) -> None:
    """After `language.<size>=v` overrides on a saved config, write them into its complete `hf_config` too.

    A saved checkpoint's `hf_config` holds every Hugging Face field and wins over vlmkit's size fields when the
    LM is built, so without this an override such as `language.max_position_embeddings=1024` would be ignored.
    """
    extra = language.get("hf_config")
    if not isinstance(extra, dict):
        return
    aliases = getattr(_config_class(extra.get("model_type", language.get("type", "llama"))), "attribute_map", {})
    for ours in changed:
        theirs = _SIZE_FIELDS.get(ours)
        if theirs is not None and ours in language:
            extra[(aliases or {}).get(theirs, theirs)] = language[ours]


def _config_class(model_type: str) -> type[PretrainedConfig]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ConfigError(
            f"language.type='{model_type}' is not a transformers model type; e.g. llama, qwen2, mistral, "
            f"gpt2, phi, gemma, glm ({len(CONFIG_MAPPING)} types in this transformers)"
        )
    return CONFIG_MAPPING[model_type]


def build_language_model(
    config: LanguageConfig, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """A causal LM from `config.pretrained` (weights) or from the config (random init), sized to the tokenizer."""
    if config.pretrained:
        path = _require_dir(config.pretrained, "language.pretrained")
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            logger.info("resizing LM embeddings %d -> %d for vlmkit's special tokens",
                        model.get_input_embeddings().num_embeddings, len(tokenizer))
            model.resize_token_embeddings(len(tokenizer))
        record_language_sizes(config, model.config)
    else:
        model = AutoModelForCausalLM.from_config(hf_language_config(config, tokenizer), dtype=dtype)
    return model


def record_language_sizes(config: LanguageConfig, hf: PretrainedConfig) -> None:
    """Write the actual sizes of a loaded LM back into `config` so that it describes the model."""
    config.type = hf.model_type
    for ours, theirs in _SIZE_FIELDS.items():
        if hasattr(hf, theirs):
            setattr(config, ours, getattr(hf, theirs))
    rope = getattr(hf, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        config.rope_theta = float(rope["rope_theta"])


def language_hf_config_dict(model: PreTrainedModel) -> dict[str, Any]:
    """The complete transformers config of the LM, stored in saved checkpoints."""
    data = model.config.to_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype"):
        data.pop(key, None)
    return data
