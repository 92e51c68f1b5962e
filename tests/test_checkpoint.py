"""Saving and loading model directories: identical logits, sharding, atomicity, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, LlamaConfig

import vlmkit
from vlmkit.checkpoint import INDEX_NAME, WEIGHTS_NAME
from vlmkit.errors import CheckpointError
from vlmkit.models.language import BUILTIN_TOKENIZER

CONV = [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A square."}]


@pytest.mark.parametrize("preset", ["llava-tiny", "visualglm-tiny", "minigpt4-tiny", "minigptv2-tiny",
                                    "codefuse-tiny", "cogvlm2-hires-tiny"])
def test_save_load_identical_logits(preset, tmp_path, image):
    torch.manual_seed(0)
    model, processor = vlmkit.build(preset)
    model.eval()
    batch = processor(images=[image], messages=CONV)
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    model2, processor2 = vlmkit.load(tmp_path / "m")
    batch2 = processor2(images=[image], messages=CONV)
    assert torch.equal(batch["input_ids"], batch2["input_ids"])
    assert torch.equal(batch["labels"], batch2["labels"])
    assert torch.equal(batch["pixel_values"], batch2["pixel_values"])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model2(**batch2).logits)
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", WEIGHTS_NAME, "processor_config.json", "preprocessor_config.json",
            "chat_template.json", "tokenizer.json"} <= files
    assert not [f for f in (tmp_path).iterdir() if f.name.startswith(".")], "temporary directory left behind"


def test_sharded_save_and_overwrite(tmp_path, image):
    model, processor = vlmkit.build("llava-tiny")
    model.eval()
    out = tmp_path / "m"
    vlmkit.save(model, processor, out, max_shard_size="100KB")
    index = json.loads((out / INDEX_NAME).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (out / WEIGHTS_NAME).exists()
    model2, processor2 = vlmkit.load(out)
    batch = processor(images=[image], text="<image> hi")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model2(**batch).logits)
    vlmkit.save(model, processor, out)  # overwrite unsharded: old shards and index must go
    assert (out / WEIGHTS_NAME).exists() and not (out / INDEX_NAME).exists()
    assert not [f for f in out.iterdir() if f.name in shards]


def test_missing_and_corrupt_weights_fail_clearly(tmp_path):
    model, processor = vlmkit.build("llava-tiny")
    out = vlmkit.save(model, processor, tmp_path / "m")
    (out / WEIGHTS_NAME).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt or not safetensors.*model.safetensors"):
        vlmkit.load(out)
    (out / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        vlmkit.load(out)
    with pytest.raises(CheckpointError, match="config.json is missing"):
        vlmkit.load(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        vlmkit.load(tmp_path / "nope")


def test_weights_that_do_not_match_config_fail(tmp_path):
    model, processor = vlmkit.build("llava-tiny")
    out = vlmkit.save(model, processor, tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    cfg["connector"]["num_layers"] = 3
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing"):
        vlmkit.load(out)


def test_failed_save_leaves_previous_directory_intact(tmp_path, monkeypatch):
    model, processor = vlmkit.build("llava-tiny")
    out = vlmkit.save(model, processor, tmp_path / "m")
    before = (out / WEIGHTS_NAME).read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("vlmkit.checkpoint.save_file", boom)
    with torch.no_grad():
        model.connector.linear_1.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="disk full"):
        vlmkit.save(model, processor, out)
    assert (out / WEIGHTS_NAME).read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["m"]


def test_compose_from_local_hf_directories(tmp_path, image):
    """The YAML route users take: encoder and LLM from local Hugging Face directories."""
    torch.manual_seed(0)
    clip_dir, lm_dir = tmp_path / "clip", tmp_path / "lm"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(clip_dir)
    tok = AutoTokenizer.from_pretrained(str(BUILTIN_TOKENIZER))
    lm_cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    lm = AutoModelForCausalLM.from_config(lm_cfg)
    lm.save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)
    yaml_path = tmp_path / "mine.yaml"
    yaml_path.write_text(
        f"vision: {{type: clip, pretrained: {clip_dir}}}\n"
        "connector: {type: mlp}\n"
        f"language: {{pretrained: {lm_dir}}}\n"
        "template: chatml\n"
    )
    model, processor = vlmkit.build(yaml_path)
    assert model.config.vision.image_size == 32 and model.config.language.hidden_size == 32
    torch.testing.assert_close(model.language_model.model.layers[0].mlp.up_proj.weight,
                               lm.model.layers[0].mlp.up_proj.weight)
    batch = processor(images=[image], messages=CONV)
    assert torch.isfinite(model(**batch, labels=batch["labels"]).loss)
    out = vlmkit.save(model, processor, tmp_path / "saved")
    saved = json.loads((out / "config.json").read_text())
    assert saved["vision"]["pretrained"] is None and saved["language"]["pretrained"] is None
    model2, processor2 = vlmkit.load(out)  # no access to the source dirs needed
    with torch.no_grad():
        assert torch.equal(model.eval()(**batch).logits, model2(**batch).logits)
    with pytest.raises(vlmkit.ConfigError, match="directory not found"):
        vlmkit.build({"language": {"pretrained": str(tmp_path / "absent")}})
