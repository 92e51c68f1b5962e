"""The composed VLM: vision encoder -> connector -> image features scattered into the LM's input embeddings.

`VLMModel` owns the merge of image features at placeholder tokens (`masked_scatter`, with an explicit error
when counts differ), the loss call, position ids for padded batches and KV-cache plumbing. Deep-fusion
connectors plug in through `models.fusion` without changes here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from ..config import VLMConfig
from ..constants import IMAGE_TOKEN
from ..errors import VlmkitError
from .connectors import ConnectorContext, build_connector
from .fusion import build_fusion
from .language import CACHE_ARG, build_language_model, language_hf_config_dict, record_language_sizes
from .loss import causal_lm_loss, selected_logits_loss
from .vision import build_vision_encoder

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class VLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # [B, L, V]
    cache: Cache | None = None

    @property
    def past_key_values(self) -> Cache | None:
        """The KV cache under its transformers < 5.24 name."""
        return self.cache


class VLMModel(nn.Module):
    """vision_tower x connector x language_model, built from a `VLMConfig` and the LM's tokenizer."""

    def __init__(self, config: VLMConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.config = config
        dtype = DTYPES[config.dtype]
        self.vision_tower = build_vision_encoder(config.vision)
        self.language_model = build_language_model(config.language, tokenizer, dtype=dtype)
        vt = self.vision_tower
        ctx = ConnectorContext(
            vision_dim=vt.hidden_size,
            text_dim=self.language_model.get_input_embeddings().embedding_dim,
            num_patches=vt.num_patches,
            grid=None if vt.keeps_cls else vt.grid_size,
            text_intermediate_size=getattr(self.language_model.config, "intermediate_size", None),
        )
        self.connector = build_connector(config.connector, ctx)
        self.fusion = build_fusion(config.fusion) if config.fusion else None
        if self.fusion is not None:
            self.fusion.install(self.language_model)
        self.image_token_id: int = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.num_image_tokens: int = self.connector.num_output_tokens(vt.num_patches)
        self.vision_tower.to(dtype)
        self.connector.to(dtype)
        self.apply_frozen_flags()

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.get_input_embeddings().weight.device

    def apply_frozen_flags(self) -> None:
        """Freeze the components the config marks frozen (training stages refine this later)."""
        self.vision_tower.requires_grad_(not self.config.vision.frozen)
        self.language_model.requires_grad_(not self.config.language.frozen)

    def parameter_counts(self) -> dict[str, tuple[int, int]]:
        """Per component: (total parameters, trainable parameters)."""
        parts = {"vision_tower": self.vision_tower, "connector": self.connector,
                 "language_model": self.language_model}
        if self.fusion is not None:
            parts["fusion"] = self.fusion
        return {
            name: (sum(p.numel() for p in m.parameters()),
                   sum(p.numel() for p in m.parameters() if p.requires_grad))
            for name, m in parts.items()
        }

    # ------------------------------------------------------------------------------------------ images
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N_img, 3, H, W] -> connector output [N_img, T, D_text]."""
        tower_trains = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and tower_trains):
            feats = self.vision_tower(pixel_values.to(self.device, self.vision_tower_dtype))  # [N, P, Dv]
        return self.connector(feats.to(self.connector_dtype))  # [N, T, Dt]

    @property
    def vision_tower_dtype(self) -> torch.dtype:
        return next(self.vision_tower.parameters()).dtype

    @property
    def connector_dtype(self) -> torch.dtype:
        p = next(self.connector.parameters(), None)
        return p.dtype if p is not None else self.dtype

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with image features scattered into the placeholder positions: [B, L, D]."""
        embeds = self.language_model.get_input_embeddings()(input_ids)  # [B, L, D]
        mask = input_ids == self.image_token_id  # [B, L]
        n_slots = int(mask.sum())
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values)  # [N_img, T, D]
        n_images = 0 if image_features is None else image_features.shape[0]
        n_feats = 0 if image_features is None else image_features.shape[0] * image_features.shape[1]
        if n_slots != n_feats:
            per = self.num_image_tokens
            raise VlmkitError(
                f"image placeholders and image features do not match: input_ids hold {n_slots} "
                f"'{IMAGE_TOKEN}' tokens but {n_images} image(s) give {n_feats} feature vectors "
                f"({per} per image); build inputs with the model's processor, which expands each "
                f"'{IMAGE_TOKEN}' to {per} tokens"
            )
        if n_slots == 0:
            return embeds
        flat = image_features.reshape(-1, embeds.shape[-1]).to(embeds.dtype)  # [N_img*T, D]
        return embeds.masked_scatter(mask.unsqueeze(-1), flat)

    # ----------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        image_features: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        logits_to_keep: str = "all",
    ) -> VLMOutput:
        """Loss (when `labels` are given) and logits; with `past_key_values`, `input_ids` are the new tokens
        and `attention_mask` covers cached + new tokens.

        `logits_to_keep`: "all" ([B, L, V]); "last" ([B, 1, V], for generation); "labels" (training fast path:
        only the positions that predict a label are projected to the vocabulary, logits [T, V]).
        """
        if logits_to_keep not in ("all", "last", "labels"):
            raise VlmkitError(f"logits_to_keep='{logits_to_keep}'; allowed: all, last, labels")
        embeds = self.embed(input_ids, pixel_values, image_features)  # [B, L, D]
        if position_ids is None and attention_mask is not None:
            position_ids = self._default_positions(input_ids, attention_mask, token_type_ids, past_key_values)
        extra = self.fusion.forward_kwargs(token_type_ids, position_ids) if self.fusion is not None else {}
        inputs = dict(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=use_cache, **{CACHE_ARG: past_key_values}, **extra)
        if logits_to_keep == "labels" and labels is not None and self._head_is_plain():
            lm = _unwrap(self.language_model)
            out = lm.base_model(**inputs)
            loss, logits = selected_logits_loss(
                out.last_hidden_state, lm.get_output_embeddings(), labels, num_items_in_batch
            )
            return VLMOutput(loss=loss, logits=logits, cache=getattr(out, CACHE_ARG))
        if logits_to_keep == "last":
            inputs["logits_to_keep"] = 1
        out = self.language_model(**inputs)
        loss = None if labels is None else causal_lm_loss(out.logits, labels, num_items_in_batch)
        return VLMOutput(loss=loss, logits=out.logits, cache=getattr(out, CACHE_ARG))

    def position_ids(self, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Positions of a whole (uncached) prompt [B, L]: the fusion's, shared per image
        (`image_positions: shared`), or 0, 1, 2, ... skipping left padding."""
        if token_type_ids is not None:
            pos = self.fusion.position_ids(token_type_ids, attention_mask) if self.fusion is not None else None
            if pos is not None:
                return pos
            if self.config.image_positions == "shared":
                return shared_image_positions(attention_mask, token_type_ids, self.num_image_tokens)
        return positions_from_mask(attention_mask, attention_mask.shape[1])

    def _default_positions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None,
        past_key_values: Cache | None,
    ) -> torch.Tensor:
        """Positions when the caller gave none: the whole prompt's, or (after a cache) counted from the mask."""
        length = input_ids.shape[1]
        cached = past_key_values is not None and past_key_values.get_seq_length() > 0
        if not cached:
            return self.position_ids(attention_mask, token_type_ids)[:, -length:]
        if self.config.image_positions == "shared" or self.fusion is not None:
            raise VlmkitError("this model gives image tokens their own position ids (image_positions: shared or a "
                              "fusion): pass position_ids when continuing from past_key_values "
                              "(Engine and ChatSession do)")
        return positions_from_mask(attention_mask, length)  # [B, L]

    def _head_is_plain(self) -> bool:
        """True when logits are exactly `lm_head(last_hidden_state)` (no soft-capping/scaling, no prefix
        tuning wrapper), so the label-only projection gives the same loss."""
        lm = _unwrap(self.language_model)
        if lm is not self.language_model and type(self.language_model).__name__.startswith("PeftModel"):
            if getattr(self.language_model, "peft_type", None) not in (None, "LORA"):
                return False
        cfg = lm.config
        return not any(getattr(cfg, a, None) for a in _LOGIT_TRANSFORMS) and lm.get_output_embeddings() is not None

    # ------------------------------------------------------------------------------------- checkpoints
    def resolved_config(self) -> VLMConfig:
        """The config with the complete HF configs of the towers, so a checkpoint rebuilds without sources."""
        cfg = VLMConfig.from_dict(self.config.to_dict())
        cfg.vision.hf_config = self.vision_tower.hf_config_dict() or cfg.vision.hf_config
        cfg.vision.pretrained = None
        cfg.language.hf_config = language_hf_config_dict(self.language_model)
        record_language_sizes(cfg.language, _unwrap(self.language_model).config)
        cfg.language.pretrained = None
        cfg.language.tokenizer = None
        return cfg

    def save_pretrained(self, directory: str | Path, max_shard_size: int | str = "5GB") -> Path:
        """Write config.json and safetensors weights (sharded past `max_shard_size`), atomically."""
        from ..checkpoint import save_model_dir

        return save_model_dir(self, Path(directory), max_shard_size)


# Config attributes of LMs whose logits are not a plain projection of the last hidden state.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


def _unwrap(lm: nn.Module) -> nn.Module:
    """The transformers causal LM inside a peft wrapper (LoRA layers stay in place), or `lm` itself."""
    get_base = getattr(lm, "get_base_model", None)
    return get_base() if callable(get_base) else lm


def shared_image_positions(
    attention_mask: torch.Tensor, token_type_ids: torch.Tensor, tokens_per_image: int
) -> torch.Tensor:
    """CogVLM-style position ids [B, L]: all `tokens_per_image` tokens of one image share one position, every
    other real token takes the next one; left padding stays at 0. Image tokens are `token_type_ids == 1`."""
    real = attention_mask.bool()  # [B, L]
    image = real & (token_type_ids == 1)  # [B, L]
    nth = image.long().cumsum(-1) - 1  # index of each image token among its row's image tokens
    first_of_image = image & (nth % tokens_per_image == 0)  # [B, L]
    advances = (real & ~image) | first_of_image  # [B, L]
    return (advances.long().cumsum(-1) - 1).clamp(min=0)


def positions_from_mask(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Position ids for the last `length` tokens that skip left padding: [B, length]."""
    pos = attention_mask.long().cumsum(-1) - 1  # [B, P+L]
    pos = pos.clamp(min=0)
    return pos[:, -length:]
