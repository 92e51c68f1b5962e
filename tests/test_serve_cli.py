"""`vlmkit serve` / `vlmkit web`: flags become settings, the model directory loads, mistakes are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

import vlmkit
from vlmkit.cli import main as cli_main
from vlmkit.cli import serve as serve_cli
from vlmkit.serve.responses import ContentChunks, Meta, chunk


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return vlmkit.save(*vlmkit.build("llava-tiny"), tmp_path_factory.mktemp("m") / "model")


def test_commands_are_registered():
    assert cli_main.COMMANDS["serve"] is serve_cli and "web" in cli_main.COMMANDS
    args = cli_main.parser().parse_args(["serve", "--model", "x", "--max-batch", "3", "--api-key", "k"])
    assert (args.host, args.port, args.max_batch, args.api_key) == ("127.0.0.1", 8000, 3, "k")
    web = cli_main.parser().parse_args(["web", "--model", "x", "--share"])
    assert (web.host, web.port, web.share) == ("127.0.0.1", 7860, True)


def test_serve_builds_the_app_from_flags(model_dir, monkeypatch, tmp_path):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setenv(serve_cli.API_KEY_ENV, "from-env")
    code = cli_main.main(["serve", "--model", str(model_dir), "--port", "8123", "--max-batch", "2",
                          "--max-images", "1", "--local-image-dir", str(tmp_path), "--served-model-name", "tiny",
                          "--device", "cpu"])
    assert code == 0 and (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    settings = seen["app"].state.service.settings
    assert (settings.api_key, settings.max_batch, settings.max_images, settings.model_name) == (
        "from-env", 2, 1, "tiny")
    assert settings.local_image_dir == tmp_path.resolve() and not settings.allow_remote_images
    assert seen["app"].state.service.scheduler.max_batch == 2


@pytest.mark.parametrize("argv, message", [
    (["serve", "--model", "llava-tiny", "--adapter", "a"], "--adapter needs --model with a model directory"),
    (["serve", "--model", "/no/such/dir"], "model directory not found"),
    (["serve", "--model", "llava-tiny", "--max-batch", "0"], "max_batch=0"),
    (["serve", "--model", "llava-tiny", "--local-image-dir", "/no/such/dir"], "does not exist"),
    (["web", "--model", "MODEL_DIR", "--adapter", "nope"], "no adapter 'nope'"),
])
def test_mistakes_are_one_line_errors(argv, message, model_dir, capsys):
    argv = [str(model_dir) if a == "MODEL_DIR" else a for a in argv]
    assert cli_main.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_web_loads_the_model_and_launches(model_dir, monkeypatch):
    from vlmkit.serve import web

    seen = {}
    monkeypatch.setattr(web, "launch_demo", lambda pool, *a, **kw: seen.update(pool=pool, args=a, **kw))
    assert cli_main.main(["web", "--model", str(model_dir), "--port", "7999", "--device", "cpu"]) == 0
    assert seen["args"][:2] == ("127.0.0.1", 7999) and seen["pool"].adapters == []
    model, processor = seen["pool"].get()
    assert model.num_image_tokens == processor.num_image_tokens


def test_content_chunks_match_the_generic_chunk():
    meta = Meta("vlmkit")
    for with_usage in (False, True):
        fast = ContentChunks(meta, with_usage)(1, 'a "quoted" \u00e9 line\n')
        assert fast.startswith("data: ") and fast.endswith("\n\n")
        assert json.loads(fast[6:]) == chunk(meta, 1, {"content": 'a "quoted" \u00e9 line\n'}, None, with_usage)
