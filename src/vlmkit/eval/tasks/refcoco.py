"""RefCOCO / RefCOCO+ / RefCOCOg referring-expression grounding in the official (refer) format or a JSON conversion.

This module owns:
- reading `--data DIR` holding `refs(unc).p` / `refs(umd).p` / `refs(google).p` (a Python 2 pickle, read
  with an unpickler that refuses every class or function, so no code runs; a `refs(*).json` with the same
  content works too) and `instances.json` (boxes, image sizes and file names), for `--split val|testA|...`:
  one item per referring sentence, ground truth = the annotation's box (COCO x, y, w, h -> corners); images
  from `--images`, else `DIR/images`, `DIR/train2014` or refer's `../images/mscoco/images/train2014`;
- reading common conversions via `--questions FILE`: Qwen-VL's JSONL ({image, sent, bbox: [x0, y0, x1, y1],
  width, height}) and MiniGPT-v2's JSON list ({img_id, sents, bbox: [x, y, w, h], width, height});
- the report: Acc@0.5 (percent), mean IoU and how many answers held no box (see `metrics.grounding`).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...data.sample import DataError
from ...errors import VlmkitError
from ..metrics.grounding import accuracy_at, iou, parse_box, xywh_to_xyxy
from .base import EvalItem, Scores, TaskSource, as_list, get, image_path, read_json, read_jsonl, require

REFS_PREFERENCE = {"refcoco": ("unc",), "refcoco+": ("unc",), "refcocog": ("umd", "google")}


class _DataOnlyUnpickler(pickle.Unpickler):
    """Reads dicts, lists, strings and numbers; any reference to a class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refers to {module}.{name}")


def load_refs_pickle(path: Path) -> Any:
    """The refs list of a `refs(*).p` file, without executing anything it contains."""
    try:
        data = path.read_bytes()
        return _DataOnlyUnpickler(io.BytesIO(data), encoding="utf-8", errors="replace").load()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a plain-data refs pickle ({e}); nothing in it was executed") from None


def _refs_file(root: Path, task: str) -> Path:
    found = sorted(root.glob("refs(*).p")) + sorted(root.glob("refs(*).json"))
    if not found:
        raise DataError(f"{root}: no refs(<split_by>).p or refs(<split_by>).json (the refer annotations)")
    for split_by in REFS_PREFERENCE.get(task, ()):
        for f in found:
            if f.name.startswith(f"refs({split_by})"):
                return f
    return found[0]


def _read_refs(path: Path) -> list[Any]:
    refs = load_refs_pickle(path) if path.suffix == ".p" else read_json(path)
    return as_list(refs, path, "the refs")


def _instances(path: Path) -> tuple[dict[Any, dict[str, Any]], dict[Any, dict[str, Any]]]:
    data = read_json(path)
    anns = {get(a, "id", path, f"annotation {i}"): a
            for i, a in enumerate(as_list(get(data, "annotations", path, "the file"), path, "'annotations'"))}
    imgs = {get(im, "id", path, f"image {i}"): im
            for i, im in enumerate(as_list(get(data, "images", path, "the file"), path, "'images'"))}
    return anns, imgs


def load_refer(task: str, src: TaskSource) -> list[EvalItem]:
    if src.questions is not None:
        return load_converted(require(src.questions, "--questions", task, "a grounding JSON/JSONL"), src.images)
    root = require(src.data, "--data", task, "the refer folder with refs(*).p and instances.json")
    if not src.split:
        raise VlmkitError(f"task '{task}' needs --split (val, testA, testB for refcoco/refcoco+; val, test for refcocog)")
    refs_path = _refs_file(root, task)
    anns, imgs = _instances(require(root / "instances.json", "--data", task, "instances.json"))
    images = src.images or _default_images(root)
    items = []
    for i, ref in enumerate(_read_refs(refs_path)):
        where = f"ref {i}"
        if get(ref, "split", refs_path, where) != src.split:
            continue
        ann = anns.get(get(ref, "ann_id", refs_path, where))
        img = imgs.get(get(ref, "image_id", refs_path, where))
        if ann is None or img is None:
            raise DataError(f"{refs_path}: {where} points at annotation {ref['ann_id']} / image {ref['image_id']}, "
                            f"which {root / 'instances.json'} does not have")
        box = xywh_to_xyxy(get(ann, "bbox", root / "instances.json", f"annotation {ref['ann_id']}", list))
        size = (int(img["width"]), int(img["height"]))
        path = image_path(images, get(img, "file_name", root / "instances.json", f"image {img['id']}", str))
        for j, sent in enumerate(get(ref, "sentences", refs_path, where, list)):
            text = get(sent, "sent", refs_path, f"{where}, sentence {j}", str)
            items.append(EvalItem(f"{ref.get('ref_id', i)}:{sent.get('sent_id', j)}", text, [path] if path else [],
                                  box, {"image_size": list(size), "ref_id": ref.get("ref_id", i)}))
    if not items:
        raise DataError(f"{refs_path}: no refs in split '{src.split}'")
    return items


def _default_images(root: Path) -> Path | None:
    """Without --images: `DIR/images`, `DIR/train2014`, or refer's `data/images/mscoco/images/train2014`."""
    for cand in (root / "images", root / "train2014", root.parent / "images" / "mscoco" / "images" / "train2014"):
        if cand.is_dir():
            return cand
    return None


def load_converted(path: Path, images: Path | None) -> list[EvalItem]:
    """Qwen-VL JSONL or MiniGPT-v2 JSON grounding records."""
    items = []
    for i, rec in enumerate(read_jsonl(path)):
        where = f"record {i + 1}"
        size = [int(get(rec, "width", path, where)), int(get(rec, "height", path, where))]
        bbox = get(rec, "bbox", path, where, list)
        if "img_id" in rec:  # MiniGPT-v2: COCO_train2014_<id>_<ann>, box x, y, w, h
            name = str(rec["img_id"]).rsplit("_", 1)[0] + ".jpg"
            text, box = get(rec, "sents", path, where, str), xywh_to_xyxy(bbox)
        else:  # Qwen-VL: image path, box x0, y0, x1, y1
            name, text, box = get(rec, "image", path, where, str), get(rec, "sent", path, where, str), tuple(bbox)
        img = image_path(images, name) if images else Path(name)
        items.append(EvalItem(str(rec.get("id", i)), text, [img], tuple(float(v) for v in box),
                              {"image_size": size}))
    return items


def score_grounding(items: Sequence[EvalItem], preds: Mapping[str, str]) -> Scores:
    ious, unparsed = [], 0
    for it in items:
        width, height = it.meta["image_size"]
        box = parse_box(preds[it.id], width, height)
        unparsed += box is None
        ious.append(iou(box, it.target) if box is not None else 0.0)
    return Scores("acc@0.5", {"acc@0.5": 100 * accuracy_at(ious, 0.5), "mean_iou": sum(ious) / len(ious),
                              "no_box": unparsed})
