"""scripts/grow_model.py: a deeper tower / LM that starts out computing exactly what the source model did."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import vlmkit
from conftest import load_script
from vlmkit.checkpoint import load_weights
from vlmkit.errors import ConfigError

SPEC = {"vision": {"type": "resnet", "image_size": 64, "patch_size": 4, "hidden_size": 16, "num_layers": 1,
                   "feature_layer": -1, "position_encoding": "sincos2d", "frozen": False},
        "connector": {"type": "pixel_shuffle", "factor": 4, "num_layers": 2, "norm": True},
        "language": {"type": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
                     "intermediate_size": 64}}



@pytest.fixture()
def source(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model, processor = vlmkit.build(SPEC)
    model.train()
    model(**processor(images=[Image.new("RGB", (64, 64), "teal")], text="What is it?"))  # batch-norm statistics
    vlmkit.save(model, processor, tmp_path / "src")
    return tmp_path / "src"


def _logits(directory: Path, batch_image: Image.Image) -> torch.Tensor:
    model, processor = vlmkit.load(directory)
    model.eval()
    with torch.no_grad():
        return model(**processor(images=[batch_image], text="Where is the square?")).logits


def test_grown_model_keeps_every_weight_and_answers_as_the_source(source: Path, tmp_path: Path) -> None:
    new = load_script("grow_model").grow_model(source, tmp_path / "out", vision_depth=4, language_layers=3)
    before, after = load_weights(source), load_weights(tmp_path / "out")
    assert set(before) < set(after) and set(after) - set(before) == set(new)
    assert any(".stages.0.layers.3." in k for k in new) and any("layers.2.self_attn" in k for k in new)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    grown, _ = vlmkit.load(tmp_path / "out")
    assert grown.config.vision.hf_config["depths"] == [4] and grown.config.language.num_layers == 3
    image = Image.new("RGB", (90, 60), (30, 200, 90))
    torch.testing.assert_close(_logits(tmp_path / "out", image), _logits(source, image), rtol=1e-4, atol=1e-4)


def test_new_blocks_learn(source: Path, tmp_path: Path) -> None:
    load_script("grow_model").grow_model(source, tmp_path / "out", vision_depth=3)
    model, processor = vlmkit.load(tmp_path / "out")
    model.train()
    batch = processor(messages=[{"role": "user", "content": "<image>\nColour?"},
                                {"role": "assistant", "content": "teal"}],
                      images=[Image.new("RGB", (64, 64), "teal")])
    model(**batch, labels=batch["labels"]).loss.backward()
    gamma = model.vision_tower.model.encoder.stages[0].layers[2].layer[1].normalization.weight
    assert float(gamma.abs().max()) == 0.0 and float(gamma.grad.abs().max()) > 0.0


def test_only_grows(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only adds"):
        load_script("grow_model").grow_model(source, tmp_path / "out", language_layers=1)
    with pytest.raises(ConfigError, match="only adds"):
        load_script("grow_model").grow_model(source, tmp_path / "out", vision_depth=1)
    assert not (tmp_path / "out").exists()
