"""Connectors: output shapes, gradients, checkpoint-relevant parameter names and config validation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from vlmkit.config import ConnectorConfig
from vlmkit.errors import ConfigError
from vlmkit.models.connectors import CONNECTORS, Connector, ConnectorContext, build_connector
from vlmkit.models.connectors.pixel_shuffle import space_to_depth

VISION_DIM, TEXT_DIM, BATCH = 16, 32, 2
CTX = ConnectorContext(vision_dim=VISION_DIM, text_dim=TEXT_DIM, num_patches=16, grid=(4, 4),
                       text_intermediate_size=48)

# Tiny options per connector id; every registered connector must appear here.
TINY: dict[str, dict[str, Any]] = {
    "linear": {},
    "mlp": {"num_layers": 2},
    "glu": {},
    "qformer": {"num_queries": 4, "hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 32},
    "resampler": {"num_queries": 4},
    "pixel_shuffle": {"factor": 2, "num_layers": 2},
    "conv_downsample": {"factor": 2, "next": {"type": "glu"}},
    "concat_merge": {"group": 4},
}


def make(kind: str, ctx: ConnectorContext = CTX, **options: Any) -> Connector:
    torch.manual_seed(0)
    return build_connector(ConnectorConfig.from_dict({"type": kind, **TINY.get(kind, {}), **options}), ctx)


def features(ctx: ConnectorContext = CTX) -> torch.Tensor:
    return torch.randn(BATCH, ctx.num_patches, ctx.vision_dim)  # [B, N, Dv]


def test_every_connector_has_tiny_options() -> None:
    assert set(CONNECTORS.names()) == set(TINY)


@pytest.mark.parametrize("kind", sorted(TINY))
def test_shape_and_gradients(kind: str) -> None:
    connector = make(kind)
    out = connector(features())
    assert out.shape == (BATCH, connector.num_output_tokens(CTX.num_patches), TEXT_DIM)
    out.square().mean().backward()
    for name, param in connector.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("kind", sorted(TINY))
def test_config_round_trip(kind: str) -> None:
    config = ConnectorConfig.from_dict({"type": kind, **TINY[kind]})
    assert ConnectorConfig.from_dict(config.to_dict()) == config


def test_glu_parameter_names_and_tokens() -> None:
    glu = make("glu")
    names = {n for n, _ in glu.named_parameters()}
    assert names == {"linear_proj.weight", "norm1.weight", "norm1.bias", "gate_proj.weight",
                     "dense_h_to_4h.weight", "dense_4h_to_h.weight", "boi", "eoi"}
    assert glu.boi.shape == glu.eoi.shape == (1, 1, TEXT_DIM)
    assert glu.gate_proj.weight.shape == (48, TEXT_DIM)  # ctx.text_intermediate_size
    assert glu.num_output_tokens(16) == 18
    plain = make("glu", boi_eoi=False, intermediate_size=8)
    assert not hasattr(plain, "boi") and plain.dense_h_to_4h.weight.shape == (8, TEXT_DIM)
    assert plain(features()).shape == (BATCH, 16, TEXT_DIM)
    no_lm_width = ConnectorContext(VISION_DIM, TEXT_DIM, 16, (4, 4))
    assert make("glu", no_lm_width).gate_proj.weight.shape == (4 * TEXT_DIM, TEXT_DIM)


def test_qformer_parameters() -> None:
    qformer = make("qformer")
    assert qformer.query_tokens.shape == (1, 4, 16)
    assert qformer.language_projection.weight.shape == (TEXT_DIM, 16)
    assert qformer.qformer.config.encoder_hidden_size == VISION_DIM
    assert qformer.num_output_tokens(999) == 4


def test_resampler_parameters_and_any_key_grid() -> None:
    resampler = make("resampler")
    names = {n.split(".")[0] for n, _ in resampler.named_parameters()}
    assert {"query", "kv_proj", "ln_q", "ln_kv", "ln_post", "proj", "attn"} <= names
    assert resampler.query.shape == (4, TEXT_DIM) and resampler.proj.shape == (TEXT_DIM, TEXT_DIM)
    assert resampler.pos_embed.shape == (4, TEXT_DIM) and not resampler.pos_embed.requires_grad
    assert resampler.attn.num_heads == 1
    for side in (4, 6):
        ctx = ConnectorContext(VISION_DIM, TEXT_DIM, side * side, (side, side))
        module = make("resampler", ctx)
        assert module(features(ctx)).shape == (BATCH, 4, TEXT_DIM)
    assert resampler(torch.randn(1, 9, VISION_DIM)).shape == (1, 4, TEXT_DIM)  # another resolution, same module


def test_resampler_width_and_validation() -> None:
    wide = make("resampler", hidden_size=256)
    assert wide.attn.num_heads == 2 and wide.text_proj.weight.shape == (TEXT_DIM, 256)
    assert wide(features()).shape == (BATCH, 4, TEXT_DIM)
    with pytest.raises(ConfigError, match="square"):
        ConnectorConfig.from_dict({"type": "resampler", "num_queries": 5})
    with pytest.raises(ConfigError, match="grid"):
        make("resampler", ConnectorContext(VISION_DIM, TEXT_DIM, 17, None))


@pytest.mark.parametrize("kind", ["pixel_shuffle", "conv_downsample"])
def test_grid_connectors_reject_non_divisible_grid(kind: str) -> None:
    with pytest.raises(ConfigError, match="not divisible by factor=2"):
        make(kind, ConnectorContext(VISION_DIM, TEXT_DIM, 15, (3, 5)))


def test_pixel_shuffle_merges_blocks() -> None:
    shuffle = make("pixel_shuffle", num_layers=1)
    assert shuffle.linear_1.weight.shape == (TEXT_DIM, 4 * VISION_DIM)
    assert shuffle.num_output_tokens(16) == 4
    x = torch.arange(16.0).reshape(1, 16, 1).expand(1, 16, VISION_DIM)  # patch index as feature
    merged = space_to_depth(x, (4, 4), 2)  # [1, 4, 4*Dv]
    assert merged[0, :, ::VISION_DIM].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_pixel_shuffle_norm_makes_output_scale_free() -> None:
    """With `norm: true` (InternVL's mlp1) the merged tokens are layer-normed first: scaling the features by 1000
    leaves the output unchanged; without it the output scales along."""
    normed, plain = make("pixel_shuffle", norm=True), make("pixel_shuffle")
    assert isinstance(normed.norm, torch.nn.LayerNorm) and normed.norm.normalized_shape == (4 * VISION_DIM,)
    assert plain.norm is None
    x = features()
    torch.testing.assert_close(normed(1000 * x), normed(x), rtol=1e-4, atol=1e-4)
    assert plain(1000 * x).norm() > 100 * plain(x).norm()


def test_conv_downsample_composes_with_glu() -> None:
    conv = make("conv_downsample")
    assert conv.conv.kernel_size == (2, 2) and conv.conv.stride == (2, 2)
    assert conv.num_output_tokens(16) == 16 // 4 + 2
    assert conv.inner.ctx.grid == (2, 2) and conv.inner.ctx.num_patches == 4
    assert conv(features()).shape == (BATCH, 6, TEXT_DIM)
    default = ConnectorConfig.from_dict({"type": "conv_downsample"})
    assert default.to_dict() == {"type": "conv_downsample", "factor": 2, "next": {"type": "linear", "bias": True}}


def test_concat_merge() -> None:
    merge = make("concat_merge")
    assert merge.proj.weight.shape == (TEXT_DIM, 4 * VISION_DIM)
    assert merge.num_output_tokens(16) == 4
    with pytest.raises(ConfigError, match="group=4"):
        make("concat_merge", ConnectorContext(VISION_DIM, TEXT_DIM, 17, None))


def test_unknown_option_names_key_and_allowed_keys() -> None:
    with pytest.raises(ConfigError) as err:
        ConnectorConfig.from_dict({"type": "mlp", "bogus": 1})
    assert "'bogus'" in str(err.value) and "num_layers" in str(err.value) and "act" in str(err.value)


def test_unknown_connector_lists_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        ConnectorConfig.from_dict({"type": "nope"})
    assert "nope" in str(err.value) and "resampler" in str(err.value) and "conv_downsample" in str(err.value)


def test_nested_next_is_validated_at_load_time() -> None:
    with pytest.raises(ConfigError, match=r"connector\.next.*'bogus'"):
        ConnectorConfig.from_dict({"type": "conv_downsample", "next": {"type": "glu", "bogus": 1}})
    with pytest.raises(ConfigError, match="unknown connector 'nope'"):
        ConnectorConfig.from_dict({"type": "conv_downsample", "next": {"type": "nope"}})
