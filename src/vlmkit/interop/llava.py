"""Conversion between vlmkit models and transformers' `LlavaForConditionalGeneration` (llava-hf checkpoints).

A vlmkit model whose encoder is a Hugging Face CLIP / SigLIP tower and whose connector is the 2-layer `mlp`
has exactly LLaVA-1.5's structure; these functions move weights between the two by module, so a llava-hf
checkpoint can be loaded into vlmkit and a vlmkit model exported to the standard transformers format.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, PreTrainedTokenizerBase

from ..config import ConnectorConfig, LanguageConfig, VisionConfig, VLMConfig
from ..errors import VlmkitError
from ..models.language import prepare_tokenizer
from ..models.vlm import VLMModel

_VISION_TYPES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}


def check_llava_compatible(model: VLMModel) -> None:
    """Raise unless `model` has LLaVA's structure (HF CLIP/SigLIP tower, 2-layer MLP, no fusion)."""
    cfg = model.config
    problems = []
    if cfg.vision.type not in _VISION_TYPES.values():
        problems.append(f"vision.type is '{cfg.vision.type}' (LLaVA uses clip or siglip)")
    if cfg.vision.post_layernorm:
        problems.append("vision.post_layernorm is on (LLaVA takes raw hidden states)")
    if cfg.connector.type != "mlp" or cfg.connector.options.num_layers != 2:
        problems.append("the connector is not a 2-layer 'mlp'")
    if cfg.fusion is not None:
        problems.append("the model has a deep fusion")
    if cfg.image_positions != "sequential":
        problems.append(f"image_positions is '{cfg.image_positions}' (LLaVA numbers image tokens like text)")
    if problems:
        raise VlmkitError("cannot express this model as LlavaForConditionalGeneration: " + "; ".join(problems))


def llava_config(model: VLMModel) -> LlavaConfig:
    cfg = model.config
    return LlavaConfig(
        vision_config=model.vision_tower.model.config.to_dict(),
        text_config=model.language_model.config.to_dict(),
        image_token_index=model.image_token_id,
        projector_hidden_act=cfg.connector.options.act,
        multimodal_projector_bias=cfg.connector.options.bias,
        vision_feature_select_strategy="default" if model.vision_tower.has_cls and cfg.vision.drop_cls else "full",
        vision_feature_layer=cfg.vision.feature_layer,
        image_seq_length=model.num_image_tokens,
        tie_word_embeddings=model.language_model.config.tie_word_embeddings,
    )


def to_hf_llava(model: VLMModel) -> LlavaForConditionalGeneration:
    """A `LlavaForConditionalGeneration` holding copies of `model`'s weights (same dtype)."""
    check_llava_compatible(model)
    llava = LlavaForConditionalGeneration(llava_config(model)).to(model.dtype)
    _copy(model.vision_tower.model, llava.model.vision_tower)
    _copy(model.connector, llava.model.multi_modal_projector)
    _copy(model.language_model.base_model, llava.model.language_model)
    _copy(model.language_model.get_output_embeddings(), llava.lm_head)
    return llava.eval()


def from_hf_llava(llava: LlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase,
                  template: str = "vicuna") -> VLMModel:
    """A vlmkit model with the weights of a loaded `LlavaForConditionalGeneration`."""
    hf = llava.config
    vision_type = _VISION_TYPES.get(hf.vision_config.model_type)
    if vision_type is None:
        raise VlmkitError(f"unsupported LLaVA vision tower '{hf.vision_config.model_type}'; "
                          f"supported: {', '.join(_VISION_TYPES)}")
    vc = hf.vision_config
    config = VLMConfig(
        vision=VisionConfig(type=vision_type, image_size=vc.image_size, patch_size=vc.patch_size,
                            hidden_size=vc.hidden_size, num_layers=vc.num_hidden_layers,
                            num_heads=vc.num_attention_heads, intermediate_size=vc.intermediate_size,
                            layer_norm_eps=vc.layer_norm_eps, feature_layer=hf.vision_feature_layer,
                            drop_cls=hf.vision_feature_select_strategy == "default", hf_config=vc.to_dict()),
        connector=ConnectorConfig.from_dict({"type": "mlp", "num_layers": 2, "act": hf.projector_hidden_act,
                                             "bias": hf.multimodal_projector_bias}),
        language=LanguageConfig(type=hf.text_config.model_type, hf_config=hf.text_config.to_dict()),
        template=template,
        dtype=str(llava.dtype).removeprefix("torch."),
    )
    tokenizer = prepare_tokenizer(tokenizer)
    model = VLMModel(config, tokenizer)
    if model.image_token_id != hf.image_token_index:
        raise VlmkitError(f"the tokenizer's <image> id {model.image_token_id} differs from the checkpoint's "
                          f"image_token_index {hf.image_token_index}")
    _copy(llava.model.vision_tower, model.vision_tower.model)
    _copy(llava.model.multi_modal_projector, model.connector)
    _copy(llava.model.language_model, model.language_model.base_model)
    _copy(llava.lm_head, model.language_model.get_output_embeddings())
    return model.eval()


def load_hf_llava(directory: str | Path, template: str = "vicuna") -> VLMModel:
    """Load a local llava-hf checkpoint directory (weights + tokenizer) as a vlmkit model."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise VlmkitError(f"not a Hugging Face model directory (no config.json): {directory}")
    llava = LlavaForConditionalGeneration.from_pretrained(str(directory))
    return from_hf_llava(llava, AutoTokenizer.from_pretrained(str(directory)), template)


def _copy(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    state = src.state_dict()
    missing, unexpected = dst.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise VlmkitError(f"weight layout mismatch while converting {type(src).__name__} -> "
                          f"{type(dst).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}")
