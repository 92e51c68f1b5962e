"""Config validation and round trips (YAML, JSON), presets, overrides."""

from __future__ import annotations

import json

import pytest
import yaml

from vlmkit import ConfigError, VLMConfig, list_presets
from vlmkit.api import resolve_config


def test_every_preset_validates_and_round_trips(tmp_path):
    names = list_presets()
    assert {"llava", "visualglm", "minigpt4", "minigptv2", "codefuse", "cogvlm2-hires"} <= set(names)
    for name in names:
        cfg = resolve_config(name)
        for suffix in (".yaml", ".json"):
            path = tmp_path / f"{name}{suffix}"
            cfg.save(path)
            again = VLMConfig.from_file(path)
            assert again.to_dict() == cfg.to_dict(), (name, suffix)
    assert {n for n in names if n.endswith("-tiny")} == {f"{n}-tiny" for n in names if not n.endswith("-tiny")}


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        VLMConfig.from_dict({"vision": {"type": "clip", "hiden_size": 3}})
    msg = str(e.value)
    assert "hiden_size" in msg and "hidden_size" in msg and "vision" in msg


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match=r"language\.num_layers: expected int"):
        VLMConfig.from_dict({"language": {"num_layers": "two"}})
    with pytest.raises(ConfigError, match=r"vision\.drop_cls: expected bool"):
        VLMConfig.from_dict({"vision": {"drop_cls": 1}})


def test_connector_options_are_typed_per_connector():
    cfg = VLMConfig.from_dict({"connector": {"type": "mlp", "num_layers": 3}})
    assert cfg.connector.options.num_layers == 3
    with pytest.raises(ConfigError, match="num_queries"):
        VLMConfig.from_dict({"connector": {"type": "mlp", "num_queries": 3}})
    with pytest.raises(ConfigError, match="known connectors: .*mlp"):
        VLMConfig.from_dict({"connector": {"type": "nope"}})


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="llava-tiny"):
        resolve_config("no-such-preset")


def test_overrides_and_yaml_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(resolve_config("llava-tiny").to_dict()))
    cfg = resolve_config(path, ["language.num_layers=3", "connector.num_layers=1", "template=chatml"])
    assert cfg.language.num_layers == 3 and cfg.connector.options.num_layers == 1 and cfg.template == "chatml"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        resolve_config(path, ["language.num_layers"])


def test_bad_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        VLMConfig.from_file(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        VLMConfig.from_file(lst)
    with pytest.raises(ConfigError, match="not found"):
        VLMConfig.from_file(tmp_path / "missing.yaml")
    (tmp_path / "ok.json").write_text(json.dumps({"dtype": "float64"}))
    with pytest.raises(ConfigError, match="dtype"):
        VLMConfig.from_file(tmp_path / "ok.json")
