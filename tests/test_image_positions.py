"""`image_positions: shared` (CogVLM's position ids): the ids themselves, training / cached generation / chat
sessions / save-load all using them, and the places that must refuse them."""

from __future__ import annotations

import pytest
import torch

import vlmkit
from vlmkit import ConfigError, VlmkitError
from vlmkit.generation import ChatSession, Engine, GenerationConfig, Request
from vlmkit.interop.llava import check_llava_compatible
from vlmkit.models.vlm import shared_image_positions

QUESTION = [{"role": "user", "content": "<image>\nWhat is in the picture?"}]
GREEDY = GenerationConfig(max_new_tokens=8)


@pytest.fixture(scope="module")
def shared():
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny", ["image_positions=shared"])
    return model.eval(), processor


def test_shared_positions_of_padded_rows_with_two_images():
    # row 0: 2 pads, text, image (3 tokens), text, image, image (back to back), text; row 1: no padding
    types = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0],
                          [0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                         [1] * 14])
    pos = shared_image_positions(mask, types, tokens_per_image=3)
    assert pos.tolist() == [[0, 0, 0, 1, 1, 1, 2, 3, 3, 3, 4, 4, 4, 5],
                            [0, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]


def test_config_rejects_unknown_value():
    with pytest.raises(ConfigError, match="image_positions='diagonal'; allowed: sequential, shared"):
        vlmkit.build("llava-tiny", ["image_positions=diagonal"])


def test_forward_uses_shared_positions(shared, image):
    model, processor = shared
    batch = processor(images=[image], messages=QUESTION)
    with torch.no_grad():
        implicit = model(**batch).logits
        explicit = model(**batch, position_ids=model.position_ids(batch["attention_mask"],
                                                                  batch["token_type_ids"])).logits
        sequential = model(**batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None]).logits
    torch.testing.assert_close(implicit, explicit)
    assert not torch.allclose(implicit[:, -1], sequential[:, -1], atol=1e-4)  # the option changes the model


def test_cached_greedy_matches_recompute_with_shared_positions(shared, image):
    model, processor = shared
    result = Engine(model, processor).generate([Request(QUESTION, [image])], GREEDY)[0]
    batch = processor(images=[image], messages=QUESTION)
    ids, types = batch["input_ids"], batch["token_type_ids"]  # [1, P]
    with torch.no_grad():
        for _ in range(GREEDY.max_new_tokens):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=types,
                           pixel_values=batch["pixel_values"]).logits[:, -1]  # [1, V]
            logits[:, model.image_token_id] = float("-inf")
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            types = torch.cat([types, torch.zeros_like(types[:, :1])], dim=1)
    recomputed = ids[0, batch["input_ids"].shape[1]:].tolist()
    assert result.token_ids == recomputed[:len(result.token_ids)]


def test_session_follow_up_equals_fresh_conversation(shared, image):
    model, processor = shared
    session = ChatSession(model, processor, config=GREEDY)
    session.ask("What is in the picture?", image)
    follow_up = session.ask("Describe the colors.")
    full = [{"role": m.role, "content": m.content} for m in session.history][:-1]
    assert follow_up == Engine(model, processor).generate([Request(full, [image])], GREEDY)[0].text


def test_cached_forward_without_positions_is_refused(shared, image):
    model, processor = shared
    batch = processor(images=[image], messages=QUESTION)
    with torch.no_grad():
        out = model(**batch, use_cache=True)
        with pytest.raises(VlmkitError, match="pass position_ids"):
            model(input_ids=batch["input_ids"][:, -1:], past_key_values=out.past_key_values,
                  attention_mask=torch.ones(1, batch["input_ids"].shape[1] + 1, dtype=torch.long))


def test_save_load_keeps_shared_positions(shared, image, tmp_path):
    model, processor = shared
    vlmkit.save(model, processor, tmp_path / "m")
    loaded, loaded_processor = vlmkit.load(tmp_path / "m")
    assert loaded.config.image_positions == "shared"
    batch = processor(images=[image], messages=QUESTION)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, model(**batch).logits)


def test_llava_export_refuses_shared_positions(shared):
    with pytest.raises(VlmkitError, match="image_positions is 'shared'"):
        check_llava_compatible(shared[0])
