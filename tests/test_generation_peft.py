"""Generation through adapted models: prefix tuning keeps its own cache, LoRA is transparent."""

from __future__ import annotations

import torch

import vlmkit
from vlmkit.generation import ChatSession, Engine, GenerationConfig
from vlmkit.train.config import LoraConfig, PeftConfig
from vlmkit.train.peft import apply_peft


def greedy_recompute(model, processor, messages, image, n):
    batch = processor(images=[image], messages=messages)
    ids = batch["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=batch["pixel_values"]).logits
            logits[:, -1, model.image_token_id] = float("-inf")
            nxt = logits[:, -1, : len(processor.tokenizer)].argmax(-1, keepdim=True)
            out.append(int(nxt))
            ids = torch.cat([ids, nxt], dim=1)
    return out


def prefix_model():
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    apply_peft(model, PeftConfig(method="prefix", num_virtual_tokens=4), LoraConfig())
    with torch.no_grad():  # make the prefix matter
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 1.0)
    return model.eval(), processor


def test_engine_with_prefix_tuning_matches_recompute(image):
    model, processor = prefix_model()
    messages = [{"role": "user", "content": "<image>\nWhat is it?"}]
    config = GenerationConfig(max_new_tokens=6, min_new_tokens=6)
    got = Engine(model, processor).generate([(messages, [image])], config)[0].token_ids
    assert got == greedy_recompute(model, processor, messages, image, 6)


def test_session_with_prefix_tuning_answers_like_a_fresh_engine(image):
    model, processor = prefix_model()
    config = GenerationConfig(max_new_tokens=4, min_new_tokens=4)
    session = ChatSession(model, processor, config=config)
    session.ask("What is it?", image=image)
    second = session.ask("And the color?")
    messages = [{"role": m.role, "content": m.content} for m in session.history[:-1]]
    fresh = Engine(model, processor).generate([(messages, [image])], config)[0].text
    assert second == fresh
