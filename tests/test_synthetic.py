"""Synthetic datasets: determinism, answer correctness, writing + reading back, and reproducible splits."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkit.cli import data as data_cli
from vlmkit.data.formats import load_samples
from vlmkit.data.sample import DataError, Sample
from vlmkit.data.split import split_counts, split_dataset
from vlmkit.data.synthetic import (
    SYNTHETIC,
    ChainedSamples,
    SyntheticSet,
    generate,
    make_sample,
    write_dataset,
)
from vlmkit.data.synthetic.captcha import ALPHABET
from vlmkit.data.synthetic.shapes import COLORS
from vlmkit.errors import ConfigError

BOX = re.compile(r"^\[\[(\d{3}),(\d{3}),(\d{3}),(\d{3})\]\]$")


def _fingerprint(samples: list[Sample]) -> list[tuple]:
    return [(s.id, json.dumps(s.messages), np.asarray(s.images[0]).tobytes()) for s in samples]


@pytest.mark.parametrize("kind", ["shapes", "caption", "captcha"])
def test_same_seed_same_samples_and_pixels(kind: str) -> None:
    a, b = generate(kind, 6, seed=3), generate(kind, 6, seed=3)
    assert _fingerprint(a) == _fingerprint(b)
    other = generate(kind, 6, seed=4)
    assert [f[1:] for f in _fingerprint(other)] != [f[1:] for f in _fingerprint(a)]
    assert _fingerprint([make_sample(kind, 4, 3)]) == _fingerprint([a[4]])
    assert all(s.meta["task"] == (kind if kind != "shapes" else s.meta["task"]) for s in a)


def test_registry_and_options_errors() -> None:
    assert SYNTHETIC.names() == ["captcha", "caption", "scene_text", "shapes"]
    with pytest.raises(ConfigError, match="known synthetic kinds: captcha, caption, scene_text, shapes"):
        generate("faces", 1)
    with pytest.raises(ConfigError, match="unknown option.*colour.*allowed: image_size"):
        generate("shapes", 1, colour="red")
    with pytest.raises(ConfigError, match="allowed: count, color, position, grounding"):
        generate("shapes", 1, tasks=["size"])


def test_shapes_scenes_are_unambiguous_and_answers_correct() -> None:
    samples = generate("shapes", 60, seed=0, image_size=80)
    assert {s.meta["task"] for s in samples} == {"count", "color", "position", "grounding"}
    for s in samples:
        shapes = s.meta["shapes"]
        assert 1 <= len(shapes) <= 5 and s.images[0].size == (80, 80)
        assert len({(x["color"], x["shape"]) for x in shapes}) == len(shapes)
        question, answer = s.messages[0]["content"], s.answer()
        assert question.startswith("<image>\n") and answer == s.meta["answer"]
        if question.endswith("How many shapes are there?"):
            assert answer == str(len(shapes))
        if s.meta["task"] == "color":
            kind = question.split("the ")[-1].rstrip("?")
            assert [x["color"] for x in shapes if x["shape"] == kind] == [answer]


def test_grounding_answer_matches_meta_bbox_and_pixels() -> None:
    for s in generate("shapes", 12, seed=7, tasks="grounding"):
        assert s.messages[0]["content"].startswith("<image>\nCan you point out the ")
        m = BOX.match(s.answer())
        assert m, s.answer()
        w, h = s.meta["image_size"]
        x0, y0, x1, y1 = s.meta["bbox"]
        expected = [round(x0 / w * 1000), round(y0 / h * 1000), round(x1 / w * 1000), round(y1 / h * 1000)]
        assert [int(v) for v in m.groups()] == pytest.approx([min(999, e) for e in expected], abs=1)
        color = COLORS[s.meta["ref"].split()[0]]
        pixels = np.asarray(s.images[0])
        ys, xs = np.nonzero((pixels[y0 - 1:y1 + 1, x0 - 1:x1 + 1] == color).all(-1))  # shapes keep a 2 px gap
        extent = [xs.min() + x0 - 1, ys.min() + y0 - 1, xs.max() + x0, ys.max() + y0]
        assert extent == pytest.approx([x0, y0, x1, y1], abs=1)  # the shape fills its box edge to edge


def test_grounding_answer_phrase_names_the_object_before_its_box() -> None:
    boxed = generate("shapes", 8, seed=7, tasks="grounding")
    phrased = generate("shapes", 8, seed=7, tasks="grounding", grounding_answer="phrase")
    for b, p in zip(boxed, phrased):
        assert p.answer() == f"the {b.meta['ref']}{b.answer()}"
        assert p.meta["bbox"] == b.meta["bbox"] and p.images[0].tobytes() == b.images[0].tobytes()  # same scene
    with pytest.raises(ConfigError, match="grounding_answer='name'; allowed: box, phrase"):
        make_sample("shapes", 0, 0, grounding_answer="name")


def test_min_shapes_leaves_out_single_object_scenes() -> None:
    default = generate("shapes", 40, seed=7, tasks="grounding")
    crowded = generate("shapes", 40, seed=7, tasks="grounding", min_shapes=3)
    assert min(len(s.meta["shapes"]) for s in default) == 1
    assert min(len(s.meta["shapes"]) for s in crowded) >= 3 and max(len(s.meta["shapes"]) for s in crowded) <= 5
    with pytest.raises(ConfigError, match="min_shapes=6, max_shapes=5"):
        make_sample("shapes", 0, 0, min_shapes=6)


def test_caption_and_captcha_content() -> None:
    cap = generate("caption", 5, seed=1)
    for s in cap:
        assert s.answer().endswith(" on a white background.") and s.answer()[0].isupper()
        assert s.answer().count(" a ") + s.answer().count(" an ") + 1 >= len(s.meta["shapes"])
    bare = generate("caption", 1, seed=1, prompt="")
    assert bare[0].messages[0]["content"] == "<image>"
    cc = generate("captcha", 5, seed=2, length=6)
    for s in cc:
        assert len(s.answer()) == 6 and set(s.answer()) <= set(ALPHABET)
        assert s.images[0].size == (160, 60) and s.meta["task"] == "captcha"
        assert s.messages[0]["content"] == "<image>\nWhat is the text in the image?"
    assert not set("0O1I") & set(ALPHABET)


def test_write_dataset_round_trips_through_load_samples(tmp_path: Path) -> None:
    made = generate("shapes", 8, seed=5)
    path = write_dataset("shapes", 8, tmp_path / "ds", seed=5)
    assert path == tmp_path / "ds" / "data.json" and len(list((tmp_path / "ds" / "images").glob("*.png"))) == 8
    loaded, report = load_samples(path)
    assert report.format == "llava" and report.ok
    for a, b in zip(made, loaded):
        assert (a.id, a.messages, a.answer()) == (b.id, b.messages, b.answer())
        for key in ("task", "answer", "image_size", "bbox", "shapes"):
            assert a.meta.get(key) == b.meta.get(key)
        assert np.array_equal(np.asarray(a.images[0]), _pixels(b.images[0]))
    assert not list(tmp_path.glob(".ds.tmp-*"))
    with pytest.raises(DataError, match="not empty"):
        write_dataset("shapes", 2, tmp_path / "ds", seed=5)
    write_dataset("shapes", 2, tmp_path / "ds", seed=5, overwrite=True)
    assert len(load_samples(path)[0]) == 2 and len(list((tmp_path / "ds" / "images").iterdir())) == 2


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_captcha_folder_layout_reads_back_labels(tmp_path: Path) -> None:
    made = generate("captcha", 12, seed=9, length=1)  # one character: repeats exercise the _<n> suffix
    out = write_dataset("captcha", 12, tmp_path / "cap", seed=9, layout="folder", length=1)
    assert any("_" in p.stem for p in out.iterdir())
    loaded, report = load_samples(out)
    assert report.format == "folder"
    assert Counter(s.answer() for s in loaded) == Counter(s.answer() for s in made)
    with pytest.raises(ConfigError, match="captcha"):
        write_dataset("shapes", 2, tmp_path / "x", layout="folder")


# ------------------------------------------------------------------------------------------------ split
def test_split_counts() -> None:
    assert split_counts(20, (0.8, 0.05, 0.15)) == [16, 1, 3]
    assert split_counts(7, (0.8, 0.05, 0.15)) == [6, 0, 1]
    assert sum(split_counts(1001, (0.8, 0.05, 0.15))) == 1001


def test_split_file_is_reproducible_and_rebases_images(tmp_path: Path) -> None:
    src = write_dataset("shapes", 20, tmp_path / "ds", seed=1)

    def ids(out: Path) -> dict[str, list[str]]:
        return {n: [r["id"] for r in json.loads((out / f"{n}.json").read_text())] for n in ("train", "valid", "test")}

    split_dataset(src, seed=3, out=tmp_path / "a")
    split_dataset(src, seed=3, out=tmp_path / "b")
    split_dataset(src, seed=4, out=tmp_path / "c")
    first = ids(tmp_path / "a")
    assert first == ids(tmp_path / "b") != ids(tmp_path / "c")
    assert [len(v) for v in first.values()] == [16, 1, 3]
    assert sorted(sum(first.values(), [])) == sorted(f"shapes-1-{i:06d}" for i in range(20))
    test, report = load_samples(tmp_path / "a" / "test.json")
    assert report.ok and len(test) == 3
    written = split_dataset(src)  # default: next to the data file
    assert written["train"] == src.parent / "train.json"
    with pytest.raises(DataError, match="already exists"):
        split_dataset(src)


def test_split_folder_and_ratio_errors(tmp_path: Path) -> None:
    src = write_dataset("captcha", 20, tmp_path / "cap", seed=0, layout="folder")
    out = split_dataset(src, (0.5, 0.25, 0.25), seed=1)
    parts = {n: sorted(p.name for p in d.iterdir()) for n, d in out.items()}
    assert [len(v) for v in parts.values()] == [10, 5, 5]
    assert sorted(sum(parts.values(), [])) == sorted(p.name for p in src.iterdir() if p.is_file())
    again = split_dataset(src, (0.5, 0.25, 0.25), seed=1, out=tmp_path / "again")
    assert {n: sorted(p.name for p in d.iterdir()) for n, d in again.items()} == parts
    for bad in [(0.8, 0.1, 0.2), (0.5, 0.5), (1.2, -0.1, -0.1)]:
        with pytest.raises(ConfigError, match="summing to 1"):
            split_dataset(src, bad)


# -------------------------------------------------------------------------------------------------- CLI
def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    data_cli.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return args.run(args)


def test_cli_synth_and_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shp"
    assert _cli(["data", "synth", "shapes", "--n", "10", "--out", str(out), "--seed", "2", "--image-size", "64"]) == 0
    samples, _ = load_samples(out / "data.json")
    assert len(samples) == 10 and samples[0].meta["image_size"] == [64, 64]
    assert _cli(["data", "split", str(out / "data.json"), "--ratios", "0.6", "0.2", "0.2", "--out",
                 str(tmp_path / "sp")]) == 0
    assert "train" in capsys.readouterr().out and (tmp_path / "sp" / "valid.json").is_file()
    assert _cli(["data", "synth", "captcha", "--n", "3", "--out", str(tmp_path / "c"), "--layout", "folder"]) == 0
    assert len(list((tmp_path / "c").glob("*.png"))) == 3


def test_synthetic_set_is_lazy_and_equals_generate() -> None:
    lazy = SyntheticSet("captcha", 50_000, seed=3)
    assert len(lazy) == 50_000
    assert _fingerprint([lazy[4], lazy[-1]]) == _fingerprint([make_sample("captcha", 4, 3),
                                                               make_sample("captcha", 49_999, 3)])
    assert _fingerprint(lazy[:3]) == _fingerprint(generate("captcha", 3, seed=3))
    with pytest.raises(IndexError):
        lazy[50_000]
    with pytest.raises(ConfigError, match="unknown option"):
        SyntheticSet("shapes", 10, colour="red")
    chained = ChainedSamples([SyntheticSet("shapes", 3), [], SyntheticSet("caption", 2, seed=1)])
    assert len(chained) == 5
    assert [s.id for s in (chained[i] for i in range(5))] == [
        "shapes-0-000000", "shapes-0-000001", "shapes-0-000002", "caption-1-000000", "caption-1-000001"]
    with pytest.raises(IndexError):
        chained[5]


def test_shapes_multi_turn_asks_about_one_image() -> None:
    one, multi = make_sample("shapes", 7, 0), make_sample("shapes", 7, 0, turns=4)
    assert multi.messages[:2] == one.messages  # turn 1 is the single-turn sample: same question and answer
    assert [m["role"] for m in multi.messages] == ["user", "assistant"] * 4
    assert sum(m["content"].count("<image>") for m in multi.messages) == 1 and len(multi.images) == 1
    assert multi.meta["answer"] == multi.answer() == multi.messages[-1]["content"]
    with pytest.raises(ConfigError, match="turns=0"):
        make_sample("shapes", 0, 0, turns=0)


def test_scene_text_answers_follow_from_the_written_scene() -> None:
    """Text only; every object is written with its box (in shuffled order); colour answers name the colour written
    beside the asked kind and grounding answers copy the named object's box; same seed, same samples."""
    samples = generate("scene_text", 60, seed=5, turns=3)
    assert [s.messages for s in samples] == [s.messages for s in generate("scene_text", 60, seed=5, turns=3)]
    seen = Counter()
    for s in samples:
        assert s.images == [] and "<image>" not in json.dumps(s.messages)
        scene, *_ = s.messages[0]["content"].split("\n")
        written = dict(re.findall(r"an? (\w+ \w+) at (\[\[[\d,]+\]\])", scene))
        assert len(written) == len(s.meta["shapes"])
        for question, answer in zip(s.messages[::2], s.messages[1::2]):
            q, a = question["content"].split("\n")[-1], answer["content"]
            if q.startswith("What color is the"):
                kind = q.removeprefix("What color is the ").rstrip("?")
                assert [n.split()[0] for n in written if n.endswith(kind)] == [a]
                seen["color"] += 1
            elif q.startswith("Can you point out the"):
                name = q.removeprefix("Can you point out the ").split(" in the image")[0]
                assert written[name] == a
                seen["grounding"] += 1
    assert seen["color"] > 5 and seen["grounding"] > 5
    orders = {tuple(n for n in re.findall(r"an? (\w+ \w+) at", s.messages[0]["content"])) for s in samples}
    assert any(list(o) != sorted(o) for o in orders)  # not always one fixed order
    with pytest.raises(ConfigError, match="turns=0"):
        make_sample("scene_text", 0, 0, turns=0)
