"""`VLMProcessor`: conversations + images -> model inputs (input_ids, labels, pixel_values, ...).

Renders messages with the chat template, tokenizes once with offsets to find assistant tokens (the only ones
that carry labels), expands each `<image>` into the connector's token count, truncates without ever cutting
through an image, and pads a batch.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ..checkpoint import atomic_directory, write_json
from ..constants import IGNORE_INDEX, IMAGE_TOKEN
from ..errors import CheckpointError, VlmkitError
from ..templates import Message, Template, get_template
from .images import ImageInput, ImageTransform

PROCESSOR_CONFIG = "processor_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
TEMPLATE_FILE = "chat_template.json"


class VLMBatch(dict):
    """Model inputs as a dict (so `model(**batch)` works) with `labels` kept beside them.

    `batch["labels"]` and `batch.labels` give the labels; they are left out of `**batch` so that
    `model(**batch, labels=batch["labels"])` is valid and `model(**batch)` runs inference.
    """

    def __init__(self, inputs: dict[str, Any], labels: torch.Tensor | None = None) -> None:
        super().__init__(inputs)
        self.labels = labels

    def __getitem__(self, key: str) -> Any:
        if key == "labels":
            return self.labels
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        return (key == "labels" and self.labels is not None) or super().__contains__(key)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> VLMBatch:
        moved = {k: _move(v, device, dtype if k == "pixel_values" else None) for k, v in self.items()}
        return VLMBatch(moved, None if self.labels is None else self.labels.to(device))


def _move(v: Any, device: torch.device | str, dtype: torch.dtype | None) -> Any:
    if isinstance(v, torch.Tensor):
        return v.to(device=device, dtype=dtype) if dtype is not None else v.to(device)
    return v


@dataclass
class Encoded:
    """One tokenized sample before padding."""

    input_ids: list[int]
    labels: list[int]
    token_type_ids: list[int]
    pixel_values: list[torch.Tensor]


class VLMProcessor:
    """Tokenizer + image transform + chat template, sized for one model (`num_image_tokens` per image)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_transform: ImageTransform,
        template: Template | str,
        num_image_tokens: int,
        max_length: int = 2048,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        self.template = get_template(template) if isinstance(template, str) else template
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.image_token_id: int = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.image_token_id == tokenizer.unk_token_id:
            raise VlmkitError(f"the tokenizer has no '{IMAGE_TOKEN}' token; load it with vlmkit.load_tokenizer")

    # ---------------------------------------------------------------------------------------- calling
    def __call__(
        self,
        images: ImageInput | Sequence[Any] | None = None,
        text: str | Sequence[str] | None = None,
        messages: Sequence[Any] | None = None,
        template: Template | str | None = None,
        add_generation_prompt: bool | None = None,
        padding_side: str = "right",
        max_length: int | None = None,
        return_tensors: str = "pt",
    ) -> VLMBatch:
        """Encode one sample or a batch.

        `text` is the user's message (a string, or a list for a batch); `messages` is a conversation
        (list of {"role", "content"} dicts or `Message`s; a list of conversations for a batch).
        `images` are the images of one sample in marker order, or one list per sample for a batch.
        """
        if (text is None) == (messages is None):
            raise VlmkitError("give exactly one of text= (the user's message) or messages= (a conversation)")
        tpl = self.template if template is None else (
            get_template(template) if isinstance(template, str) else template
        )
        convs, batched = _as_conversations(text, messages)
        image_lists = _as_image_lists(images, len(convs), batched)
        encoded = [
            self.encode(conv, imgs, tpl, add_generation_prompt, max_length or self.max_length)
            for conv, imgs in zip(convs, image_lists)
        ]
        return self.collate(encoded, padding_side)

    def encode(
        self,
        messages: Sequence[Message | dict[str, Any]],
        images: Sequence[ImageInput],
        template: Template | None = None,
        add_generation_prompt: bool | None = None,
        max_length: int | None = None,
    ) -> Encoded:
        """Tokenize one conversation; labels are IGNORE_INDEX except on assistant answers."""
        tpl = template or self.template
        messages = _attach_images([_as_message(m) for m in messages], len(images))
        if add_generation_prompt is None:
            add_generation_prompt = messages[-1].role != "assistant"
        rendered = tpl.render(messages, add_generation_prompt=add_generation_prompt)
        ids, labels = self._tokenize(rendered.text, rendered.assistant_spans, tpl)
        if not add_generation_prompt and tpl.append_eos and messages[-1].role == "assistant":
            ids.append(self.tokenizer.eos_token_id)
            labels.append(self.tokenizer.eos_token_id)
        n_markers = ids.count(self.image_token_id)
        if n_markers != len(images):
            raise VlmkitError(
                f"the prompt has {n_markers} '{IMAGE_TOKEN}' markers but {len(images)} images were given"
            )
        out = self._expand_images(ids, labels)
        out.pixel_values = [self.image_transform(im) for im in images]
        return self._truncate(out, max_length or self.max_length)

    def _tokenize(self, text: str, spans: list[tuple[int, int]], tpl: Template) -> tuple[list[int], list[int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        labels = [
            tok if any(s <= start < e for s, e in spans) else IGNORE_INDEX
            for tok, (start, _end) in zip(ids, enc["offset_mapping"])
        ]
        if tpl.add_bos and self.tokenizer.bos_token_id is not None:
            ids.insert(0, self.tokenizer.bos_token_id)
            labels.insert(0, IGNORE_INDEX)
        return ids, labels

    def _expand_images(self, ids: list[int], labels: list[int]) -> Encoded:
        out = Encoded([], [], [], [])
        n = self.num_image_tokens
        for tok, lab in zip(ids, labels):
            if tok == self.image_token_id:
                out.input_ids.extend([tok] * n)
                out.labels.extend([IGNORE_INDEX] * n)
                out.token_type_ids.extend([1] * n)
            else:
                out.input_ids.append(tok)
                out.labels.append(lab)
                out.token_type_ids.append(0)
        return out

    def _truncate(self, enc: Encoded, max_length: int) -> Encoded:
        if len(enc.input_ids) <= max_length:
            return enc
        if self.image_token_id in enc.input_ids[max_length:]:
            raise VlmkitError(
                f"a sample is {len(enc.input_ids)} tokens (each image takes {self.num_image_tokens}), longer than "
                f"max_length={max_length}, and cutting it would cut through an image: raise max_length or "
                "shorten the text"
            )
        warnings.warn(
            f"truncating a sample of {len(enc.input_ids)} tokens to max_length={max_length}", stacklevel=3
        )
        enc.input_ids = enc.input_ids[:max_length]
        enc.labels = enc.labels[:max_length]
        enc.token_type_ids = enc.token_type_ids[:max_length]
        return enc

    def collate(self, samples: Sequence[Encoded], padding_side: str = "right") -> VLMBatch:
        """Pad encoded samples into a batch; pixel_values of all samples are stacked in order."""
        if padding_side not in ("left", "right"):
            raise VlmkitError(f"padding_side='{padding_side}'; allowed: left, right")
        width = max(len(s.input_ids) for s in samples)
        pad_id = self.tokenizer.pad_token_id

        def pad(seq: list[int], value: int) -> list[int]:
            fill = [value] * (width - len(seq))
            return fill + seq if padding_side == "left" else seq + fill

        inputs: dict[str, Any] = {
            "input_ids": torch.tensor([pad(s.input_ids, pad_id) for s in samples]),
            "attention_mask": torch.tensor([pad([1] * len(s.input_ids), 0) for s in samples]),
            "token_type_ids": torch.tensor([pad(s.token_type_ids, 0) for s in samples]),
        }
        pixels = [p for s in samples for p in s.pixel_values]
        inputs["pixel_values"] = torch.stack(pixels) if pixels else None
        labels = torch.tensor([pad(s.labels, IGNORE_INDEX) for s in samples])
        return VLMBatch(inputs, labels)

    # ------------------------------------------------------------------------------------------ output
    def decode(self, ids: Sequence[int] | torch.Tensor, parse: bool = True) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return self.template.parse_response(text) if parse else text

    # --------------------------------------------------------------------------------------------- I/O
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write tokenizer files, the chat template, image settings and token counts, atomically."""
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            self.tokenizer.save_pretrained(str(tmp))
            write_json(tmp / PREPROCESSOR_CONFIG, self.image_transform.to_dict())
            write_json(tmp / TEMPLATE_FILE, self.template.to_dict())
            write_json(tmp / PROCESSOR_CONFIG, {
                "processor_class": "vlmkit.VLMProcessor",
                "template": self.template.name,
                "num_image_tokens": self.num_image_tokens,
                "max_length": self.max_length,
                "image_token": IMAGE_TOKEN,
            })
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> VLMProcessor:
        from ..models.language import prepare_tokenizer

        directory = Path(directory)
        files = [PROCESSOR_CONFIG, PREPROCESSOR_CONFIG, TEMPLATE_FILE]
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:
            raise CheckpointError(f"{directory}: processor files missing: {', '.join(missing)}")
        try:
            cfg, img, tpl = (json.loads((directory / f).read_text(encoding="utf-8")) for f in files)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{directory}: a processor file is not valid JSON ({e})") from None
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(str(directory)))
        return cls(tokenizer, ImageTransform.from_dict(img), Template.from_dict(tpl),
                   int(cfg["num_image_tokens"]), int(cfg.get("max_length", 2048)))


# ---------------------------------------------------------------------------------------------- inputs
def _as_message(m: Any) -> Message:
    if isinstance(m, Message):
        return m
    if isinstance(m, dict) and "role" in m:
        content = m.get("content", "")
        if isinstance(content, list):  # OpenAI-style content parts
            texts = []
            for part in content:
                if part.get("type") == "text":
                    texts.append(part.get("text", ""))
                elif part.get("type") in ("image", "image_url"):
                    texts.append(IMAGE_TOKEN)
            content = "".join(texts)
        if m["role"] not in ("system", "user", "assistant"):
            raise VlmkitError(f"message role '{m['role']}'; allowed: system, user, assistant")
        return Message(m["role"], str(content))
    raise VlmkitError(f"a message must be a dict with 'role' and 'content', got {m!r}")


def _as_conversations(
    text: str | Sequence[str] | None, messages: Sequence[Any] | None
) -> tuple[list[list[Message]], bool]:
    if text is not None:
        if isinstance(text, str):
            return [[Message("user", text)]], False
        return [[Message("user", t)] for t in text], True
    assert messages is not None
    if messages and isinstance(messages[0], (list, tuple)):
        return [[_as_message(m) for m in conv] for conv in messages], True
    return [[_as_message(m) for m in messages]], False


def _as_image_lists(images: Any, n: int, batched: bool) -> list[list[ImageInput]]:
    if images is None:
        return [[] for _ in range(n)]
    if not batched:
        return [list(images) if isinstance(images, (list, tuple)) else [images]]
    if not isinstance(images, (list, tuple)) or len(images) != n:
        raise VlmkitError(f"a batch of {n} samples needs a list of {n} image lists (use [] for none)")
    return [list(x) if isinstance(x, (list, tuple)) else ([] if x is None else [x]) for x in images]


def _attach_images(messages: list[Message], n_images: int) -> list[Message]:
    """Give each message its image count: markers where the user wrote them, else all on the first user turn."""
    counts = [m.content.count(IMAGE_TOKEN) for m in messages]
    total = sum(counts)
    if total > n_images:
        raise VlmkitError(f"the messages have {total} '{IMAGE_TOKEN}' markers but {n_images} images were given")
    out = [Message(m.role, m.content, c) for m, c in zip(messages, counts)]
    extra = n_images - total
    if extra:
        first_user = next((i for i, m in enumerate(out) if m.role == "user"), None)
        if first_user is None:
            raise VlmkitError("images were given but the conversation has no user message")
        m = out[first_user]
        out[first_user] = Message(m.role, m.content, m.images + extra)
    return out
