"""Task loaders on small fixture files in each official format, their scorers, prompts, and scoring-only runs."""

from __future__ import annotations

import base64
import io
import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from vlmkit.cli.main import main
from vlmkit.data.sample import DataError
from vlmkit.errors import VlmkitError
from vlmkit.eval import PROMPTS, TASKS, EvalConfig, TaskSource, score_predictions
from vlmkit.eval.runner import read_predictions, select_items
from vlmkit.eval.tasks import render_prompt
from vlmkit.eval.tasks.refcoco import load_refs_pickle


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def jsonl(path: Path, records) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def png_bytes(color=(255, 0, 0), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def load(task: str, **source):
    return TASKS.get(task).load(TaskSource(**source))


def scores(task: str, items, preds):
    return TASKS.get(task).score(items, preds)


# ------------------------------------------------------------------------------------------------- VQAv2
def vqav2_files(tmp: Path) -> tuple[Path, Path]:
    q = write(tmp / "q.json", {"data_subtype": "val2014", "questions": [
        {"question_id": 1, "image_id": 42, "question": "What animal?"},
        {"question_id": 2, "image_id": 42, "question": "How many?"}]})
    a = write(tmp / "a.json", {"annotations": [
        {"question_id": 1, "question_type": "what", "answer_type": "other",
         "answers": [{"answer": "dog", "answer_id": i} for i in range(10)]},
        {"question_id": 2, "question_type": "how many", "answer_type": "number",
         "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(["2"] * 3 + ["3"] * 7)]}]})
    return q, a


def test_vqav2_loader_and_official_report(tmp_path):
    q, a = vqav2_files(tmp_path)
    items = load("vqav2", questions=q, annotations=a, images=tmp_path / "val2014")
    assert [it.id for it in items] == ["1", "2"]
    assert items[0].images == [tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"]
    assert items[1].target == ["2"] * 3 + ["3"] * 7 and items[1].meta["answer_type"] == "number"
    s = scores("vqav2", items, {"1": "dog", "2": "two"})
    assert s.metrics["accuracy"] == pytest.approx(95.0)  # (1.0 + 0.9) / 2
    assert s.breakdowns["answer_type"] == pytest.approx({"other": 100.0, "number": 90.0})
    assert s.breakdowns["question_type"] == pytest.approx({"what": 100.0, "how many": 90.0})


def test_bad_annotation_file_names_the_file_and_the_field(tmp_path):
    q, a = vqav2_files(tmp_path)
    bad = write(tmp_path / "bad.json", {"annotations": [{"question_id": 1, "question_type": "what",
                                                         "answer_type": "other"}]})
    with pytest.raises(DataError, match=r"bad\.json: annotation 0 has no field 'answers'"):
        load("vqav2", questions=q, annotations=bad)
    with pytest.raises(DataError, match=r"q\.json: not valid JSON"):
        load("vqav2", questions=write(tmp_path / "q.json", "{oops"), annotations=a)


def test_scoring_only_cli_and_its_errors(tmp_path, capsys):
    q, a = vqav2_files(tmp_path)
    preds = jsonl(tmp_path / "preds.jsonl", [{"question_id": 1, "answer": "dog"}, {"question_id": 2, "answer": "2"}])
    out = tmp_path / "report"
    assert main(["eval", "--task", "vqav2", "--predictions", str(preds), "--annotations", str(a),
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["accuracy"] == pytest.approx(95.0) and results["n_scored"] == 2
    assert "| **accuracy** | 95.00 |" in (out / "results.md").read_text()
    bad = write(tmp_path / "bad.json", {"annotations": [{"question_id": 1}]})
    assert main(["eval", "--task", "vqav2", "--predictions", str(preds), "--annotations", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad.json" in err and "'answers'" in err and "\n" not in err


# ------------------------------------------------------------------------------------- TextVQA, VizWiz, GQA
def test_textvqa_vizwiz_gqa_loaders(tmp_path):
    tv = write(tmp_path / "TextVQA_0.5.1_val.json", {"data": [
        {"question_id": 7, "question": "What brand?", "image_id": "abc", "answers": ["Coca Cola"] * 10}]})
    items = load("textvqa", annotations=tv, images=tmp_path)
    assert items[0].images == [tmp_path / "abc.jpg"]
    assert scores("textvqa", items, {"7": "coca cola."}).metrics["accuracy"] == pytest.approx(100.0)

    vz = write(tmp_path / "val.json", [{"image": "VizWiz_val_1.jpg", "question": "What is it?",
                                        "answer_type": "other", "answers": [{"answer": "dog"}] * 10}])
    items = load("vizwiz", annotations=vz, images=tmp_path)
    assert items[0].id == "VizWiz_val_1.jpg"
    assert scores("vizwiz", items, {"VizWiz_val_1.jpg": "A dog."}).breakdowns["answer_type"] == {"other": 100.0}

    gq = write(tmp_path / "testdev_balanced_questions.json", {
        "q1": {"imageId": "n1", "question": "Is it red?", "answer": "yes", "isBalanced": True,
               "types": {"structural": "verify", "semantic": "attr"}},
        "q2": {"imageId": "n1", "question": "Which side?", "answer": "left", "isBalanced": True,
               "types": {"structural": "query", "semantic": "rel"}},
        "q3": {"imageId": "n2", "question": "x?", "answer": "no", "isBalanced": False,
               "types": {"structural": "verify", "semantic": "attr"}}})
    items = load("gqa", questions=gq, images=tmp_path)
    s = scores("gqa", items, {"q1": "Yes.", "q2": "right", "q3": "no"})
    assert s.metrics == pytest.approx({"accuracy": 50.0, "binary": 100.0, "open": 0.0})  # q3 is unbalanced
    assert s.breakdowns["semantic"] == pytest.approx({"attr": 100.0, "rel": 0.0})


# ------------------------------------------------------------------------------------- ScienceQA, MMBench
def test_scienceqa_loader(tmp_path):
    write(tmp_path / "problems.json", {
        "10": {"question": "Which is a mammal?", "choices": ["frog", "cat"], "answer": 1, "hint": "Look closely.",
               "image": "image.png", "subject": "natural science", "split": "test"},
        "11": {"question": "Pick one.", "choices": ["a", "b", "c"], "answer": 0, "hint": "", "image": None,
               "subject": "language science", "split": "test"}})
    write(tmp_path / "pid_splits.json", {"test": ["10", "11"], "val": []})
    items = load("scienceqa", data=tmp_path)
    assert items[0].images == [tmp_path / "images" / "test" / "10" / "image.png"] and items[1].images == []
    prompt = render_prompt(PROMPTS["scienceqa"], items[0])
    assert prompt == ("Context: Look closely.\nWhich is a mammal?\nA. frog\nB. cat\n"
                      "Answer with the option's letter from the given choices directly.")
    s = scores("scienceqa", items, {"10": "B", "11": "The answer is B."})
    assert s.metrics == pytest.approx({"accuracy": 50.0, "image_accuracy": 100.0})
    with pytest.raises(DataError, match="no split 'dev'"):
        load("scienceqa", data=tmp_path, split="dev")


def mmbench_tsv(path: Path, rows) -> Path:
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    lines = ["\t".join(cols)] + ["\t".join(str(r.get(c, "")) for c in cols) for r in rows]
    return write(path, "\n".join(lines) + "\n")


def test_mmbench_generates_rotations_and_scores_circularly(tmp_path):
    img = base64.b64encode(png_bytes()).decode()
    tsv = mmbench_tsv(tmp_path / "mmb.tsv", [
        {"index": 5, "question": "Color?", "hint": "nan", "A": "red", "B": "blue", "C": "green", "D": "pink",
         "answer": "A", "category": "color", "l2-category": "attr", "image": img},
        {"index": 9, "question": "Shape?", "hint": "Look.", "A": "round", "B": "square", "answer": "B",
         "category": "shape", "l2-category": "attr", "image": img}])
    items = load("mmbench", questions=tsv)
    assert [it.id for it in items] == ["5", "1000005", "2000005", "3000005", "9", "1000009"]
    assert items[1].meta["options"] == "A. blue\nB. green\nC. pink\nD. red" and items[1].target == "D"
    assert Image.open(io.BytesIO(items[0].images[0])).size == (8, 6)
    assert render_prompt(PROMPTS["mmbench"], items[4]).startswith("Look.\nShape?\nA. round\nB. square\n")
    preds = {"5": "A", "1000005": "D", "2000005": "C", "3000005": "B", "9": "B", "1000009": "A"}
    s = scores("mmbench", items, preds)
    assert s.metrics == pytest.approx({"circular_accuracy": 100.0, "vanilla_accuracy": 100.0})
    preds["2000005"] = "A"  # one wrong rotation fails the whole question
    s = scores("mmbench", items, preds)
    assert s.metrics == pytest.approx({"circular_accuracy": 50.0, "vanilla_accuracy": 100.0})
    assert s.breakdowns["category"] == {"color": 0.0, "shape": 100.0}
    # subsets keep the rotations of a question together
    assert {it.group for it in select_items(items, 2, seed=0)} in ({"5"}, {"9"})


def test_mmbench_official_circular_copies_share_images(tmp_path):
    img = base64.b64encode(png_bytes()).decode()
    tsv = mmbench_tsv(tmp_path / "mmb.tsv", [
        {"index": 3, "question": "Q?", "A": "x", "B": "y", "answer": "A", "image": img},
        {"index": 1000003, "question": "Q?", "A": "y", "B": "x", "answer": "B", "image": "3"}])
    items = load("mmbench", questions=tsv)
    assert [it.id for it in items] == ["3", "1000003"] and items[1].images == items[0].images
    bad = mmbench_tsv(tmp_path / "bad.tsv", [{"index": 3, "question": "Q?", "A": "x", "B": "y", "answer": "C",
                                               "image": img}])
    with pytest.raises(DataError, match=r"bad\.tsv: row index 3, field 'answer'"):
        load("mmbench", questions=bad)


# ------------------------------------------------------------------------------------------------- POPE
def test_pope_folder_of_category_files(tmp_path):
    for cat, labels in (("random", ["yes", "no"]), ("adversarial", ["no", "no"])):
        jsonl(tmp_path / "pope" / f"coco_pope_{cat}.json",
              [{"question_id": i + 1, "image": "COCO_val2014_1.jpg", "text": "Is there a dog?", "label": lab}
               for i, lab in enumerate(labels)])
    items = load("pope", questions=tmp_path / "pope", images=tmp_path)
    assert [it.id for it in items] == ["adversarial:1", "adversarial:2", "random:1", "random:2"]
    s = scores("pope", items, {"adversarial:1": "No", "adversarial:2": "Yes", "random:1": "Yes", "random:2": "No"})
    assert s.notes["counts"] == {"tp": 1, "fp": 1, "tn": 2, "fn": 0}
    assert s.notes["per_category"]["random"]["f1"] == 1.0 and s.notes["per_category"]["adversarial"]["f1"] == 0.0
    assert s.main == "f1_mean" and s.metrics["f1_mean"] == 0.5


# ---------------------------------------------------------------------------------------------- RefCOCO
def refer_folder(tmp: Path) -> Path:
    root = tmp / "refcoco"
    refs = [{"ref_id": 0, "ann_id": 100, "image_id": 1, "split": "testA", "sentences": [
                {"sent": "left dog", "sent_id": 5}, {"sent": "the dog on the left", "sent_id": 6}]},
            {"ref_id": 1, "ann_id": 101, "image_id": 1, "split": "train", "sentences": [{"sent": "x", "sent_id": 7}]}]
    root.mkdir(parents=True)
    (root / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    write(root / "instances.json", {"images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg",
                                                "width": 200, "height": 100}],
                                    "annotations": [{"id": 100, "bbox": [10, 20, 50, 40]},
                                                    {"id": 101, "bbox": [0, 0, 1, 1]}]})
    return root


def test_refcoco_refer_format_and_score(tmp_path):
    root = refer_folder(tmp_path)
    items = load("refcoco", data=root, split="testA", images=tmp_path / "train2014")
    assert [it.id for it in items] == ["0:5", "0:6"]
    assert items[0].target == (10, 20, 60, 60) and items[0].meta["image_size"] == [200, 100]
    assert items[0].images == [tmp_path / "train2014" / "COCO_train2014_000000000001.jpg"]
    assert render_prompt(PROMPTS["refcoco"], items[0]).startswith("Can you point out left dog in the image")
    # CogVLM box: [[50,200,300,600]] of 200x100 px -> (10, 20, 60, 60): IoU 1; the other answer has no box
    s = scores("refcoco", items, {"0:5": "[[050,200,300,600]]", "0:6": "on the left"})
    assert s.metrics == pytest.approx({"acc@0.5": 50.0, "mean_iou": 0.5, "no_box": 1})
    with pytest.raises(VlmkitError, match="needs --split"):
        load("refcoco", data=root)


class Boom:
    def __reduce__(self):
        import os
        return (os.makedirs, (str(Path(__file__).parent / "SHOULD_NOT_EXIST"),))


def test_refs_pickle_is_read_without_running_code(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ok": 1}, Boom()], protocol=2))
    with pytest.raises(DataError, match="refers to posix.makedirs|refers to os.makedirs"):
        load_refs_pickle(path)
    assert not (Path(__file__).parent / "SHOULD_NOT_EXIST").exists()


def test_refcoco_converted_jsonl(tmp_path):
    qwen = jsonl(tmp_path / "refcoco_testA.jsonl", [
        {"image": "COCO_1.jpg", "sent": "left dog", "bbox": [10, 20, 60, 60], "width": 200, "height": 100}])
    items = load("refcoco", questions=qwen, images=tmp_path)
    assert items[0].target == (10, 20, 60, 60) and items[0].images == [tmp_path / "COCO_1.jpg"]
    minigpt = write(tmp_path / "refcoco_val.json", [
        {"img_id": "COCO_train2014_000000000001_100", "sents": "dog", "bbox": [10, 20, 50, 40], "width": 200,
         "height": 100}])
    items = load("refcoco", questions=minigpt, images=tmp_path)
    assert items[0].target == (10, 20, 60, 60)
    assert items[0].images == [tmp_path / "COCO_train2014_000000000001.jpg"]


# --------------------------------------------------------------------------------------- captions, JSONL
def test_coco_captions_and_karpathy(tmp_path):
    coco = write(tmp_path / "captions_val2014.json", {
        "images": [{"id": 2, "file_name": "b.jpg"}, {"id": 1, "file_name": "a.jpg"}],
        "annotations": [{"image_id": 1, "caption": "A dog runs."}, {"image_id": 2, "caption": "Two cats."},
                        {"image_id": 1, "caption": "The dog is running."}]})
    items = load("coco-caption", annotations=coco, images=tmp_path)
    assert [it.id for it in items] == ["2", "1"] and items[1].target == ["A dog runs.", "The dog is running."]
    s = scores("coco-caption", items, {"1": "a dog runs", "2": "two cats"})
    assert set(s.metrics) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    assert s.metrics["ROUGE_L"] == pytest.approx(1.0) and "tokenizer" in s.notes
    karpathy = write(tmp_path / "dataset_coco.json", {"images": [
        {"filepath": "val2014", "filename": "c.jpg", "split": "test", "cocoid": 3, "sentences": [{"raw": "A cat."}]},
        {"filepath": "train2014", "filename": "d.jpg", "split": "train", "cocoid": 4, "sentences": [{"raw": "x"}]}]})
    items = load("coco-caption", annotations=karpathy, images=tmp_path)
    assert [it.id for it in items] == ["3"] and items[0].images == [tmp_path / "val2014" / "c.jpg"]


def test_generic_jsonl_task(tmp_path):
    f = jsonl(tmp_path / "qa.jsonl", [
        {"id": "a", "image": "x.png", "question": "Word?", "answer": "Hello"},
        {"id": "b", "question": "Pick.", "choices": ["cat", "dog"], "answer": "dog"},
        {"id": "c", "image": "x.png", "question": "Where?", "answer": "", "bbox": [0, 0, 10, 10],
         "image_size": [20, 20]}])
    items = load("jsonl", questions=f)
    assert items[0].images == [tmp_path / "x.png"] and items[1].target == "B"
    assert render_prompt(PROMPTS["jsonl"], items[1]).endswith("A. cat\nB. dog\nAnswer with the option's letter "
                                                               "from the given choices directly.")
    s = scores("jsonl", items, {"a": "hello.", "b": "B", "c": "[0, 0, 10, 10]"})
    assert s.metrics["accuracy"] == pytest.approx(200 / 3) and s.metrics["relaxed_accuracy"] == 100.0
    assert s.breakdowns["kind"] == pytest.approx({"bbox": 100.0, "choice": 100.0, "exact": 0.0})
    bad = jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "x", "choices": ["a", "b"]}])
    with pytest.raises(DataError, match=r"bad\.jsonl: line 1, field 'answer' 'x'"):
        load("jsonl", questions=bad)


# ------------------------------------------------------------------------------------ synthetic, prompts
def test_synthetic_tasks_are_deterministic_and_held_out():
    a = load("shapes", count=6)
    b = load("shapes", count=6)
    assert [(it.id, it.question, it.target) for it in a] == [(it.id, it.question, it.target) for it in b]
    assert all(it.meta["task"] in ("count", "color", "position") for it in a)
    assert a[0].id.startswith("shapes-1000-") and "<image>" not in a[0].question
    g = load("grounding", count=2, split="7")
    assert g[0].meta["task"] == "grounding" and len(g[0].target) == 4 and g[0].id.startswith("shapes-7-")
    with pytest.raises(VlmkitError, match="generation seed"):
        load("captcha", count=1, split="test")


def test_captcha_task_reads_a_label_folder(tmp_path):
    from vlmkit.data.synthetic import write_dataset

    write_dataset("captcha", 3, tmp_path / "caps", seed=5, layout="folder", length=5)
    items = load("captcha", data=tmp_path / "caps")
    assert sorted(it.target for it in items) == sorted(p.stem for p in (tmp_path / "caps").glob("*.png"))
    assert all(len(it.target) == 5 and it.question == "What is the text in the image?" for it in items)
    assert items[0].meta["image_size"] == [160, 60]
    with pytest.raises(VlmkitError, match="not a folder"):
        load("captcha", data=tmp_path / "absent")


def test_prompt_templates_are_data_and_checked():
    item = load("shapes", count=1)[0]
    assert render_prompt("Q: {question}\nA:", item) == f"Q: {item.question}\nA:"
    with pytest.raises(VlmkitError, match=r"\{options\}.*available: \{image_size\}|\{options\}"):
        render_prompt("{question} {options}", item)


def test_read_predictions_accepts_the_usual_shapes(tmp_path):
    assert read_predictions(jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "text": "x"}])) == {"1": "x"}
    assert read_predictions(write(tmp_path / "b.json", [{"image_id": 3, "caption": "c"}])) == {"3": "c"}
    assert read_predictions(write(tmp_path / "c.json", {"q1": "yes"})) == {"q1": "yes"}
    with pytest.raises(VlmkitError, match="record 1: needs an id field"):
        read_predictions(jsonl(tmp_path / "d.jsonl", [{"foo": 1}]))


def test_scoring_only_with_unknown_ids_fails_clearly(tmp_path):
    _, a = vqav2_files(tmp_path)
    preds = jsonl(tmp_path / "p.jsonl", [{"id": "nope", "prediction": "x"}])
    with pytest.raises(VlmkitError, match="none of the 1 prediction ids"):
        score_predictions(TaskSource(annotations=a), preds, EvalConfig(task="vqav2", out_dir=tmp_path))
