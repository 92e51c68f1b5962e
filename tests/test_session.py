"""Chat sessions: the image is encoded once across turns, the prefix KV cache is reused, answers equal a fresh
session asked the full conversation, text-only turns, a new image mid-conversation, clear."""

from __future__ import annotations

import pytest
import torch

import vlmkit
from conftest import make_image
from vlmkit.generation import ChatSession, Engine, GenerationConfig, Request

CONFIG = GenerationConfig(max_new_tokens=8)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    return model.eval(), processor


class Counter:
    """Counts forward calls of a module and the sequence length each call received."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.lengths: list[int] = []
        self.handle = module.register_forward_hook(lambda _m, args, _out: self.lengths.append(args[0].shape[-1]))

    def __enter__(self) -> Counter:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def fresh_answer(tiny, messages, images) -> str:
    return Engine(*tiny).generate([Request(messages, images)], CONFIG)[0].text


def conversation(session: ChatSession) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in session.history]


def test_image_encoded_once_across_three_turns(tiny, image):
    model, processor = tiny
    session = ChatSession(model, processor, config=CONFIG)
    with Counter(model.vision_tower) as calls:
        session.ask("What is in the picture?", image)
        session.ask("What color is it?")
        session.ask("Where is it?")
    assert len(calls.lengths) == 1
    assert [m.role for m in session.history] == ["user", "assistant"] * 3


def test_follow_up_equals_fresh_full_conversation_and_reuses_prefix(tiny, image):
    model, processor = tiny
    session = ChatSession(model, processor, config=CONFIG)
    session.ask("What is in the picture?", image)
    with Counter(model.language_model.get_input_embeddings()) as fed:
        follow_up = session.ask("Describe the colors.")
    full = conversation(session)[:-1]
    expected = fresh_answer(tiny, full, [image])
    assert follow_up == expected
    prompt_tokens = session.last_result.prompt_tokens
    assert fed.lengths[0] < prompt_tokens - model.num_image_tokens  # only the new tokens were fed
    assert session.last_result.token_ids == Engine(*tiny).generate([Request(full, [image])], CONFIG)[0].token_ids


def test_text_only_turns(tiny):
    model, processor = tiny
    session = ChatSession(model, processor, config=CONFIG)
    first = session.ask("Hello there.")
    assert first == fresh_answer(tiny, [{"role": "user", "content": "Hello there."}], [])
    second = session.ask("Tell me more.")
    assert second == fresh_answer(tiny, conversation(session)[:-1], [])


def test_new_image_mid_conversation(tiny):
    model, processor = tiny
    one, two = make_image(1), make_image(2)
    session = ChatSession(model, processor, config=CONFIG)
    with Counter(model.vision_tower) as calls:
        session.ask("What is this?", one)
        answer = session.ask("And this one?", two)
        session.ask("Which is brighter?")
    assert len(calls.lengths) == 2
    history = conversation(session)
    assert "<image>" in history[0]["content"] and "<image>" in history[2]["content"]
    assert answer == fresh_answer(tiny, history[:3], [one, two])
    assert len(session.images) == 2


def test_stream_records_the_turn_and_clear_starts_over(tiny, image):
    model, processor = tiny
    session = ChatSession(model, processor, config=CONFIG)
    chunks = list(session.stream("What is in the picture?", image))
    assert "".join(chunks) == session.history[-1].content == session.last_result.text
    session.clear()
    assert session.history == [] and session.images == []
    with Counter(model.vision_tower) as calls:
        again = session.ask("What is in the picture?", image)
    assert calls.lengths == []  # features stay cached after clear
    assert again == "".join(chunks)
    assert session.ask("Hi.") == fresh_answer(tiny, conversation(session)[:-1], [image])


def test_abandoned_stream_leaves_history_unchanged(tiny, image):
    model, processor = tiny
    session = ChatSession(model, processor, config=GenerationConfig(max_new_tokens=20))
    session.ask("What is in the picture?", image)
    stream = session.stream("Describe it in detail.")
    next(stream, None)
    stream.close()
    assert len(session.history) == 2
    follow = session.ask("Describe it in detail.")
    assert follow == Engine(*tiny).generate([Request(conversation(session)[:-1], [image])],
                                            GenerationConfig(max_new_tokens=20))[0].text
