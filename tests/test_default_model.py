"""A real check of the shipped default model: 20 fixed held-out questions (a seed it never trained on)."""

from __future__ import annotations

import vlmkit
from vlmkit.cli.demo import answer_all, correct, held_out
from vlmkit.generation import Engine

TEST_SEED = 4242
"""Training uses seeds 0 (train) and 1_000_003 (valid); the demo uses 2026."""


def test_default_model_answers_20_held_out_questions() -> None:
    model, processor = vlmkit.load()
    samples = held_out(20, TEST_SEED)  # 15 shapes questions (count / color / position / grounding) + 5 captchas
    assert {s.meta["task"] for s in samples} >= {"count", "grounding", "captcha"}
    answers = answer_all(Engine(model, processor), samples, batch_size=20)
    wrong = [(s.meta["task"], s.meta["answer"], a) for s, a in zip(samples, answers) if not correct(s, a)]
    assert len(wrong) <= 2, f"{20 - len(wrong)}/20 correct; wrong (task, expected, answer): {wrong}"
