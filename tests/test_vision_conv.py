"""CNN vision towers (resnet, convnext): stage selection, strides, HF loading, frozen batch norm, whole VLM."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import ConvNextConfig, ConvNextModel, ResNetConfig, ResNetForImageClassification

import vlmkit
from vlmkit.config import VisionConfig, from_dict
from vlmkit.errors import ConfigError
from vlmkit.models.vision import build_vision_encoder
from vlmkit.models.vision.conv import sincos_2d

TYPES = ["resnet", "convnext"]


def build(type_: str, **kw):
    torch.manual_seed(0)
    cfg = VisionConfig(**{"type": type_, "image_size": 64, "patch_size": 16, "hidden_size": 32, "num_layers": 3,
                          "feature_layer": -1, **kw})
    return build_vision_encoder(cfg).eval(), cfg


@pytest.mark.parametrize("type_", TYPES)
@pytest.mark.parametrize(("layer", "grid", "width", "stride"), [(-1, 4, 32, 16), (-2, 8, 16, 8), (1, 16, 8, 4)])
def test_stage_selection(type_: str, layer: int, grid: int, width: int, stride: int) -> None:
    enc, cfg = build(type_, feature_layer=layer)
    out = enc(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, grid * grid, width)  # [B, h*w, C]
    assert enc.grid_size == (grid, grid) and enc.num_patches == grid * grid and enc.hidden_size == width
    assert cfg.patch_size == stride and cfg.hidden_size == 32 and cfg.num_layers == 3


@pytest.mark.parametrize("type_", TYPES)
def test_features_are_the_stage_map_flattened_row_major(type_: str) -> None:
    enc, _ = build(type_)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fmap = enc.model(pixel_values=x, output_hidden_states=True).hidden_states[-1]  # [1, C, 4, 4]
        out = enc(x)  # [1, 16, C]
    assert torch.equal(out[0, 1 * 4 + 2], fmap[0, :, 1, 2])


@pytest.mark.parametrize("type_", TYPES)
def test_mismatched_stage_list_and_out_of_range(type_: str) -> None:
    with pytest.raises(ConfigError, match="same shape"):
        build(type_, feature_layer=[-1, -2])
    with pytest.raises(ConfigError, match="hidden states"):
        build(type_, feature_layer=7)
    with pytest.raises(ConfigError, match="not a multiple of the selected stage's stride 16"):
        build(type_, image_size=72, patch_size=8)
    with pytest.raises(ConfigError, match="post_layernorm"):
        build(type_, post_layernorm=True)


def test_resnet_from_classification_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    hf = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="bottleneck")
    ref = ResNetForImageClassification(hf).eval()
    ref.save_pretrained(tmp_path)
    cfg = VisionConfig(type="resnet", pretrained=str(tmp_path), image_size=64, patch_size=32, feature_layer=-1)
    enc = build_vision_encoder(cfg).eval()
    assert (cfg.num_layers, cfg.hidden_size, cfg.patch_size) == (4, 32, 32)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref.resnet(pixel_values=x, output_hidden_states=True).hidden_states[-1].flatten(2).transpose(1, 2)
        assert torch.equal(enc(x), expected)


def test_convnext_from_pretrained_dir(tmp_path) -> None:
    torch.manual_seed(0)
    ref = ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)).eval()
    ref.save_pretrained(tmp_path)
    cfg = VisionConfig(type="convnext", pretrained=str(tmp_path), image_size=32, patch_size=8)
    enc = build_vision_encoder(cfg).eval()
    assert (cfg.num_layers, cfg.hidden_size, cfg.patch_size) == (2, 16, 4)  # default feature_layer -2: stage 1
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc(x), ref(pixel_values=x, output_hidden_states=True).hidden_states[-2]
                           .flatten(2).transpose(1, 2))


def test_frozen_resnet_keeps_batch_norm_statistics() -> None:
    enc, _ = build("resnet")
    for p in enc.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in enc.state_dict().items() if "running_mean" in k}
    enc.train()
    enc(torch.randn(4, 3, 64, 64) * 3 + 1)
    after = {k: v for k, v in enc.state_dict().items() if "running_mean" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    for p in enc.parameters():
        p.requires_grad_(True)
    enc.train()
    enc(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert not all(torch.equal(before[k], enc.state_dict()[k]) for k in before)


def test_lora_on_a_frozen_resnet_keeps_batch_norm_statistics() -> None:
    """Only adapters train (ConLoRA on the stages' convolutions): the statistics stay as loaded, since the adapter
    checkpoint would not carry them."""
    from peft import LoraConfig, inject_adapter_in_model

    enc, _ = build("resnet")
    for p in enc.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=r".*stages\.0\..*convolution"), enc)
    assert any(p.requires_grad for p in enc.parameters())
    before = {k: v.clone() for k, v in enc.state_dict().items() if "running_mean" in k}
    enc.train()
    enc(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert all(torch.equal(before[k], enc.state_dict()[k]) for k in before)


def test_vlm_with_resnet_saves_and_loads(tmp_path) -> None:
    spec = {"vision": {"type": "resnet", "image_size": 64, "patch_size": 16, "hidden_size": 32, "num_layers": 3,
                       "feature_layer": -1, "frozen": False},
            "connector": {"type": "mlp"},
            "language": {"type": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
                         "intermediate_size": 64}}
    model, processor = vlmkit.build(spec)
    model.train()
    image = Image.new("RGB", (80, 48), "red")
    batch = processor(images=[image], text="<image>\nWhat is this?")
    assert model.vision_tower.num_patches == 16
    model(**batch)  # one train-mode pass moves the batch-norm statistics: they must be saved too
    vlmkit.save(model, processor, tmp_path / "m")
    loaded, _ = vlmkit.load(tmp_path / "m")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def test_lora_run_with_a_fully_trained_resnet_saves_its_batch_norm_statistics(tmp_path) -> None:
    """LoRA on the LLM, the tower trained fully beside it (`freeze.vision: true`): the adapter carries the
    tower's weights and its batch-norm running statistics, else the loaded model sees with stale statistics."""
    from vlmkit.train.config import FreezeConfig, LoraConfig, PeftConfig
    from vlmkit.train.freeze import apply_stage
    from vlmkit.train.peft import apply_peft, load_adapter, save_adapter
    from vlmkit.train.state import trainable_state

    spec = {"vision": {"type": "resnet", "image_size": 64, "patch_size": 16, "hidden_size": 32, "num_layers": 3,
                       "feature_layer": -1, "frozen": False},
            "connector": {"type": "mlp"},
            "language": {"type": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
                         "intermediate_size": 64}}
    torch.manual_seed(0)
    model, processor = vlmkit.build(spec)
    vlmkit.save(model, processor, tmp_path / "base")
    model = apply_peft(model, PeftConfig(method="lora"), LoraConfig(rank=2)) or model
    apply_stage(model, "sft", FreezeConfig(vision=True))
    model.train()
    batch = processor(images=[Image.new("RGB", (80, 48), "red")], text="<image>\nWhat is this?")
    model(**batch)  # a train-mode pass moves the statistics
    assert any("running_mean" in k for k in trainable_state(model))  # resume restores them too
    save_adapter(model, tmp_path / "ckpt", "task")
    loaded, _ = vlmkit.load(tmp_path / "base")
    load_adapter(loaded, tmp_path / "ckpt" / "adapters" / "task")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, model(**batch).logits)


def test_sincos2d_position_encoding_is_added_and_encodes_row_and_column() -> None:
    plain, _ = build("resnet")
    enc, cfg = build("resnet", position_encoding="sincos2d")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        diff = enc(x) - plain(x)  # [1, 16, 32]: same weights (same seed), so only the positions differ
    pos = sincos_2d(4, 4, 32)
    torch.testing.assert_close(diff[0], pos)
    assert torch.equal(pos[1, :16], pos[2, :16]) and not torch.equal(pos[1, 16:], pos[2, 16:])  # same row
    assert torch.equal(pos[1, 16:], pos[5, 16:]) and not torch.equal(pos[1, :16], pos[5, :16])  # same column
    assert "position_encoding" not in enc.state_dict()  # derived, not saved
    with pytest.raises(ConfigError, match="CNN towers"):
        build_vision_encoder(VisionConfig(type="clip", image_size=32, patch_size=8, hidden_size=32, num_layers=1,
                                          num_heads=2, intermediate_size=64, position_encoding="sincos2d"))
    with pytest.raises(ConfigError, match="allowed: none, sincos2d"):
        from_dict(VisionConfig, {"type": "resnet", "position_encoding": "learned"}, "vision")


def test_position_grid_interpolates_sincos2d_positions_to_the_training_grid() -> None:
    # a stride-16 tower trained at 64 px (4x4 grid) run at 80 px (5x5): with position_grid=4 the 5x5 cells get
    # the positions of the same places on the 4x4 grid (cell centres, align_corners=False)
    enc, _ = build("resnet", image_size=80, position_encoding="sincos2d", position_grid=4)
    assert enc.grid_size == (5, 5)
    rows = [0.8 * i - 0.1 for i in range(5)]  # (i + 0.5) * 4 / 5 - 0.5: the ends sit at -0.1 and 3.1
    omega = 1.0 / 10000 ** (torch.arange(8, dtype=torch.float32) / 8)  # [D/4]
    angle = torch.tensor(rows)[:, None] * omega[None, :]  # [5, 8]
    expected_row = torch.cat([angle.sin(), angle.cos()], dim=1)  # [5, 16]: the first half of the channels
    torch.testing.assert_close(enc.position_encoding.reshape(5, 5, 32)[:, 0, :16], expected_row)
    torch.testing.assert_close(enc.position_encoding.reshape(5, 5, 32)[0, :, 16:], expected_row)  # columns alike
    # the centre of the image keeps its code; on the training grid itself the positions are the indices
    torch.testing.assert_close(sincos_2d(5, 5, 32, reference=4)[12], sincos_2d(1, 1, 32, reference=4)[0])
    assert torch.equal(sincos_2d(4, 4, 32, reference=4), sincos_2d(4, 4, 32))
    assert not torch.allclose(enc.position_encoding, sincos_2d(5, 5, 32))
    with pytest.raises(ConfigError, match="position_grid=4: needs position_encoding: sincos2d"):
        from_dict(VisionConfig, {"type": "resnet", "position_grid": 4}, "vision")
