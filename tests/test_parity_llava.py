"""Parity with transformers' LlavaForConditionalGeneration: same weights, same logits and same greedy tokens."""

from __future__ import annotations

import pytest
import torch

import vlmkit
from vlmkit.generation import Engine, GenerationConfig
from vlmkit.interop.llava import from_hf_llava, to_hf_llava


@pytest.mark.parametrize("vision", ["clip", "siglip"])
def test_logits_match_transformers_llava(vision, image):
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny", [f"vision.type={vision}"])
    model.eval()
    llava = to_hf_llava(model)
    batch = processor(images=[image, image], text="<image> and <image>: which one?")
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_greedy_generation_matches_transformers_generate(image):
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    llava = to_hf_llava(model.eval())
    messages = [{"role": "user", "content": "<image>\nWhat is this?"}]
    ours = Engine(model, processor).generate([(messages, [image])], GenerationConfig(max_new_tokens=12))[0]
    batch = processor(images=[image], messages=messages)
    with torch.no_grad():
        out = llava.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             pixel_values=batch["pixel_values"], max_new_tokens=12, do_sample=False,
                             suppress_tokens=[model.image_token_id])
    theirs = out[0, batch["input_ids"].shape[1]:].tolist()
    n = len(ours.token_ids)
    assert ours.token_ids == theirs[:n]


def test_round_trip_through_llava(image):
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    back = from_hf_llava(to_hf_llava(model.eval()), processor.tokenizer)
    batch = processor(images=[image], text="<image> hi")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, back(**batch).logits)


def test_incompatible_model_is_refused():
    model, _ = vlmkit.build("minigpt4-tiny")
    with pytest.raises(vlmkit.VlmkitError, match="LlavaForConditionalGeneration"):
        to_hf_llava(model)
