"""The tokenizer shipped in the package loads offline and keeps special tokens whole."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from transformers import AutoTokenizer

SPECIALS = ["<s>", "</s>", "<pad>", "<unk>", "<image>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
            "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<img>", "</img>", "<Img>", "</Img>"]


def _package_dir() -> Path:
    spec = importlib.util.find_spec("vlmkit")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "assets" / "tokenizer"


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(_package_dir()))


def test_special_roles(tok) -> None:
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}) == 4


def test_vocab_size(tok) -> None:
    assert 1000 < len(tok) < 2100


@pytest.mark.parametrize("special", SPECIALS)
def test_special_tokens_are_single_ids(tok, special: str) -> None:
    ids = tok.encode(special, add_special_tokens=False)
    assert len(ids) == 1
    assert tok.convert_ids_to_tokens(ids[0]) == special
    # never split, even glued to other text
    ids = tok.encode(f"x{special}y", add_special_tokens=False)
    assert tok.convert_tokens_to_ids(special) in ids


def test_wrapped_image_marker(tok) -> None:
    ids = tok.encode("<Img><image></Img> hi", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids[:3]) == ["<Img>", "<image>", "</Img>"]


@pytest.mark.parametrize(
    "text",
    [
        "问：图中有什么？\n答：一个红色的圆形",
        "[[086,540,400,760]]",
        "Can you point out the red circle in the image and provide the bounding boxes of their location?",
        "  two  spaces and a tab\there ",
        "USER: <image>\nWhat color is the square? ASSISTANT: Blue.</s>",
        "captcha: aZ3k9Q",
    ],
)
def test_round_trip(tok, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_digits_are_single_tokens(tok) -> None:
    ids = tok.encode("[[086,540,400,760]]", add_special_tokens=False)
    toks = tok.convert_ids_to_tokens(ids)
    assert [t for t in toks if t.isdigit()] == list("086540400760")
