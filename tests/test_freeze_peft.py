"""Training stages, freezing, parameter groups; peft LoRA / QLoRA / prefix, adapters on disk, merging."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file

import vlmkit
from conftest import make_image
from vlmkit import ConfigError, VlmkitError, VLMModel
from vlmkit.cli import merge_lora as merge_cli
from vlmkit.errors import CheckpointError
from vlmkit.train.config import FreezeConfig, LoraConfig, OptimConfig, PeftConfig
from vlmkit.train.freeze import apply_stage, layer_list, param_groups, trainable_table
from vlmkit.train.peft import adapter_method, apply_peft, load_adapter, merge_lora, save_adapter

CONVS = [
    [{"role": "user", "content": "<image>\nWhat is in the picture?"},
     {"role": "assistant", "content": "Three small squares."}],
    [{"role": "user", "content": "<image>\nColors?"},
     {"role": "assistant", "content": "Red, green and blue."}],
]


def trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def trainable_components(model: torch.nn.Module) -> set[str]:
    return {n.split(".")[0] for n in trainable(model)}


def batch_of(processor, padding_side: str = "right"):
    return processor(images=[[make_image(0)], [make_image(1)]], messages=CONVS, padding_side=padding_side)


def logits(model: torch.nn.Module, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def train_steps(model: torch.nn.Module, batch, steps: int, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.AdamW(param_groups(model, OptimConfig(lr=lr)))
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch, labels=batch["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def lora_modules(model: torch.nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


# ------------------------------------------------------------------------------------------- stages
@pytest.mark.parametrize("stage, expected", [
    ("align", {"connector"}),
    ("sft", {"connector", "language_model"}),
    ("full", {"vision_tower", "connector", "language_model"}),
])
def test_stages_set_the_trainable_components(stage, expected):
    model, _ = vlmkit.build("llava-tiny")
    apply_stage(model, stage, FreezeConfig())
    assert trainable_components(model) == expected
    for component in expected:  # whole components train
        assert all(p.requires_grad for p in getattr(model, component).parameters())


@pytest.mark.parametrize("preset, vision_layers, layer_name", [
    ("llava-tiny", [-1, -1], "vision_tower.model.encoder.layers"),
    ("cogvlm2-hires-tiny", [1, 1], "vision_tower.transformer.layers"),
])
def test_component_flags_and_layer_ranges(preset, vision_layers, layer_name):
    model, _ = vlmkit.build(preset)
    assert layer_list(model, "vision_tower")[0] == layer_name
    assert layer_list(model, "language_model")[0] == "language_model.model.layers"
    freeze = FreezeConfig(connector=False, vision_layers=vision_layers, language_layers=[0, 0])
    apply_stage(model, "align", freeze)
    blocks = (f"{layer_name}.1.", "language_model.model.layers.0.")
    names = trainable(model)
    assert names == {n for n, _ in model.named_parameters() if n.startswith(blocks)}
    assert any(n.startswith(blocks[0]) for n in names) and any(n.startswith(blocks[1]) for n in names)
    apply_stage(model, "full", FreezeConfig(vision=False, language_layers=[-2, -1]))
    assert trainable_components(model) == {"connector", "language_model"}
    assert not any(n.startswith("language_model.model.embed_tokens") for n in trainable(model))


@pytest.mark.parametrize("bounds", [[0, 2], [1, 0], [-3, -1], [0]])
def test_bad_layer_ranges_are_config_errors(bounds):
    model, _ = vlmkit.build("llava-tiny")
    with pytest.raises(ConfigError, match="language_layers"):
        apply_stage(model, "sft", FreezeConfig(language_layers=bounds))
    with pytest.raises(ConfigError, match="stage"):
        apply_stage(model, "pretrain", FreezeConfig())


def test_param_groups_learning_rates_and_decay():
    model, _ = vlmkit.build("llava-tiny")
    apply_stage(model, "full", FreezeConfig())
    optim = OptimConfig(lr=1e-4, connector_lr=1e-3, vision_lr=1e-5, weight_decay=0.1)
    groups = param_groups(model, optim)
    expected_lr = {"vision_tower": 1e-5, "connector": 1e-3, "language_model": 1e-4}
    names = {id(p): n for n, p in model.named_parameters()}
    seen: list[int] = []
    for g in groups:
        assert g["lr"] == expected_lr[g["name"].split(".")[0]]
        for p in g["params"]:
            seen.append(id(p))
            if g["weight_decay"] == 0.0:
                assert p.ndim == 1 or "norm" in names[id(p)] or names[id(p)].endswith("bias")
            else:
                assert g["weight_decay"] == 0.1 and p.ndim >= 2
    assert len(seen) == len(set(seen)) == len(trainable(model))
    assert {g["name"] for g in groups} >= {"connector", "connector.no_decay", "language_model.no_decay"}
    torch.optim.AdamW(groups)  # the groups are valid optimizer input


def test_trainable_table_mentions_every_component():
    model, _ = vlmkit.build("llava-tiny")
    apply_stage(model, "sft", FreezeConfig())
    table = trainable_table(model)
    for word in ("vision_tower", "connector", "language_model", "total", "trainable"):
        assert word in table
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,}" in table
    apply_peft(model, PeftConfig(method="lora"), LoraConfig())
    assert "lora (language_model)" in trainable_table(model)


# --------------------------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("layer_range", [[1, 1], [-1, -1]])
def test_lora_layer_range_only_touches_those_layers(layer_range):
    model, _ = vlmkit.build("llava-tiny")
    apply_peft(model, PeftConfig(method="lora"), LoraConfig(rank=4, layer_range=layer_range))
    assert isinstance(model, VLMModel) and adapter_method(model) == "lora"
    assert lora_modules(model) == {f"language_model.model.layers.1.self_attn.{t}_proj" for t in "qv"}
    assert trainable(model) and all(".lora_" in n for n in trainable(model))
    apply_stage(model, "sft", FreezeConfig())
    assert trainable_components(model) == {"connector", "language_model"}
    lm = {n for n in trainable(model) if n.startswith("language_model.")}
    assert lm and all(".lora_" in n and ".layers.1." in n for n in lm)
    assert all(p.requires_grad for p in model.connector.parameters())


def test_vision_and_connector_lora_conlora():
    torch.manual_seed(0)
    model, processor = vlmkit.build("cogvlm2-hires-tiny")
    apply_peft(model, PeftConfig(method="lora"), LoraConfig(rank=4, vision_layers=[-1, -1], connector=True))
    adapted = lora_modules(model)
    vision = {n for n in adapted if n.startswith("vision_tower.")}
    assert vision == {"vision_tower.transformer.layers.1.attention.query_key_value"}
    connector = {n for n in adapted if n.startswith("connector.")}
    linears = ("linear_proj", "gate_proj", "dense_h_to_4h", "dense_4h_to_h")
    assert connector == {f"connector.inner.{n}" for n in linears}  # the conv is not a Linear
    apply_stage(model, "sft", FreezeConfig())  # adapted components train their adapters only
    assert all(".lora_" in n for n in trainable(model))
    assert trainable_components(model) == {"vision_tower", "connector", "language_model"}
    batch = processor(images=[make_image(0, 64)], messages=CONVS[0])
    model(**batch, labels=batch["labels"]).loss.backward()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    table = trainable_table(model)
    assert "lora (vision_tower)" in table and "lora (connector)" in table


def test_lora_config_errors():
    model, _ = vlmkit.build("llava-tiny")
    with pytest.raises(ConfigError, match="q_proj"):  # names the LM's linear layers
        apply_peft(model, PeftConfig(method="lora"), LoraConfig(target_modules=["query"]))
    with pytest.raises(ConfigError, match="layer_range"):
        apply_peft(model, PeftConfig(method="lora"), LoraConfig(layer_range=[0, 5]))
    apply_peft(model, PeftConfig(method="lora"), LoraConfig())
    with pytest.raises(VlmkitError, match="already"):
        apply_peft(model, PeftConfig(method="lora"), LoraConfig())
    with pytest.raises(ConfigError, match="lora.layer_range"):
        apply_stage(model, "sft", FreezeConfig(language_layers=[0, 0]))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A plain base dir, then an sft LoRA run on it (a few steps), its adapter and the whole model saved."""
    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    vlmkit.save(model, processor, root / "base")
    apply_peft(model, PeftConfig(method="lora"), LoraConfig(rank=8, alpha=16, dropout=0.0))
    apply_stage(model, "sft", FreezeConfig())
    batch = batch_of(processor)
    losses = train_steps(model, batch, steps=6)
    save_adapter(model, root / "run", "task")
    vlmkit.save(model, processor, root / "full")
    return {"root": root, "batch": batch, "losses": losses, "logits": logits(model, batch)}


def test_lora_steps_lower_the_loss(lora_run):
    losses = lora_run["losses"]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.1


def test_save_adapter_then_load_adapter_gives_identical_logits(lora_run):
    adapter = lora_run["root"] / "run" / "adapters" / "task"
    files = {f.name for f in adapter.iterdir()}
    assert files == {"adapter_config.json", "adapter_model.safetensors", "extra_trainable.safetensors",
                     "vlmkit_adapter.json"}
    assert all(k.startswith("connector.") for k in load_file(str(adapter / "extra_trainable.safetensors")))
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    model, _ = vlmkit.load(lora_run["root"] / "base")
    assert not torch.allclose(logits(model, lora_run["batch"]), lora_run["logits"])
    load_adapter(model, adapter)
    assert adapter_method(model) == "lora"
    torch.testing.assert_close(logits(model, lora_run["batch"]), lora_run["logits"], atol=1e-5, rtol=1e-5)


def test_vlmkit_save_of_an_adapted_model_loads_back(lora_run):
    full = lora_run["root"] / "full"
    assert (full / "adapters" / "default" / "adapter_model.safetensors").is_file()
    keys = set(load_file(str(full / "model.safetensors")))
    assert not any("lora_" in k or "base_layer" in k for k in keys)
    for adapter in (None, "default"):
        model, _ = vlmkit.load(full, adapter=adapter)
        torch.testing.assert_close(logits(model, lora_run["batch"]), lora_run["logits"], atol=1e-5, rtol=1e-5)
    with pytest.raises(CheckpointError, match="no adapter 'other'"):
        vlmkit.load(full, adapter="other")
    two = lora_run["root"] / "two"
    shutil.copytree(full, two)
    shutil.copytree(full / "adapters" / "default", two / "adapters" / "second")
    with pytest.raises(CheckpointError, match="choose one"):
        vlmkit.load(two)
    vlmkit.load(two, adapter="second")


def test_merge_lora_gives_the_same_outputs_and_a_plain_model(lora_run):
    model, processor = vlmkit.load(lora_run["root"] / "full")
    merge_lora(model)
    assert not lora_modules(model) and adapter_method(model) == "none"
    torch.testing.assert_close(logits(model, lora_run["batch"]), lora_run["logits"], atol=1e-4, rtol=1e-4)
    vlmkit.save(model, processor, lora_run["root"] / "merged")
    assert not (lora_run["root"] / "merged" / "adapters").exists()
    plain, _ = vlmkit.load(lora_run["root"] / "merged")
    torch.testing.assert_close(logits(plain, lora_run["batch"]), lora_run["logits"], atol=1e-4, rtol=1e-4)


def test_merge_lora_cli(lora_run, capsys):
    out = lora_run["root"] / "cli-merged"
    args = argparse.Namespace(model_dir=str(lora_run["root"] / "full"), adapter=None, out=str(out))
    assert merge_cli.run(args) == 0
    assert "merged lora adapter 'default'" in capsys.readouterr().out
    assert not (out / "adapters").exists()
    plain, _ = vlmkit.load(out)
    assert not lora_modules(plain)
    torch.testing.assert_close(logits(plain, lora_run["batch"]), lora_run["logits"], atol=1e-4, rtol=1e-4)
    with pytest.raises(VlmkitError, match="no adapter"):
        merge_cli.run(argparse.Namespace(model_dir=str(out), adapter=None, out=str(out.with_name("x"))))


# -------------------------------------------------------------------------------------------- QLoRA
def test_qlora_4bit_base_lora_grads_save_load_and_merge(tmp_path):
    bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install 'vlmkit[qlora]')")
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    apply_peft(model, PeftConfig(method="qlora"), LoraConfig(rank=4, dropout=0.0))
    apply_stage(model, "sft", FreezeConfig())
    assert adapter_method(model) == "qlora"
    attn = model.language_model.model.layers[0].self_attn
    assert isinstance(attn.q_proj.base_layer, bnb.nn.Linear4bit)
    assert isinstance(attn.k_proj, bnb.nn.Linear4bit)
    assert attn.q_proj.base_layer.weight.dtype == torch.uint8
    assert type(model.language_model.lm_head) is torch.nn.Linear
    assert "[4-bit]" in trainable_table(model)
    batch = batch_of(processor)
    out = model(**batch, labels=batch["labels"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad and p.grad is not None for p in lora.values())
    assert all(p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    train_steps(model, batch, steps=2)
    reference = logits(model, batch)
    vlmkit.save(model, processor, tmp_path / "q")
    loaded, _ = vlmkit.load(tmp_path / "q")
    assert isinstance(loaded.language_model.model.layers[0].self_attn.k_proj, bnb.nn.Linear4bit)
    torch.testing.assert_close(logits(loaded, batch), reference, atol=1e-5, rtol=1e-5)
    merge_lora(loaded)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in loaded.modules())
    merged = logits(loaded, batch)  # full precision now; QLoRA computed its matmuls in bf16
    torch.testing.assert_close(merged, reference, atol=1e-2, rtol=1e-2)
    vlmkit.save(loaded, processor, tmp_path / "merged")
    plain, _ = vlmkit.load(tmp_path / "merged")
    torch.testing.assert_close(logits(plain, batch), merged, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------- prefix
def test_prefix_tuning_forward_backward_and_lengths(tmp_path):
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    apply_peft(model, PeftConfig(method="prefix", num_virtual_tokens=4), LoraConfig())
    apply_stage(model, "sft", FreezeConfig(connector=False))
    assert adapter_method(model) == "prefix"
    assert trainable(model) == {"language_model.prompt_encoder.default.embedding.weight"}
    assert "prefix (language_model)" in trainable_table(model)
    batch = batch_of(processor)  # right padded, labels [B, L]
    out = model(**batch, labels=batch["labels"])
    assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.loss)
    out.loss.backward()
    prefix = model.language_model.prompt_encoder["default"].embedding.weight
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if "prompt_encoder" not in n)
    losses = train_steps(model, batch, steps=4, lr=5e-2)
    assert losses[-1] < losses[0]
    # left padding: a padded row gives the logits of the sample alone (mask and positions cover the prefix)
    left = batch_of(processor, padding_side="left")
    single = processor(images=[make_image(1)], messages=CONVS[1])
    n = single["input_ids"].shape[1]
    torch.testing.assert_close(logits(model, left)[1, -n:], logits(model, single)[0], atol=1e-4, rtol=1e-4)
    # the adapter alone and the whole model round-trip; prefix cannot be merged
    vlmkit.save(model, processor, tmp_path / "p")
    loaded, _ = vlmkit.load(tmp_path / "p")
    assert adapter_method(loaded) == "prefix"
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=1e-5, rtol=1e-5)
    with pytest.raises(VlmkitError, match="cannot be merged"):
        merge_lora(loaded)


def test_prefix_tuning_kv_cache_greedy_matches_recompute():
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    apply_peft(model, PeftConfig(method="prefix", num_virtual_tokens=3), LoraConfig())
    with torch.no_grad():
        model.language_model.prompt_encoder["default"].embedding.weight.normal_()
    model.eval()
    batch = processor(images=[make_image(0)], text="<image>\nWhat is this?")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        recomputed = ids
        for _ in range(5):
            step = model(input_ids=recomputed, attention_mask=torch.ones_like(recomputed),
                          pixel_values=batch["pixel_values"]).logits
            recomputed = torch.cat([recomputed, step[:, -1:].argmax(-1)], dim=1)
        out = model(**batch, use_cache=True)
        cached = torch.cat([ids, out.logits[:, -1:].argmax(-1)], dim=1)
        for _ in range(4):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=cached[:, -1:], attention_mask=mask, past_key_values=out.past_key_values,
                        use_cache=True)
            cached = torch.cat([cached, out.logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(cached, recomputed)


def test_adapter_of_another_architecture_is_a_checkpoint_error(lora_run):
    model, _ = vlmkit.build("cogvlm2-hires-tiny")  # the adapter also adapts llava's connector.linear_1/2
    with pytest.raises(CheckpointError, match="does not fit"):
        load_adapter(model, lora_run["root"] / "run" / "adapters" / "task")
