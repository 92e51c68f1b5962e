"""The generation engine: cached greedy = recompute, batched = single, streaming, stops, sampling, config checks."""

from __future__ import annotations

import pytest
import torch

import vlmkit
from conftest import make_image
from vlmkit import ConfigError
from vlmkit.generation import Engine, GenerationConfig, Request

QUESTION = [{"role": "user", "content": "<image>\nWhat is in the picture?"}]
GREEDY = GenerationConfig(max_new_tokens=10)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    return model.eval(), processor


@pytest.fixture
def engine(tiny):
    return Engine(*tiny)


def script(monkeypatch, model, token_ids: list[int]) -> None:
    """Make `model` emit `token_ids` one per forward call, from the start at each prefill (the real forward runs)."""
    original = model.forward
    step = [0]

    def forward(*args, **kwargs):
        cache = kwargs.get("past_key_values")
        if cache is None or cache.get_seq_length() == 0:
            step[0] = 0
        out = original(*args, **kwargs)
        logits = torch.full_like(out.logits, -1e4)  # [B, L, V]
        logits[..., token_ids[min(step[0], len(token_ids) - 1)]] = 0.0
        step[0] += 1
        out.logits = logits
        return out

    monkeypatch.setattr(model, "forward", forward)


def test_greedy_with_cache_matches_recompute(engine, tiny, image):
    model, processor = tiny
    result = engine.generate([Request(QUESTION, [image])], GREEDY)[0]
    batch = processor(images=[image], messages=QUESTION)
    ids = batch["input_ids"]  # [1, P]
    with torch.no_grad():
        for _ in range(GREEDY.max_new_tokens):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                           pixel_values=batch["pixel_values"]).logits[:, -1]  # [1, V]
            logits[:, model.image_token_id] = float("-inf")
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    recomputed = ids[0, batch["input_ids"].shape[1]:].tolist()
    assert result.token_ids == recomputed[:len(result.token_ids)]
    assert result.prompt_tokens == batch["input_ids"].shape[1]
    assert result.completion_tokens == len(result.token_ids)
    if result.finish_reason == "length":
        assert len(result.token_ids) == GREEDY.max_new_tokens


def test_batched_left_padding_matches_one_by_one(engine):
    requests = [
        Request(QUESTION, [make_image(1)]),
        Request([{"role": "user", "content": "Say hello to everyone in the room, please."}]),
        ([{"role": "user", "content": "<image> or <image>?"}], [make_image(2), make_image(3)]),
    ]
    batched = engine.generate(requests, GREEDY)
    single = [engine.generate([r], GREEDY)[0] for r in requests]
    assert len({r.prompt_tokens for r in batched}) == 3  # the batch really was padded
    for b, s in zip(batched, single):
        assert (b.token_ids, b.text, b.finish_reason, b.prompt_tokens) == (
            s.token_ids, s.text, s.finish_reason, s.prompt_tokens)
    assert engine.generate(requests, GREEDY, batch_size=2) == batched


def test_stream_concatenates_to_the_answer(engine, image):
    chunks = list(engine.stream(Request(QUESTION, [image]), GREEDY))
    assert all(isinstance(c, str) and c for c in chunks)
    assert "".join(chunks) == engine.generate([Request(QUESTION, [image])], GREEDY)[0].text


def test_stream_never_splits_utf8_nor_shows_a_stop_prefix(monkeypatch, engine, tiny, image):
    model, processor = tiny
    tok = processor.tokenizer
    ids = tok.encode("Hé 你好 wörld USER: more", add_special_tokens=False)
    assert any(tok.decode(ids[:k]).endswith("\ufffd") for k in range(1, len(ids)))  # characters are split
    script(monkeypatch, model, ids)
    config = GenerationConfig(max_new_tokens=len(ids))
    chunks = list(engine.stream(Request(QUESTION, [image]), config))
    assert all("\ufffd" not in c and "US" not in c for c in chunks)
    assert "".join(chunks) == "Hé 你好 wörld"
    result = engine.generate([Request(QUESTION, [image])], config)[0]
    assert (result.text, result.finish_reason) == ("Hé 你好 wörld", "stop")


def test_stop_strings_and_stop_token_ids_cut(monkeypatch, engine, tiny, image):
    model, processor = tiny
    tok = processor.tokenizer
    ids = tok.encode("red square and blue circle", add_special_tokens=False)
    script(monkeypatch, model, ids)
    request = Request(QUESTION, [image])
    by_string = engine.generate([request], GenerationConfig(max_new_tokens=30, stop_strings=("blue",)))[0]
    assert (by_string.text, by_string.finish_reason) == ("red square and", "stop")
    stop_id = tok.encode(" and", add_special_tokens=False)[-1]
    cut = ids.index(stop_id)
    by_id = engine.generate([request], GenerationConfig(max_new_tokens=30, stop_token_ids=(stop_id,)))[0]
    assert by_id.token_ids == ids[:cut + 1] and by_id.finish_reason == "stop"
    assert by_id.text == tok.decode(ids[:cut]).strip()
    short = engine.generate([request], GenerationConfig(max_new_tokens=3))[0]
    assert (short.token_ids, short.finish_reason, short.completion_tokens) == (ids[:3], "length", 3)
    eos = ids[:2] + [tok.eos_token_id] + ids[2:]
    script(monkeypatch, model, eos)
    at_eos = engine.generate([request], GenerationConfig(max_new_tokens=30))[0]
    assert at_eos.token_ids == eos[:3] and at_eos.text == tok.decode(ids[:2]).strip()


def test_seeded_sampling_is_reproducible(engine, image):
    request = Request(QUESTION, [image])
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=7)
    first = engine.generate([request], cfg)[0].token_ids
    assert engine.generate([request], cfg)[0].token_ids == first
    other = {tuple(engine.generate([request], cfg.replace(seed=s))[0].token_ids) for s in range(3)}
    assert len(other | {tuple(first)}) > 1
    pair = engine.generate([request, Request([{"role": "user", "content": "Hi."}])], cfg)
    assert pair[0].token_ids == first  # one generator per request: batching does not change a row's draws


def test_repetition_penalty_and_max_length(engine, image):
    request = Request(QUESTION, [image])
    out = engine.generate([request], GenerationConfig(max_new_tokens=6, repetition_penalty=1.3))[0]
    assert 1 <= out.completion_tokens <= 6
    capped = engine.generate([request], GenerationConfig(max_new_tokens=50, max_length=out.prompt_tokens + 2))[0]
    assert capped.completion_tokens <= 2
    with pytest.raises(vlmkit.VlmkitError, match="max_length"):
        engine.generate([request], GenerationConfig(max_length=out.prompt_tokens))


@pytest.mark.parametrize(("field", "value", "allowed"), [
    ("max_new_tokens", 0, ">= 1"),
    ("temperature", 0.0, "> 0"),
    ("top_p", 1.5, "(0, 1]"),
    ("top_p", 0.0, "(0, 1]"),
    ("top_k", -1, ">= 0"),
    ("repetition_penalty", 0, "> 0"),
    ("stop_strings", ("",), "non-empty"),
    ("stop_token_ids", (-3,), ">= 0"),
    ("seed", -1, ">= 0"),
    ("max_length", 0, ">= 1"),
    ("do_sample", "yes", "True or False"),
])
def test_config_validation_names_field_and_range(field, value, allowed):
    with pytest.raises(ConfigError) as err:
        GenerationConfig(**{field: value})
    assert f"GenerationConfig.{field}=" in str(err.value) and allowed in str(err.value)


def test_config_from_dict_and_coercion():
    cfg = GenerationConfig.from_dict({"stop_strings": ["###"], "stop_token_ids": 5})
    assert cfg.stop_strings == ("###",) and cfg.stop_token_ids == (5,)
    with pytest.raises(ConfigError, match="unknown generation setting"):
        GenerationConfig.from_dict({"topp": 0.5})
