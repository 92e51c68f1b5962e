"""`vlmkit ask` and `vlmkit chat` end to end on a tiny saved model; user errors are one line and exit code 2."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

import vlmkit
from conftest import make_image
from vlmkit.cli import ask, chat, main
from vlmkit.generation import Box, GenerationConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return vlmkit.save(*vlmkit.build("llava-tiny"), tmp_path_factory.mktemp("cli") / "model")


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setitem(main.COMMANDS, "ask", ask)
    monkeypatch.setitem(main.COMMANDS, "chat", chat)
    return main.main


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "shapes.png"
    make_image(0).save(path)
    return path


def test_ask_json(cli, model_dir, image_path, capsys):
    code = cli(["ask", "--model", str(model_dir), "--image", str(image_path), "--json", "--max-new-tokens", "5",
                "What is in the picture?"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(out) >= {"answer", "boxes", "finish_reason", "usage"}
    assert isinstance(out["answer"], str) and out["finish_reason"] in ("stop", "length")
    assert out["usage"]["completion_tokens"] <= 5
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]


def test_ask_plain_text_and_sampling_flags(cli, model_dir, image_path, capsys):
    argv = ["ask", "--model", str(model_dir), "--image", str(image_path), "--max-new-tokens", "4",
            "--temperature", "0.8", "--top_p", "0.9", "--top_k", "20", "--seed", "3", "Describe it."]
    assert cli(argv) == 0
    first = capsys.readouterr().out
    assert cli(argv) == 0
    assert capsys.readouterr().out == first  # seeded sampling is reproducible


def test_ask_draws_boxes_found_in_the_answer(cli, model_dir, image_path, tmp_path, monkeypatch, capsys):
    from vlmkit.generation import Engine, Result

    answer = "the square [[100,100,500,500]]"
    monkeypatch.setattr(Engine, "generate", lambda self, reqs, cfg=None: [Result(answer, [5], "stop", 10, 1)])
    out_png = tmp_path / "boxes.png"
    assert cli(["ask", "--model", str(model_dir), "--image", str(image_path), "--boxes-out", str(out_png),
                "Where is the square?"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [answer, f"boxes drawn: {out_png}"]
    assert Image.open(out_png).size == (48, 48)
    assert cli(["ask", "--model", str(model_dir), "--image", str(image_path), "--json", "q"]) == 0
    boxes = json.loads(capsys.readouterr().out)["boxes"]
    assert [Box(**b) for b in boxes] == [Box("the square", 4.8, 4.8, 24.0, 24.0)]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_missing_model_dir_is_one_line(cli, image_path, tmp_path, capsys):
    assert cli(["ask", "--model", str(tmp_path / "nope"), "--image", str(image_path), "q"]) == 2
    assert "model directory not found" in one_line_error(capsys)


def test_default_model_missing_says_pass_model(cli, image_path, capsys, monkeypatch, tmp_path):
    from vlmkit.generation import engine

    monkeypatch.setattr(engine, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    assert cli(["ask", "--image", str(image_path), "q"]) == 2
    assert "--model" in one_line_error(capsys)


def test_unreadable_and_oversized_images_are_one_line(cli, model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image\n" * 10)
    assert cli(["ask", "--model", str(model_dir), "--image", str(bad), "q"]) == 2
    assert "cannot read image" in one_line_error(capsys)
    assert cli(["ask", "--model", str(model_dir), "--image", str(tmp_path / "missing.png"), "q"]) == 2
    assert "not found" in one_line_error(capsys)
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 6000)).save(huge)  # 48 megapixels, a tiny file
    assert cli(["ask", "--model", str(model_dir), "--image", str(huge), "q"]) == 2
    assert "megapixels" in one_line_error(capsys)


def test_bad_sampling_flag_is_one_line(cli, model_dir, image_path, capsys):
    assert cli(["ask", "--model", str(model_dir), "--image", str(image_path), "--top_p", "2", "q"]) == 2
    assert "top_p" in one_line_error(capsys)


def test_chat_repl_over_stdin(cli, model_dir, image_path, monkeypatch, capsys):
    script = f"What is this?\n\nimage {image_path}\nAnd this?\nimage /no/such.png\nclear\nHello.\nquit\nignored\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    assert cli(["chat", "--model", str(model_dir), "--image", str(image_path), "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") >= 3 and "user>" not in captured.out  # answers only on a pipe
    assert "attached" in captured.err and "not found" in captured.err and "cleared" in captured.err


def test_chat_repl_keeps_history(model_dir, image_path):
    model, processor = vlmkit.load(model_dir)
    session = chat.ChatSession(model, processor, config=GenerationConfig(max_new_tokens=3))
    out = io.StringIO()
    assert chat.repl(session, ask.open_image(image_path), io.StringIO("one\ntwo\nstop\n"), out) == 0
    assert [m.role for m in session.history] == ["user", "assistant"] * 2
    assert out.getvalue() == "".join(m.content + "\n" for m in session.history[1::2])
