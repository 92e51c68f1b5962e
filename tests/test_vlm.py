"""The composed VLM: every encoder x connector, the image merge, batches of mixed image counts, KV cache."""

from __future__ import annotations

import pytest
import torch

import vlmkit
from conftest import make_image
from vlmkit import IGNORE_INDEX, VlmkitError
from vlmkit.models.connectors import CONNECTORS
from vlmkit.models.vision import VISION_ENCODERS

TINY_VISION = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 2,
               "intermediate_size": 64}
TINY_LM = {"type": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
           "intermediate_size": 64, "max_position_embeddings": 256}
CONNECTOR_OPTIONS = {
    "qformer": {"num_queries": 4, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
    "resampler": {"num_queries": 4, "hidden_size": 32},
    "conv_downsample": {"next": {"type": "glu"}},
}
CONVERSATION = [
    {"role": "user", "content": "<image>\nWhat is in the picture?"},
    {"role": "assistant", "content": "Three small squares."},
]


def tiny_config(vision: str = "clip", connector: str = "mlp", **extra) -> dict:
    cfg = {
        "vision": {"type": vision, **TINY_VISION},
        "connector": {"type": connector, **CONNECTOR_OPTIONS.get(connector, {})},
        "language": dict(TINY_LM),
        "template": "vicuna",
        "max_length": 256,
    }
    cfg.update(extra)
    return cfg


@pytest.mark.parametrize("connector", CONNECTORS.names())
@pytest.mark.parametrize("vision", VISION_ENCODERS.names())
def test_every_encoder_connector_pair_trains(vision, connector, image):
    torch.manual_seed(0)
    model, processor = vlmkit.build(tiny_config(vision, connector))
    batch = processor(images=[image], messages=CONVERSATION)
    n_img = int((batch["input_ids"] == model.image_token_id).sum())
    assert n_img == model.num_image_tokens == model.connector.num_output_tokens(model.vision_tower.num_patches)
    out = model(**batch, labels=batch["labels"])
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    grads = [p.grad for p in model.connector.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_loss_is_cross_entropy_over_assistant_tokens(image):
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    batch = processor(images=[image], messages=CONVERSATION)
    out = model(**batch, labels=batch["labels"])
    labels = batch["labels"][0]
    logits = out.logits[0]
    pos = [t for t in range(len(labels) - 1) if labels[t + 1] != IGNORE_INDEX]
    manual = torch.nn.functional.cross_entropy(logits[pos], labels[[t + 1 for t in pos]])
    torch.testing.assert_close(out.loss, manual)
    answer = processor.tokenizer.decode([t for t in labels.tolist() if t != IGNORE_INDEX])
    assert answer.strip() == "Three small squares.</s>" or answer.strip().startswith("Three small squares.")


def test_placeholder_feature_mismatch_raises(image):
    model, processor = vlmkit.build("llava-tiny")
    batch = processor(images=[image], text="<image>\nWhat is this?")
    ids = batch["input_ids"].clone()
    first = int((ids[0] == model.image_token_id).nonzero()[0])
    ids[0, first] = processor.tokenizer.unk_token_id
    with pytest.raises(VlmkitError, match=r"hold \d+ '<image>' tokens but 1 image\(s\) give \d+ feature"):
        model(input_ids=ids, attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"])
    with pytest.raises(VlmkitError, match="do not match"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              pixel_values=torch.cat([batch["pixel_values"]] * 2))
    with pytest.raises(VlmkitError, match="do not match"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_mixed_batch_matches_single_samples():
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    model.eval()
    convs = [
        [{"role": "user", "content": "<image> and <image>: which is brighter?"},
         {"role": "assistant", "content": "The first."}],
        [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello."}],
        [{"role": "user", "content": "<image>\nDescribe it."}, {"role": "assistant", "content": "Squares."}],
    ]
    imgs = [[make_image(1), make_image(2)], [], [make_image(3)]]
    batch = processor(images=imgs, messages=convs)
    assert batch["pixel_values"].shape[0] == 3
    with torch.no_grad():
        full = model(**batch, labels=batch["labels"])
        for i, (conv, im) in enumerate(zip(convs, imgs)):
            one = processor(images=im, messages=conv)
            n = one["input_ids"].shape[1]
            single = model(**one).logits[0]
            torch.testing.assert_close(full.logits[i, :n], single, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(full.loss)


def test_kv_cache_greedy_matches_recompute(image):
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    model.eval()
    batch = processor(images=[image], text="<image>\nWhat is this?")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        recomputed = ids
        for _ in range(8):
            logits = model(input_ids=recomputed, attention_mask=torch.ones_like(recomputed),
                           pixel_values=batch["pixel_values"]).logits
            recomputed = torch.cat([recomputed, logits[:, -1:].argmax(-1)], dim=1)
        out = model(**batch, use_cache=True)
        cached = torch.cat([ids, out.logits[:, -1:].argmax(-1)], dim=1)
        cache = out.past_key_values
        for _ in range(7):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=cached[:, -1:], attention_mask=mask, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            cached = torch.cat([cached, out.logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("lm_type", ["gpt2", "qwen2", "mistral", "phi", "gemma", "glm"])
def test_other_language_models(lm_type, image):
    lm = {**TINY_LM, "type": lm_type}
    if lm_type == "gpt2":
        lm.pop("num_kv_heads")
    model, processor = vlmkit.build(tiny_config(language=lm))
    batch = processor(images=[image], messages=CONVERSATION)
    out = model(**batch, labels=batch["labels"])
    assert torch.isfinite(out.loss)
    assert model.language_model.config.model_type == lm_type


def test_frozen_flags_and_counts():
    model, _ = vlmkit.build("llava-tiny")
    counts = model.parameter_counts()
    assert counts["vision_tower"][1] == 0 and counts["connector"][1] == counts["connector"][0] > 0
    assert counts["language_model"][1] == counts["language_model"][0]


@pytest.mark.parametrize("preset", ["llava-tiny", "codefuse-tiny"])
def test_label_only_logits_give_the_same_loss_and_grads(preset, image):
    torch.manual_seed(0)
    model, processor = vlmkit.build(preset)
    text_only = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi there."}]
    batch = processor(images=[[image], []], messages=[CONVERSATION, text_only])
    full = model(**batch, labels=batch["labels"])
    full.loss.backward()
    g_full = [p.grad.clone() for p in model.connector.parameters()]
    model.zero_grad()
    fast = model(**batch, labels=batch["labels"], logits_to_keep="labels")
    fast.loss.backward()
    torch.testing.assert_close(fast.loss, full.loss)
    for a, p in zip(g_full, model.connector.parameters()):
        torch.testing.assert_close(p.grad, a)
    n_labels = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert fast.logits.shape == (n_labels, full.logits.shape[-1])
    last = model(**batch, logits_to_keep="last")
    torch.testing.assert_close(last.logits[:, -1], full.logits[:, -1])
