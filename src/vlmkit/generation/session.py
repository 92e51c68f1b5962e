"""Multi-turn chat on top of the `Engine`: history in the model's template, image-feature cache, prefix KV reuse.

`ChatSession` owns the conversation (messages and their images), a cache of encoded image features keyed by
the image's pixel tensor (VisualGLM's `cache_image`: the vision tower runs once per image, however many turns
follow), and the KV cache of the previous turn: a new prompt is tokenized in full, the common token prefix with
what the cache holds is kept (`crop`), and only the new tokens are fed, with the features of the images whose
placeholders are among them. Answers equal those of a fresh session given the same full conversation.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Generator, Iterator, Sequence

import torch
from transformers import DynamicCache

from ..constants import IMAGE_TOKEN
from ..models.vlm import VLMModel
from ..processing import ImageInput, VLMProcessor, load_image
from ..templates import Message, Template
from .engine import Engine, Prefill, Result
from .sampling import GenerationConfig


class ChatSession:
    """A conversation with one model. `ask` returns the answer, `stream` yields it in pieces."""

    def __init__(
        self,
        model: VLMModel,
        processor: VLMProcessor,
        template: Template | str | None = None,
        config: GenerationConfig | None = None,
        max_cached_images: int = 32,
    ) -> None:
        self.engine = Engine(model, processor, template)
        self.model = model
        self.processor = processor
        self.template = self.engine.template
        self.config = config or GenerationConfig()
        self.history: list[Message] = []
        self.images: list[ImageInput] = []
        self.last_result: Result | None = None
        self.max_cached_images = max_cached_images
        self._features: OrderedDict[str, torch.Tensor] = OrderedDict()  # pixel-tensor key -> [T, D], LRU
        self._cache: DynamicCache | None = None
        self._cache_ids: list[int] = []  # the tokens whose keys/values `_cache` holds

    # ------------------------------------------------------------------------------------------- public
    def ask(self, text: str, image: ImageInput | None = None, config: GenerationConfig | None = None) -> str:
        """Add a user turn (optionally with a new image), answer it, keep both in the history."""
        for _ in self.stream(text, image, config):
            pass
        assert self.last_result is not None
        return self.last_result.text

    def stream(
        self, text: str, image: ImageInput | None = None, config: GenerationConfig | None = None
    ) -> Iterator[str]:
        """Like `ask`, yielding the answer as text deltas; the turn is recorded when the stream ends."""
        return self._turn(text, image, config or self.config)

    def clear(self) -> None:
        """Forget the conversation, its images and the KV cache (cached image features are kept)."""
        self.history.clear()
        self.images.clear()
        self.last_result = None
        self._drop_cache()

    def clear_image_cache(self) -> None:
        self._features.clear()

    # ------------------------------------------------------------------------------------------- turns
    def _turn(self, text: str, image: ImageInput | None, config: GenerationConfig) -> Generator[str, None, None]:
        images = self.images + ([load_image(image)] if image is not None else [])
        user = self._user_message(text, image is not None)
        messages = self.history + [user]
        enc = self.processor.encode(messages, images, self.template, add_generation_prompt=True)
        features = self._image_features(enc.pixel_values)  # [N_img, T, D] or None
        prefill = self._prefill(enc.input_ids, enc.token_type_ids, features)
        self._drop_cache()  # an abandoned stream leaves the cache unusable
        result = yield from self.engine.stream_run(prefill, config)
        self.history += [user, Message("assistant", result.text)]
        self.images = images
        self.last_result = result
        if prefill.cache is not None:
            self._cache = prefill.cache
            self._cache_ids = (enc.input_ids + result.token_ids)[:prefill.cache.get_seq_length()]

    def _user_message(self, text: str, has_image: bool) -> Message:
        """The user turn; a new image gets an explicit marker so it stays on this turn (the processor would
        otherwise attach unmarked images to the first user turn)."""
        if not has_image:
            return Message("user", text)
        prefix = self.template.missing_image_prefix
        marker = prefix if IMAGE_TOKEN in prefix else IMAGE_TOKEN + "\n"
        return Message("user", marker + text, images=1)

    def _drop_cache(self) -> None:
        self._cache, self._cache_ids = None, []

    def _image_features(self, pixel_values: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """Features of every image of the conversation; the vision tower runs only for unseen pixels."""
        if not pixel_values:
            return None
        keys = [_pixel_key(p) for p in pixel_values]
        missing = list(dict.fromkeys(k for k in keys if k not in self._features))
        if missing:
            index = {k: i for i, k in enumerate(keys)}
            pixels = torch.stack([pixel_values[index[k]] for k in missing])  # [M, 3, H, W]
            with torch.inference_mode():
                feats = self.model.encode_images(pixels)  # [M, T, D]
            self._features.update(zip(missing, feats))
        stacked = torch.stack([self._features[k] for k in keys])  # [N_img, T, D]
        for k in keys:
            self._features.move_to_end(k)
        while len(self._features) > max(self.max_cached_images, len(set(keys))):
            self._features.popitem(last=False)
        return stacked

    def _prefill(self, ids: list[int], types: list[int], features: torch.Tensor | None) -> Prefill:
        """Reuse the cached prefix: crop the cache to the common tokens, feed only the rest."""
        keep = self._reusable_prefix(ids)
        cache = self._cache if keep > 0 else None
        if cache is not None:
            cache.crop(keep - cache.get_seq_length())  # negative: tokens to remove
        device = self.model.device
        full = torch.tensor([ids], device=device)  # [1, P+L]
        type_ids = torch.tensor([types], device=device)  # [1, P+L]
        mask = torch.ones_like(full)  # [1, P+L]
        pos = self.engine.position_ids(mask, type_ids)  # [1, P+L]
        n_images_before = ids[:keep].count(self.model.image_token_id) // self.model.num_image_tokens
        new_feats = None if features is None or n_images_before >= features.shape[0] else features[n_images_before:]
        return Prefill(full[:, keep:], mask, pos[:, keep:], type_ids[:, keep:], full, [len(ids)], new_feats, cache)

    def _reusable_prefix(self, ids: list[int]) -> int:
        """Tokens of `ids` the cache can keep: the common prefix, at least one token short of the prompt and
        never ending inside an image's placeholders."""
        if self._cache is None or not self._cache.is_croppable or _prompt_learning(self.engine.model):
            return 0
        keep = 0
        for a, b in zip(self._cache_ids, ids):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(ids) - 1)
        image_id, per_image = self.model.image_token_id, self.model.num_image_tokens
        while keep > 0 and ids[:keep].count(image_id) % per_image:
            keep -= 1
        return keep


def _pixel_key(pixels: torch.Tensor) -> str:
    """A content key for one transformed image [3, H, W]."""
    data = pixels.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return f"{tuple(pixels.shape)}:{hashlib.sha1(data).hexdigest()}"


def _prompt_learning(model: VLMModel) -> bool:
    """Prefix / P-tuned LMs keep virtual tokens in the cache, so cached positions do not match token ids."""
    config = getattr(model.language_model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))
