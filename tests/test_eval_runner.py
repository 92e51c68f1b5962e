"""The eval runner on a tiny random model: output files, resume after an interruption, determinism, CLI, and the
lmms-eval adapter (not-installed error, request translation)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import vlmkit
from vlmkit.cli.main import main
from vlmkit.errors import VlmkitError
from vlmkit.eval import EvalConfig, TaskSource, lmms_adapter, run_eval
from vlmkit.generation import Engine, GenerationConfig

N, BATCH = 4, 2
SOURCE = TaskSource(count=N)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    path = tmp_path_factory.mktemp("model") / "tiny"
    vlmkit.save(model, processor, path)
    return path


@pytest.fixture(scope="module")
def engine(model_dir) -> Engine:
    model, processor = vlmkit.load(model_dir)
    return Engine(model.eval(), processor)


def config(out: Path, **kw) -> EvalConfig:
    base = {"task": "shapes", "out_dir": out, "batch_size": BATCH, "max_new_tokens": 3, "progress": False,
            "model": "tiny"}
    return EvalConfig(**{**base, **kw})


def predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(engine, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eval") / "run1"
    return out, run_eval(engine, SOURCE, config(out))


def test_run_writes_predictions_prompts_and_results(first_run):
    out, results = first_run
    preds = predictions(out)
    assert [p["id"] for p in preds] == [f"shapes-1000-{i:06d}" for i in range(N)]
    prompts = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == N and prompts[0]["messages"][0]["content"] in prompts[0]["text"]
    assert "<image>" in prompts[0]["text"] and prompts[0]["images"] == ["<Image>"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["n_scored"] == N and saved["main_metric"] == "accuracy" and "accuracy" in saved["metrics"]
    assert saved == json.loads(json.dumps(results))
    assert (out / "results.md").read_text().startswith("# vlmkit eval: shapes")


def test_same_predictions_twice(engine, first_run, tmp_path):
    out, _ = first_run
    run_eval(engine, SOURCE, config(tmp_path / "again"))
    assert predictions(tmp_path / "again") == predictions(out)


def test_resume_after_interruption_gives_the_same_predictions(engine, first_run, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    calls = {"n": 0}
    original = Engine.generate

    def flaky(self, requests, cfg=None, batch_size=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, requests, cfg, batch_size)

    monkeypatch.setattr(Engine, "generate", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_eval(engine, SOURCE, config(out))
    assert len(predictions(out)) == BATCH
    with open(out / "predictions.jsonl", "a") as f:  # a line torn by the crash
        f.write('{"id": "shapes-1000-000002", "predic')
    calls["n"] = 10
    run_eval(engine, SOURCE, config(out))
    assert calls["n"] == 10 + (N - BATCH) // BATCH  # only the batches left were generated
    assert predictions(out) == predictions(first_run[0])


def test_resume_refuses_other_settings(engine, first_run):
    out, _ = first_run
    with pytest.raises(VlmkitError, match="prompt_template differ"):
        run_eval(engine, SOURCE, config(out, prompt="Q: {question}"))


def test_limit_draws_a_seeded_subset(engine, tmp_path):
    source = TaskSource(questions=_jsonl_task(tmp_path))
    cfg = config(tmp_path / "sub", task="jsonl", limit=2, seed=3, batch_size=2)
    results = run_eval(engine, source, cfg)
    ids = [p["id"] for p in predictions(tmp_path / "sub")]
    assert results["n_items"] == 2 and len(ids) == 2 and ids == sorted(ids, key=int)
    again = run_eval(engine, source, config(tmp_path / "sub2", task="jsonl", limit=2, seed=3, batch_size=2))
    assert [p["id"] for p in predictions(tmp_path / "sub2")] == ids and again["n_items"] == 2


def _jsonl_task(tmp: Path) -> Path:
    Image.new("RGB", (32, 32), "red").save(tmp / "red.png")
    lines = [{"id": str(i), "image": "red.png", "question": "What color is it?", "answer": "red"} for i in range(6)]
    path = tmp / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_missing_images_fail_before_generating(engine, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"image": "nope.png", "question": "q", "answer": "a"}) + "\n")
    with pytest.raises(VlmkitError, match=r"1 image file\(s\) not found, e.g. .*nope\.png"):
        run_eval(engine, TaskSource(questions=path), config(tmp_path / "o", task="jsonl"))


def test_cli_eval_on_a_saved_model(model_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["eval", "--model", str(model_dir), "--task", "captcha", "--limit", "2", "--batch-size", "2",
                 "--max-new-tokens", "3", "--out", str(out), "--no-progress"])
    assert code == 0 and len(predictions(out)) == 2
    assert "captcha: accuracy" in capsys.readouterr().out
    assert main(["eval", "--model", str(model_dir), "--task", "nope"]) == 2
    assert "unknown eval task 'nope'" in capsys.readouterr().err


def test_cli_eval_refuses_to_resume_after_the_weights_at_the_model_path_changed(model_dir, tmp_path, capsys):
    shutil.copytree(model_dir, tmp_path / "m")
    args = ["eval", "--model", str(tmp_path / "m"), "--task", "captcha", "--limit", "2", "--batch-size", "1",
            "--max-new-tokens", "2", "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(args) == 0 and main(args) == 0  # same weights: resumes (nothing left to generate)
    capsys.readouterr()
    model, processor = vlmkit.load(tmp_path / "m")
    with torch.no_grad():
        model.language_model.get_input_embeddings().weight.mul_(2)
    vlmkit.save(model, processor, tmp_path / "m")  # a newer checkpoint written to the same path
    assert main(args) == 2
    assert "model_weights differ" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ lmms-eval
def test_lmms_adapter_without_lmms_eval(monkeypatch):
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # makes `import lmms_eval` fail
    monkeypatch.setattr(lmms_adapter, "_CLASS", None)
    with pytest.raises(VlmkitError, match="lmms-eval is not installed: `pip install lmms-eval`"):
        lmms_adapter.model_class()
    with pytest.raises(VlmkitError, match="not installed"):
        lmms_adapter.VlmkitLMM  # noqa: B018 - the lazy attribute


class FakeEngine:
    def __init__(self) -> None:
        self.calls: list[tuple[list, GenerationConfig]] = []

    def generate(self, requests, config, batch_size=None):
        self.calls.append((list(requests), config))
        return [SimpleNamespace(text=f"answer to {r.messages[0]['content']}") for r in requests]


def test_lmms_requests_become_engine_requests():
    img = Image.new("RGB", (8, 8))
    docs = {"taskA": {"test": {0: {"img": img}, 1: {"img": img}}}}
    visual = lambda doc: [doc["img"]]  # noqa: E731
    reqs = [SimpleNamespace(args=("<image>\nFirst?", {"until": ["\n"], "max_new_tokens": 5}, visual, 0, "taskA", "test")),
            SimpleNamespace(args=("Second?", {"temperature": 0.5, "top_p": 0.9}, visual, 1, "taskA", "test")),
            SimpleNamespace(args=("Third?", {"until": "\n", "max_new_tokens": 5}, visual, 1, "taskA", "test"))]
    fake = FakeEngine()
    answers = lmms_adapter.generate_until(fake, reqs, docs, batch_size=4)
    assert answers == ["answer to <image>\nFirst?", "answer to Second?", "answer to Third?"]
    (batch1, cfg1), (batch2, cfg2) = fake.calls
    assert [r.messages[0]["content"] for r in batch1] == ["<image>\nFirst?", "Third?"]
    assert list(batch1[0].images) == [img] and cfg1.stop_strings == ("\n",) and cfg1.max_new_tokens == 5
    assert not cfg1.do_sample and cfg2.do_sample and cfg2.temperature == 0.5 and cfg2.top_p == 0.9
    assert cfg2.max_new_tokens == lmms_adapter.DEFAULT_MAX_NEW_TOKENS
    with pytest.raises(VlmkitError, match="images only"):
        lmms_adapter.to_request("q", ["video.mp4"])
