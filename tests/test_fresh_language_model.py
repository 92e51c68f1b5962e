"""scripts/fresh_language_model.py: the vision tower and connector are kept bit for bit, the LM is new."""

from __future__ import annotations

from pathlib import Path

import torch

import vlmkit
from conftest import load_script
from vlmkit.checkpoint import load_weights


def test_keeps_vision_and_connector_and_reinitialises_the_language_model(tmp_path: Path) -> None:
    model, processor = vlmkit.build("llava-tiny")
    vlmkit.save(model, processor, tmp_path / "src")
    kept, fresh = load_script("fresh_language_model").fresh_language_model(tmp_path / "src", tmp_path / "out", seed=1)
    before, after = load_weights(tmp_path / "src"), load_weights(tmp_path / "out")
    assert before.keys() == after.keys()
    language = [k for k in before if k.startswith("language_model.")]
    others = [k for k in before if not k.startswith("language_model.")]
    assert (kept, fresh) == (len(others), len(language)) and others and language
    for k in others:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    changed = [k for k in language if not torch.equal(after[k], before[k]) and before[k].std() > 0]
    assert changed, "no language-model weight was re-initialised"
    reloaded, _ = vlmkit.load(tmp_path / "out")
    assert reloaded.config.template == model.config.template
