"""Continuous batching: a request gets the same tokens alone and while others join and leave; cancel, caps, errors."""

from __future__ import annotations

import time

import pytest
import torch

import vlmkit
from conftest import make_image
from vlmkit.errors import VlmkitError
from vlmkit.generation import Engine, GenerationConfig, Request
from vlmkit.generation.scheduler import Scheduler
from vlmkit.templates import Message


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # intra-op threads only add barrier waits for a toy model on a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["llava-tiny", "cogvlm2-hires-tiny"])
def engine(request):
    torch.manual_seed(0)
    model, processor = vlmkit.build(request.param)
    return Engine(model.eval(), processor)


def encode(engine: Engine, text: str, images=()):
    message = Message("user", "<image>\n" * len(images) + text)
    return engine.processor.encode([message], list(images), engine.template, add_generation_prompt=True)


def alone(engine: Engine, text: str, images, config: GenerationConfig) -> list[int]:
    request = Request([{"role": "user", "content": "<image>\n" * len(images) + text}], list(images))
    return engine.generate([request], config)[0].token_ids


def wait_for(predicate, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


PROMPTS = [
    ("What is in the picture?", [make_image(1)]),
    ("Say hello to everyone in the room, please.", []),
    ("Which one is brighter?", [make_image(2), make_image(3)]),
    ("Describe it.", [make_image(4)]),
]


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "seeded"])
def test_joining_and_leaving_does_not_change_tokens(engine, sample):
    lengths = [24, 3, 12, 16]
    configs = [GenerationConfig(max_new_tokens=n, do_sample=sample, top_k=50, seed=i) for i, n in enumerate(lengths)]
    expected = [alone(engine, t, im, c) for (t, im), c in zip(PROMPTS, configs)]
    with Scheduler(engine, max_batch=3) as scheduler:
        streams = [scheduler.submit(encode(engine, *PROMPTS[0]), configs[0])]
        for (text, images), config in zip(PROMPTS[1:], configs[1:]):
            steps = scheduler.stats()["steps"]
            wait_for(lambda s=steps: scheduler.stats()["steps"] >= s + 2)  # join a running batch
            streams.append(scheduler.submit(encode(engine, text, images), config))
        texts = ["".join(s) for s in streams]
        stats = scheduler.stats()
    got = [s.result.token_ids for s in streams]
    assert got == [e[:len(g)] for e, g in zip(expected, got)]
    assert [len(g) for g in got] == [len(e) for e in expected]
    assert texts == [s.result.text for s in streams]
    assert stats["prefills"] >= 3 and stats["peak_batch"] >= 2
    assert stats["peak_batch"] <= 3


def test_max_batch_caps_the_batch_and_all_finish(engine):
    config = GenerationConfig(max_new_tokens=6)
    with Scheduler(engine, max_batch=2) as scheduler:
        streams = [scheduler.submit(encode(engine, t, im), config) for t, im in PROMPTS]
        for s in streams:
            list(s)
        assert scheduler.stats()["peak_batch"] == 2
    for (text, images), s in zip(PROMPTS, streams):
        assert s.result.token_ids == alone(engine, text, images, config)


def test_cancelled_request_leaves_the_batch(engine):
    long = GenerationConfig(max_new_tokens=400)
    with Scheduler(engine, max_batch=4) as scheduler:
        stream = scheduler.submit(encode(engine, *PROMPTS[0]), long, ignore_eos=True)
        wait_for(lambda: scheduler.stats()["generated_tokens"] >= 3)
        stream.cancel()
        wait_for(lambda: scheduler.stats()["running"] == 0)
        stats = scheduler.stats()
        assert stats["cancelled"] == 1 and stats["generated_tokens"] < 400
        after = scheduler.submit(encode(engine, *PROMPTS[1]), GenerationConfig(max_new_tokens=4))
        assert "".join(after) == after.result.text
    assert stream.result is None


def test_a_failing_request_fails_alone(engine):
    good = encode(engine, *PROMPTS[0])
    bad = encode(engine, *PROMPTS[3])
    bad.pixel_values = []  # image placeholders without pixels: the model refuses it
    config = GenerationConfig(max_new_tokens=5)
    scheduler = Scheduler(engine, max_batch=4)
    streams = [scheduler.submit(good, config), scheduler.submit(bad, config)]  # queued first: one prefill group
    with scheduler:
        assert "".join(streams[0]) == streams[0].result.text
        with pytest.raises(VlmkitError, match="placeholders"):
            list(streams[1])
        assert scheduler.stats()["failed"] == 1
    assert streams[0].result.token_ids == alone(engine, *PROMPTS[0], config)


def test_prepare_encoded_matches_prepare(engine):
    requests = [Request([{"role": "user", "content": "<image>\n" * len(im) + t}], im) for t, im in PROMPTS[:3]]
    a = engine.prepare(requests)
    b = engine.prepare_encoded([encode(engine, t, im) for t, im in PROMPTS[:3]])
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    assert torch.equal(a.position_ids, b.position_ids) and a.prompt_tokens == b.prompt_tokens
    assert torch.allclose(a.image_features, b.image_features)


def recompute(model, processor, text: str, images, n: int) -> list[int]:
    """Greedy tokens without any cache (the whole sequence re-run each step); stops at eos."""
    ids = processor(images=list(images) or None, text="<image>\n" * len(images) + text)["input_ids"]
    pixels = processor(images=list(images), text="<image>\n" * len(images) + text)["pixel_values"] if images \
        else None
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels).logits[:, -1]
            logits[:, model.image_token_id] = float("-inf")
            out.append(int(logits.argmax(-1)))
            if out[-1] == processor.tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[out[-1]]])], dim=1)
    return out


def test_prefix_tuned_model_batches_statically_and_correctly():
    from vlmkit.train.config import LoraConfig, PeftConfig
    from vlmkit.train.peft import apply_peft

    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    apply_peft(model, PeftConfig(method="prefix", num_virtual_tokens=3), LoraConfig())
    with torch.no_grad():
        model.language_model.prompt_encoder["default"].embedding.weight.normal_()
    engine = Engine(model.eval(), processor)
    config = GenerationConfig(max_new_tokens=8)
    scheduler = Scheduler(engine, max_batch=4)
    streams = [scheduler.submit(encode(engine, t, im), config) for t, im in PROMPTS[:2]]
    with scheduler:
        wait_for(lambda: scheduler.stats()["steps"] >= 1)
        streams.append(scheduler.submit(encode(engine, *PROMPTS[3]), config))  # waits: caches cannot merge
        for s in streams:
            list(s)
        assert scheduler.stats()["peak_batch"] == 2
    for (text, images), s in zip(PROMPTS[:2] + PROMPTS[3:], streams):
        assert s.result.token_ids == recompute(model, processor, text, images, 8)
