"""The processor: image-token expansion, assistant-only labels, truncation, padding, I/O, bad inputs."""

from __future__ import annotations

import pytest
import torch

import vlmkit
from vlmkit import IGNORE_INDEX, VlmkitError
from vlmkit.processing import ImageTransform, VLMProcessor


@pytest.fixture(scope="module")
def llava():
    return vlmkit.build("llava-tiny")


def labelled_text(processor, batch, row=0):
    labels = batch["labels"][row]
    return processor.tokenizer.decode([t for t in labels.tolist() if t != IGNORE_INDEX])


def test_image_marker_expands_to_connector_tokens(llava, image):
    model, processor = llava
    batch = processor(images=[image, image], text="<image> and <image>")
    ids = batch["input_ids"][0]
    assert int((ids == processor.image_token_id).sum()) == 2 * model.num_image_tokens
    assert torch.equal(batch["token_type_ids"][0], (ids == processor.image_token_id).long())
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert (batch["labels"] == IGNORE_INDEX).all()  # a bare prompt has no answer to learn


def test_only_assistant_answers_carry_labels(llava):
    _, processor = llava
    conv = [{"role": "user", "content": "Count the squares."}, {"role": "assistant", "content": "3"},
            {"role": "user", "content": "And circles?"}, {"role": "assistant", "content": "2"}]
    batch = processor(messages=conv)
    assert labelled_text(processor, batch).replace(" ", "") == "3</s>2</s>"
    ids = batch["input_ids"][0]
    assert ids[0] == processor.tokenizer.bos_token_id and batch["labels"][0, 0] == IGNORE_INDEX


def test_append_eos_templates_label_the_eos(image):
    _, processor = vlmkit.build("cogvlm2-hires-tiny")
    conv = [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A box."}]
    batch = processor(images=[image], messages=conv)
    labels = batch["labels"][0]
    assert labels[-1] == processor.tokenizer.eos_token_id
    assert "A box." in labelled_text(processor, batch)
    # images go first for CogVLM: bos, then the image slots
    assert batch["token_type_ids"][0, 1] == 1 and batch["token_type_ids"][0, 0] == 0


def test_openai_content_parts(llava, image):
    _, processor = llava
    msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    a = processor(images=[image], messages=msg)
    b = processor(images=[image], text="<image>What is it?")
    assert torch.equal(a["input_ids"], b["input_ids"])


def test_missing_marker_is_prepended_and_extra_marker_fails(llava, image):
    _, processor = llava
    a = processor(images=[image], text="What is it?")
    b = processor(images=[image], text="<image>\nWhat is it?")
    assert torch.equal(a["input_ids"], b["input_ids"])
    with pytest.raises(VlmkitError, match="2 '<image>' markers but 1 images"):
        processor(images=[image], text="<image><image>")


def test_truncation_never_cuts_an_image(llava, image):
    _, processor = llava
    long_text = "word " * 200
    with pytest.raises(VlmkitError, match="cut through an image"):
        processor(images=[image], text=long_text + "<image>", max_length=64)
    with pytest.warns(UserWarning, match="truncating"):
        batch = processor(images=[image], text="<image>" + long_text, max_length=64)
    assert batch["input_ids"].shape[1] == 64


def test_left_padding_for_generation(llava):
    _, processor = llava
    batch = processor(text=["Hi", "A much longer question with many words in it?"], padding_side="left")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1
    assert batch["input_ids"][0, 0] == processor.tokenizer.pad_token_id
    assert batch["pixel_values"] is None


def test_batch_semantics(llava, image):
    _, processor = llava
    batch = processor(images=[image], text="<image> hi")
    assert "labels" in batch and "labels" not in dict(batch) and batch.labels is batch["labels"]
    moved = batch.to("cpu", torch.bfloat16)
    assert moved["pixel_values"].dtype == torch.bfloat16 and moved["input_ids"].dtype == torch.long


def test_unreadable_image_names_the_file(llava, tmp_path):
    _, processor = llava
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(VlmkitError, match="broken.png"):
        processor(images=[bad], text="<image>")
    with pytest.raises(VlmkitError, match="not found: .*missing.jpg"):
        processor(images=[tmp_path / "missing.jpg"], text="<image>")


def test_image_transform_pad_to_square_and_roundtrip():
    from PIL import Image

    t = ImageTransform(size=16, pad_to_square=True)
    x = t(Image.new("RGB", (40, 20), "white"))
    assert x.shape == (3, 16, 16)
    top_row = x[:, 0, 8]  # padded with the mean colour -> ~0 after normalisation
    assert top_row.abs().max() < 0.05
    assert ImageTransform.from_dict(t.to_dict()) == t


def test_processor_roundtrip(llava, tmp_path, image):
    _, processor = llava
    processor.save_pretrained(tmp_path / "p")
    again = VLMProcessor.from_pretrained(tmp_path / "p")
    assert again.template == processor.template and again.num_image_tokens == processor.num_image_tokens
    a, b = processor(images=[image], text="<image>x"), again(images=[image], text="<image>x")
    assert torch.equal(a["input_ids"], b["input_ids"])
    (tmp_path / "p" / "processor_config.json").unlink()
    with pytest.raises(vlmkit.VlmkitError, match="processor_config.json"):
        VLMProcessor.from_pretrained(tmp_path / "p")
