"""Vision encoders: shapes, feature selection, EVA2-CLIP names and math, HF loading and config round trips."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

from vlmkit.config import VisionConfig
from vlmkit.errors import CheckpointError, ConfigError
from vlmkit.models.vision import build_vision_encoder

TYPES = ["clip", "siglip", "blip2", "eva2clip"]
TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
TINY_HF = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)


def tiny(type_: str, **kw) -> VisionConfig:
    return VisionConfig(type=type_, **{**TINY, **kw})


def build(type_: str, **kw):
    torch.manual_seed(0)
    return build_vision_encoder(tiny(type_, **kw)).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------- shapes & selection
@pytest.mark.parametrize("type_", TYPES)
def test_forward_shape_drops_cls(type_: str, pixels: torch.Tensor) -> None:
    enc = build(type_)
    out = enc(pixels)
    assert out.shape == (2, 16, 32)
    assert enc.num_patches == 16 and enc.hidden_size == 32


@pytest.mark.parametrize("type_", ["clip", "blip2", "eva2clip"])
def test_keep_cls(type_: str, pixels: torch.Tensor) -> None:
    enc = build(type_, drop_cls=False)
    assert enc(pixels).shape == (2, 17, 32)
    assert enc.num_patches == 17


@pytest.mark.parametrize("type_", TYPES)
def test_multi_layer_concat_and_backward(type_: str, pixels: torch.Tensor) -> None:
    enc = build(type_, feature_layer=[-2, -1])
    out = enc(pixels)
    assert out.shape == (2, 16, 64) and enc.hidden_size == 64
    out.pow(2).mean().backward()
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("type_", TYPES)
def test_feature_layer_changes_output(type_: str, pixels: torch.Tensor) -> None:
    last = build(type_, feature_layer=-1)(pixels)
    penultimate = build(type_, feature_layer=-2)(pixels)
    assert not torch.allclose(last, penultimate)


@pytest.mark.parametrize("type_", ["clip", "siglip", "blip2"])
def test_post_layernorm(type_: str, pixels: torch.Tensor) -> None:
    enc = build(type_, feature_layer=-1, post_layernorm=True, drop_cls=False)
    expected = enc.model.post_layernorm(enc.hidden_states(pixels)[-1])
    torch.testing.assert_close(enc(pixels), expected)


def test_eva2clip_has_no_final_layernorm(pixels: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="post_layernorm"):
        build("eva2clip", post_layernorm=True)(pixels)


# ------------------------------------------------------------------------------------------- EVA2-CLIP
def test_eva2clip_parameter_names() -> None:
    shapes = {k: tuple(v.shape) for k, v in build("eva2clip").state_dict().items()}
    expected = {
        "patch_embedding.proj.weight": (32, 3, 8, 8),
        "patch_embedding.proj.bias": (32,),
        "patch_embedding.cls_embedding": (1, 32),
        "patch_embedding.position_embedding.weight": (17, 32),
    }
    for i in range(2):
        p = f"transformer.layers.{i}."
        expected |= {
            p + "input_layernorm.weight": (32,),
            p + "input_layernorm.bias": (32,),
            p + "attention.query_key_value.weight": (96, 32),
            p + "attention.query_key_value.bias": (96,),
            p + "attention.dense.weight": (32, 32),
            p + "attention.dense.bias": (32,),
            p + "mlp.fc1.weight": (64, 32),
            p + "mlp.fc1.bias": (64,),
            p + "mlp.fc2.weight": (32, 64),
            p + "mlp.fc2.bias": (32,),
            p + "post_attention_layernorm.weight": (32,),
            p + "post_attention_layernorm.bias": (32,),
        }
    assert shapes == expected


def _reference_layer(layer: torch.nn.Module, x: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    """Sandwich post-norm written out by hand: x + LN(attn(x)); x + LN(fc2(gelu(fc1(x))))."""
    b, n, w = x.shape
    sd = {k: v.detach() for k, v in layer.state_dict().items()}
    qkv = x @ sd["attention.query_key_value.weight"].T + sd["attention.query_key_value.bias"]
    q, k, v = (t.reshape(b, n, heads, w // heads).transpose(1, 2) for t in qkv.split(w, dim=-1))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(w // heads), dim=-1)
    attn = (probs @ v).transpose(1, 2).reshape(b, n, w)
    attn = attn @ sd["attention.dense.weight"].T + sd["attention.dense.bias"]
    ln1 = (sd["input_layernorm.weight"], sd["input_layernorm.bias"])
    x = x + F.layer_norm(attn, (w,), *ln1, eps=eps)
    hidden = F.gelu(x @ sd["mlp.fc1.weight"].T + sd["mlp.fc1.bias"])
    mlp = hidden @ sd["mlp.fc2.weight"].T + sd["mlp.fc2.bias"]
    ln2 = (sd["post_attention_layernorm.weight"], sd["post_attention_layernorm.bias"])
    return x + F.layer_norm(mlp, (w,), *ln2, eps=eps)


def test_eva2clip_sandwich_norm_parity(pixels: torch.Tensor) -> None:
    enc = build("eva2clip", layer_norm_eps=1e-5)
    with torch.no_grad():  # non-trivial norms, so a misplaced LayerNorm cannot pass
        for name, p in enc.named_parameters():
            if "layernorm" in name:
                p.normal_(mean=1.0 if name.endswith("weight") else 0.0, std=0.3)
    states = enc.hidden_states(pixels)
    with torch.no_grad():
        expected = _reference_layer(enc.transformer.layers[0], states[0], heads=2, eps=1e-5)
    torch.testing.assert_close(states[1], expected)


def test_eva2clip_rejects_hf_config() -> None:
    with pytest.raises(ConfigError, match="hf_config"):
        build_vision_encoder(tiny("eva2clip", hf_config={"hidden_act": "gelu"}))


# ----------------------------------------------------------------------------------- HF towers & configs
def test_clip_from_pretrained_dir(tmp_path, pixels: torch.Tensor) -> None:
    torch.manual_seed(0)
    ref = CLIPVisionModel(CLIPVisionConfig(**{**TINY_HF, "image_size": 48, "num_hidden_layers": 3})).eval()
    ref.save_pretrained(tmp_path)
    cfg = VisionConfig(type="clip", pretrained=str(tmp_path))  # defaults: 224 / 14 / 768 / 12 layers
    enc = build_vision_encoder(cfg).eval()
    assert (cfg.image_size, cfg.patch_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (48, 8, 32, 3, 2)
    assert cfg.intermediate_size == 64 and cfg.layer_norm_eps == pytest.approx(1e-5)
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = ref(pixel_values=images, output_hidden_states=True).hidden_states[-2][:, 1:]
        got = enc(images)
    assert got.shape == (2, 36, 32)
    assert torch.equal(got, expected)


def test_clip_from_full_clipmodel_dir(tmp_path) -> None:
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    full = CLIPModel(CLIPConfig(vision_config=TINY_HF, text_config=text)).eval()
    full.save_pretrained(tmp_path)
    enc = build_vision_encoder(VisionConfig(type="clip", pretrained=str(tmp_path)))
    key = "embeddings.patch_embedding.weight"
    assert torch.equal(enc.state_dict()["model." + key], full.vision_model.state_dict()[key])


def test_pretrained_wrong_model_type(tmp_path) -> None:
    CLIPVisionModel(CLIPVisionConfig(**TINY_HF)).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="siglip"):
        build_vision_encoder(VisionConfig(type="siglip", pretrained=str(tmp_path)))


@pytest.mark.parametrize("type_", ["clip", "siglip", "blip2"])
def test_hf_config_dict_round_trip(type_: str) -> None:
    enc = build(type_, hf_config={"intermediate_size": 48})
    assert enc.config.intermediate_size == 48  # synced back from the HF config
    saved = enc.hf_config_dict()
    rebuilt = build_vision_encoder(VisionConfig(type=type_, hf_config=saved))  # all size fields at defaults
    shapes = {k: v.shape for k, v in enc.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert rebuilt.config.image_size == 32 and rebuilt.config.hidden_size == 32


def test_siglip_has_no_head() -> None:
    keys = build("siglip").state_dict()
    assert not any(".head." in k for k in keys)
    assert "model.post_layernorm.weight" in keys


@pytest.mark.parametrize("type_", ["clip", "siglip", "blip2"])
def test_missing_pretrained_dir(type_: str, tmp_path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="nope"):
        build_vision_encoder(VisionConfig(type=type_, pretrained=str(missing)))


def test_unknown_type_lists_known() -> None:
    with pytest.raises(ConfigError) as info:
        build_vision_encoder(VisionConfig(type="dinov2"))
    message = str(info.value)
    assert "dinov2" in message
    assert all(name in message for name in [*TYPES, "resnet", "convnext"])


def test_pretrained_dir_without_weights(tmp_path) -> None:
    CLIPVisionConfig(**TINY_HF).save_pretrained(tmp_path)  # config.json only
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        build_vision_encoder(VisionConfig(type="clip", pretrained=str(tmp_path)))
