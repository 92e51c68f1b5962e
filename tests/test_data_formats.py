"""Data formats: detection, conversion to `Sample`, image path resolution, validation and the `data check` CLI."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from vlmkit.cli import data as data_cli
from vlmkit.data.formats import DATA_FORMATS, detect_format, label_from_filename, load_samples, to_cogvlm_box
from vlmkit.data.sample import DataError
from vlmkit.errors import ConfigError

HUMAN_GPT = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a square"}]
USER_ASSISTANT = [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "a square"}]


def _png(path: Path, size: tuple[int, int] = (8, 8), color: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / "images" / name)
    return tmp_path


# ------------------------------------------------------------------------------------------- each format
def _write_fixture(fmt: str, root: Path) -> Path:
    if fmt == "llava":
        return _json(root / "llava.json", [
            {"id": "s1", "image": "images/a.png", "conversations": HUMAN_GPT, "source_set": "x"},
            {"id": "s2", "image": ["images/a.png", "images/b.png"], "conversations": [
                {"from": "human", "value": "<image><image>Same?"}, {"from": "gpt", "value": "yes"}]},
            {"id": "s3", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        ])
    if fmt == "sharegpt":
        return _json(root / "sharegpt.json", [
            {"conversations": HUMAN_GPT, "images": ["images/a.png"], "system": "Be brief."},
            {"conversations": HUMAN_GPT, "images": ["images/b.png"]},
            {"conversations": HUMAN_GPT, "images": ["images/c.png"]},
        ])
    if fmt == "openai":
        return _jsonl(root / "openai.jsonl", [{"messages": USER_ASSISTANT, "images": [f"images/{n}.png"]}
                                              for n in "abc"])
    if fmt == "swift":
        return _jsonl(root / "swift.jsonl", [
            {"messages": [{"role": "user", "content": "<image>Find the <ref-object>"},
                          {"role": "assistant", "content": "<bbox>"}],
             "images": ["images/a.png"], "objects": {"ref": ["dot"], "bbox": [[0, 0, 4, 4]], "bbox_type": "real"}},
            {"messages": USER_ASSISTANT, "images": ["images/b.png"]},
            {"messages": USER_ASSISTANT, "images": ["images/c.png"]},
        ])
    if fmt == "caption":
        return _jsonl(root / "captions.jsonl", [{"image": f"images/{n}.png", "caption": f"image {n}"} for n in "abc"])
    if fmt == "caption-csv":
        path = root / "captions.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption", "license"])
            w.writerows([[f"images/{n}.png", f"image {n}", "cc"] for n in "abc"])
        return path
    return root / "images"


@pytest.mark.parametrize("fixture,expected", [
    ("llava", "llava"), ("sharegpt", "sharegpt"), ("openai", "openai"), ("swift", "swift"),
    ("caption", "caption"), ("caption-csv", "caption"), ("folder", "folder"),
])
def test_every_format_is_detected_and_loaded(root: Path, fixture: str, expected: str) -> None:
    path = _write_fixture(fixture, root)
    assert detect_format(path) == expected
    samples, report = load_samples(path)
    assert report.format == expected and report.ok and report.loaded == len(samples) == 3
    for s in samples:
        assert s.messages[-1]["role"] == "assistant" and s.answer()
        assert all(Path(p).is_file() and Path(p).parent == root / "images" for p in s.images)


def test_openai_json_list_and_format_override(root: Path) -> None:
    path = _json(root / "openai.json", [{"messages": USER_ASSISTANT, "images": ["images/a.png"]}])
    assert detect_format(path) == "openai"
    samples, _ = load_samples(path, fmt="swift")
    assert samples[0].messages == USER_ASSISTANT


def test_conversion_details(root: Path) -> None:
    llava, _ = load_samples(_write_fixture("llava", root))
    assert [s.id for s in llava] == ["s1", "s2", "s3"]
    assert llava[0].meta == {"source_set": "x"}
    assert len(llava[1].images) == 2 and llava[2].images == []
    assert llava[0].messages[0] == {"role": "user", "content": "<image>\nWhat is it?"}
    share, _ = load_samples(_write_fixture("sharegpt", root))
    assert share[0].messages[0] == {"role": "system", "content": "Be brief."}
    cap, _ = load_samples(_write_fixture("caption-csv", root), prompt="Describe.")
    assert cap[0].messages[0]["content"] == "<image>\nDescribe." and cap[0].meta == {"license": "cc"}
    folder, _ = load_samples(root / "images", prompt="Read it.")
    assert folder[0].messages[0]["content"] == "<image>\nRead it." and folder[0].answer() == "a"


def test_image_paths_resolve_against_image_root(tmp_path: Path) -> None:
    _png(tmp_path / "pics" / "x.png")
    (tmp_path / "meta").mkdir()
    path = _json(tmp_path / "meta" / "d.json", [{"id": "q", "image": "x.png", "conversations": HUMAN_GPT}])
    with pytest.raises(DataError, match="image file not found"):
        load_samples(path)
    samples, _ = load_samples(path, image_root=tmp_path / "pics")
    assert samples[0].images == [tmp_path / "pics" / "x.png"]


def test_folder_labels_strip_duplicate_suffix(tmp_path: Path) -> None:
    for name in ("AB12.png", "AB12_1.png", "X_Y.png", "notes.txt"):
        _png(tmp_path / name) if name.endswith(".png") else (tmp_path / name).write_text("x")
    samples, report = load_samples(tmp_path)
    assert report.format == "folder" and [s.answer() for s in samples] == ["AB12", "AB12", "X_Y"]
    assert samples[0].messages[0]["content"] == "<image>\nWhat is the text in the image?"
    assert label_from_filename("7K2P_12.jpg") == "7K2P"


# ----------------------------------------------------------------------------------------------- boxes
def test_cogvlm_box_conversion() -> None:
    assert to_cogvlm_box([20, 10, 100, 50], (200, 100), "real") == "[[100,100,500,500]]"
    assert to_cogvlm_box([0.086, 0.54, 0.4, 0.76], bbox_type="norm1") == "[[086,540,400,760]]"
    assert to_cogvlm_box([0, 0, 200, 100], (200, 100)) == "[[000,000,999,999]]"


@pytest.mark.parametrize("bbox,bbox_type,expected", [
    ([[20, 10, 100, 50]], "real", "[[100,100,500,500]]"),
    ([[0.1, 0.2, 0.5, 0.6]], "norm1", "[[100,200,500,600]]"),
])
def test_swift_objects_render_as_cogvlm_boxes(tmp_path: Path, bbox: list, bbox_type: str, expected: str) -> None:
    _png(tmp_path / "wide.png", size=(200, 100))
    row = {"messages": [{"role": "user", "content": "<image>Where is <ref-object>?"},
                        {"role": "assistant", "content": "<ref-object> <bbox>"}],
           "images": ["wide.png"], "objects": {"ref": ["the cat", "the cat"], "bbox": bbox, "bbox_type": bbox_type}}
    row["objects"]["ref"] = ["the cat", "The cat"]
    samples, _ = load_samples(_jsonl(tmp_path / "g.jsonl", [row]))
    assert samples[0].messages[0]["content"] == "<image>Where is the cat?"
    assert samples[0].answer() == f"The cat {expected}"
    assert samples[0].meta["objects"]["bbox_type"] == bbox_type


def test_swift_placeholder_count_mismatch_is_reported(tmp_path: Path) -> None:
    _png(tmp_path / "i.png")
    row = {"id": "g1", "messages": [{"role": "user", "content": "<image>Find it"},
                                    {"role": "assistant", "content": "<bbox> <bbox>"}],
           "images": ["i.png"], "objects": {"ref": [], "bbox": [[0, 0, 1, 1]], "bbox_type": "real"}}
    with pytest.raises(DataError, match=r"sample 'g1'.*2 '<bbox>' placeholders but objects give 1"):
        load_samples(_jsonl(tmp_path / "g.jsonl", [row]))


# ------------------------------------------------------------------------------------------ validation
def _bad_samples(root: Path) -> dict[str, tuple[dict, str]]:
    (root / "images" / "broken.png").write_bytes(b"not a png at all")
    return {
        "markers": ({"image": "images/a.png", "conversations": [
            {"from": "human", "value": "<image><image>?"}, {"from": "gpt", "value": "x"}]},
            "2 '<image>' markers but the sample has 1 images"),
        "missing": ({"image": "images/nope.png", "conversations": HUMAN_GPT}, "image file not found"),
        "unreadable": ({"image": "images/broken.png", "conversations": HUMAN_GPT}, "image file is unreadable"),
        "empty": ({"image": "images/a.png", "conversations": [
            {"from": "human", "value": "<image>?"}, {"from": "gpt", "value": "  "}]}, "turn 1 (assistant) is empty"),
        "role": ({"image": "images/a.png", "conversations": [
            {"from": "human", "value": "<image>?"}, {"from": "bot", "value": "x"}]}, "role 'bot'"),
        "order": ({"image": "images/a.png", "conversations": [
            {"from": "human", "value": "<image>?"}, {"from": "human", "value": "again?"},
            {"from": "gpt", "value": "x"}]}, "must alternate"),
        "no-answer": ({"image": "images/a.png", "conversations": [{"from": "human", "value": "<image>?"}]},
                      "no assistant turn"),
    }


@pytest.mark.parametrize("case", ["markers", "missing", "unreadable", "empty", "role", "order", "no-answer"])
def test_each_validation_error_names_sample_and_file(root: Path, case: str) -> None:
    record, expected = _bad_samples(root)[case]
    good = {"id": "ok", "image": "images/a.png", "conversations": HUMAN_GPT}
    path = _json(root / "bad.json", [good, {"id": f"bad-{case}", **record}])
    with pytest.raises(DataError) as err:
        load_samples(path)
    msg = str(err.value)
    assert expected in msg and f"sample 'bad-{case}' (index 1)" in msg and str(path) in msg
    assert "--skip-bad" in msg
    samples, report = load_samples(path, skip_bad=True)
    assert [s.id for s in samples] == ["ok"] and report.skipped == 1 and report.loaded == 1


def test_skip_bad_counts_and_error_lists_first_problems(root: Path) -> None:
    rows = [{"id": f"g{i}", "image": "images/a.png", "conversations": HUMAN_GPT} for i in range(4)]
    rows += [{"id": f"b{i}", "image": "images/missing.png", "conversations": HUMAN_GPT} for i in range(15)]
    path = _json(root / "mixed.json", rows)
    with pytest.raises(DataError) as err:
        load_samples(path)
    msg = str(err.value)
    assert "sample 'b0'" in msg and "sample 'b9'" in msg and "sample 'b10'" not in msg
    assert "and 5 more" in msg and "15 of 19 samples" in msg
    samples, report = load_samples(path, skip_bad=True)
    assert len(samples) == report.loaded == 4 and report.skipped == 15 and len(report.problems) == 15


def test_sample_without_id_is_named_by_index_and_jsonl_by_line(root: Path) -> None:
    path = root / "d.jsonl"
    path.write_text(json.dumps({"messages": USER_ASSISTANT, "images": ["images/a.png"]}) + "\n{oops\n")
    _, report = load_samples(path, skip_bad=True)
    assert report.loaded == 1 and report.skipped == 1
    assert "line 2" in str(report.problems[0]) and "not valid JSON" in str(report.problems[0])
    path = _json(root / "noid.json", [{"conversations": [{"from": "human", "value": "hi"}]}])
    with pytest.raises(DataError, match=r"index 0: .*no assistant turn"):
        load_samples(path)


def test_unknown_and_undetectable_formats(root: Path) -> None:
    path = _json(root / "x.json", [{"question": "?", "answer": "!"}])
    with pytest.raises(ConfigError) as err:
        load_samples(path, fmt="nope")
    assert all(name in str(err.value) for name in DATA_FORMATS.names())
    with pytest.raises(DataError, match="cannot tell the data format.*llava"):
        detect_format(path)
    with pytest.raises(DataError, match="not found"):
        load_samples(root / "absent.json")


# ------------------------------------------------------------------------------------------------ CLI
def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    data_cli.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.run(args)


def test_cli_check_reports(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write_fixture("llava", root)
    assert _cli(["data", "check", str(good)]) == 0
    assert "3 samples loaded" in capsys.readouterr().out
    bad = _json(root / "bad.json", [{"id": "z", "image": "images/none.png", "conversations": HUMAN_GPT},
                                    {"id": "y", "image": "images/a.png", "conversations": HUMAN_GPT}])
    assert _cli(["data", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "sample 'z'" in out and "1 skipped" in out and "--skip-bad" in out
    assert _cli(["data", "check", str(bad), "--skip-bad", "--format", "llava"]) == 0
