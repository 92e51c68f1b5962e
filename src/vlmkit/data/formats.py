"""Data formats users already have -> `list[Sample]`: reading files, detecting the format, converting records,
resolving image paths and validating every sample before training starts.

Formats (registry `DATA_FORMATS`): `llava` (JSON list with "image" + "conversations"), `sharegpt` (LLaMA-Factory:
"conversations" + "images" + "system"), `openai` ("messages" + "images", JSON or JSONL), `swift` (ms-swift JSONL:
openai + "objects" grounding rendered as CogVLM boxes), `caption` (image-caption pairs, JSONL or CSV) and `folder`
(a directory of images whose file names are the labels, as in the CogVLM captcha demo).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..constants import IMAGE_TOKEN
from ..registry import Registry
from .sample import DataError, Sample
from .validate import MAX_LISTED, ImageChecker, LoadReport, Problem, validate_sample

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_FOLDER_PROMPT = "What is the text in the image?"
REF_PLACEHOLDER = "<ref-object>"
BOX_PLACEHOLDER = "<bbox>"
_ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_DUPLICATE_SUFFIX = re.compile(r"^(.+?)_\d+$")


@dataclass
class LoadContext:
    """What a converter needs besides the record: the data file, the image folder and the folder/caption prompt."""

    file: Path
    image_root: Path
    prompt: str | None = None


@dataclass
class Record:
    """One raw entry of a data file: its position (for messages), its id and its parsed content."""

    index: int
    where: str
    data: Any
    parse_error: str | None = None


class BadRecord(Exception):
    """A record cannot be converted to a `Sample`; the message says why."""


Converter = Callable[[dict[str, Any], str, LoadContext], Sample]
DATA_FORMATS: Registry[Converter] = Registry("data format")


# ------------------------------------------------------------------------------------------------ reading
def read_records(path: Path) -> list[Record]:
    """The raw records of a JSON list, JSONL, CSV file or image folder (folder records are {"image": name})."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        return [Record(i, p.name, {"image": p.name}) for i, p in enumerate(files)]
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if not _looks_like_jsonl(text):
                raise DataError(f"{path} is not valid JSON: {e}") from None
        else:
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON list of samples, got a {type(data).__name__}")
            return [Record(i, f"index {i}", d) for i, d in enumerate(data)]
    return _read_jsonl(text)


def _looks_like_jsonl(text: str) -> bool:
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _read_jsonl(text: str) -> list[Record]:
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        rec = Record(len(records), f"line {n}", None)
        try:
            rec.data = json.loads(line)
        except json.JSONDecodeError as e:
            rec.parse_error = f"not valid JSON ({e})"
        records.append(rec)
    return records


def _read_csv(path: Path) -> list[Record]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"image", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: a caption CSV needs the columns image,caption; missing: {', '.join(sorted(missing))}")
        return [Record(i, f"row {i + 2}", dict(row)) for i, row in enumerate(reader)]


# ---------------------------------------------------------------------------------------------- detection
def detect_format(path: str | Path) -> str:
    """The name of the format of a data file or image folder (one of `DATA_FORMATS.names()`)."""
    path = _existing(path)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() == ".csv":
        return "caption"
    return _detect_records(read_records(path), path)


def _detect_records(records: list[Record], path: Path) -> str:
    keys: set[str] = set()
    for r in records:
        if isinstance(r.data, dict):
            keys.update(r.data)
    if not keys:
        raise DataError(f"{path}: no samples to read (an empty list, or no JSON objects)")
    if "messages" in keys:
        return "swift" if "objects" in keys else "openai"
    if "conversations" in keys:
        return "sharegpt" if ("images" in keys or "system" in keys) and "image" not in keys else "llava"
    if "image" in keys and "caption" in keys:
        return "caption"
    raise DataError(
        f"{path}: cannot tell the data format from the keys {sorted(keys)}; pass --format / fmt= one of: "
        f"{', '.join(DATA_FORMATS.names())}"
    )


def _existing(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    return path


# ------------------------------------------------------------------------------------------------ loading
def load_samples(
    path: str | Path,
    image_root: str | Path | None = None,
    fmt: str | None = None,
    skip_bad: bool = False,
    prompt: str | None = None,
) -> tuple[list[Sample], LoadReport]:
    """Read, convert and validate every sample of `path` (a data file or an image folder).

    Image paths resolve against `image_root` (default: the data file's folder). With `skip_bad=False` any problem
    raises `DataError` listing the first ones and the total; with `skip_bad=True` bad samples are dropped and
    counted in the report. `prompt` is the user turn of `folder` samples (and of `caption` samples, after the image).
    """
    samples, report = scan_samples(path, image_root, fmt, prompt)
    if report.problems and not skip_bad:
        raise DataError(
            f"{report.describe(MAX_LISTED)}\n{report.skipped} of {report.loaded + report.skipped} samples have "
            "problems: fix them, or pass --skip-bad (skip_bad=True) to drop the bad samples"
        )
    if not samples:
        raise DataError(f"{report.describe(MAX_LISTED)}\nno usable samples in {report.path}")
    return samples, report


def scan_samples(
    path: str | Path, image_root: str | Path | None = None, fmt: str | None = None, prompt: str | None = None
) -> tuple[list[Sample], LoadReport]:
    """Like `load_samples` but never raises for bad samples: the good ones and a report of the bad ones."""
    if fmt is not None:
        DATA_FORMATS.get(fmt)  # an unknown name raises with the known ones
    path = _existing(path)
    records = read_records(path)
    name = fmt or ("folder" if path.is_dir() else _detect_records(records, path))
    if (name == "folder") != path.is_dir():
        raise DataError(f"{path}: the 'folder' format reads a directory of images, the others a data file")
    convert = DATA_FORMATS.get(name)
    ctx = LoadContext(path, _image_root(path, image_root), prompt)
    report = LoadReport(path, name)
    checker = ImageChecker()
    samples = []
    for rec in records:
        sample, problems = _load_record(rec, convert, ctx, checker)
        if problems:
            report.skipped += 1
            report.problems += problems
        else:
            samples.append(sample)
    report.loaded = len(samples)
    return samples, report


def _image_root(path: Path, image_root: str | Path | None) -> Path:
    if image_root is None:
        return path if path.is_dir() else path.parent
    root = Path(image_root).expanduser()
    if not root.is_dir():
        raise DataError(f"image root is not a folder: {root}")
    return root


def _load_record(
    rec: Record, convert: Converter, ctx: LoadContext, checker: ImageChecker
) -> tuple[Sample | None, list[Problem]]:
    sample_id = str(rec.data["id"]) if isinstance(rec.data, dict) and "id" in rec.data else None
    if rec.parse_error is not None:
        return None, [Problem(ctx.file, rec.where, rec.parse_error)]
    if not isinstance(rec.data, dict):
        return None, [Problem(ctx.file, rec.where, f"a sample must be a JSON object, got {type(rec.data).__name__}")]
    try:
        sample = convert(rec.data, sample_id if sample_id is not None else str(rec.index), ctx)
    except BadRecord as e:
        return None, [Problem(ctx.file, rec.where, str(e), sample_id)]
    found = validate_sample(sample, checker)
    return sample, [Problem(ctx.file, rec.where, msg, sample_id) for msg in found]


# --------------------------------------------------------------------------------------------- converters
def _resolve(image: Any, ctx: LoadContext) -> Path:
    if not isinstance(image, str) or not image.strip():
        raise BadRecord(f"image path {image!r} must be a non-empty string")
    p = Path(image).expanduser()
    return p if p.is_absolute() else ctx.image_root / p


def _image_list(value: Any, ctx: LoadContext) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, str):
        return [_resolve(value, ctx)]
    if isinstance(value, list):
        return [_resolve(v, ctx) for v in value]
    raise BadRecord(f"images must be a path or a list of paths, got {type(value).__name__}")


def _extras(data: dict[str, Any], known: set[str]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in known}


def _turns_from_conversations(conv: Any) -> list[dict[str, Any]]:
    if not isinstance(conv, list):
        raise BadRecord("'conversations' must be a list of {\"from\", \"value\"} turns")
    turns = []
    for i, t in enumerate(conv):
        if not isinstance(t, dict) or "from" not in t:
            raise BadRecord(f"turn {i} must be an object with 'from' and 'value'")
        turns.append({"role": _ROLE_MAP.get(t["from"], t["from"]), "content": t.get("value")})
    return turns


def _content_text(content: Any) -> Any:
    """OpenAI content parts -> text with one `<image>` per image part; strings pass through."""
    if not isinstance(content, list):
        return content
    out = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            out.append(str(part.get("text", "")))
        elif kind in ("image", "image_url"):
            out.append(IMAGE_TOKEN)
    return "".join(out)


def _turns_from_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise BadRecord("'messages' must be a list of {\"role\", \"content\"} messages")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise BadRecord(f"message {i} must be an object with 'role' and 'content'")
        turns.append({"role": m["role"], "content": _content_text(m.get("content"))})
    return turns


@DATA_FORMATS.register("llava")
def convert_llava(data: dict[str, Any], sample_id: str, ctx: LoadContext) -> Sample:
    messages = _turns_from_conversations(data.get("conversations"))
    images = _image_list(data.get("image"), ctx)
    return Sample(sample_id, messages, images, _extras(data, {"id", "image", "conversations"}), ctx.file)


@DATA_FORMATS.register("sharegpt")
def convert_sharegpt(data: dict[str, Any], sample_id: str, ctx: LoadContext) -> Sample:
    messages = _turns_from_conversations(data.get("conversations"))
    if data.get("system"):
        messages.insert(0, {"role": "system", "content": data["system"]})
    images = _image_list(data.get("images"), ctx)
    meta = _extras(data, {"id", "images", "conversations", "system"})
    return Sample(sample_id, messages, images, meta, ctx.file)


@DATA_FORMATS.register("openai")
def convert_openai(data: dict[str, Any], sample_id: str, ctx: LoadContext) -> Sample:
    messages = _turns_from_messages(data.get("messages"))
    images = _image_list(data.get("images"), ctx)
    return Sample(sample_id, messages, images, _extras(data, {"id", "images", "messages"}), ctx.file)


@DATA_FORMATS.register("swift")
def convert_swift(data: dict[str, Any], sample_id: str, ctx: LoadContext) -> Sample:
    sample = convert_openai(data, sample_id, ctx)
    objects = sample.meta.get("objects")
    if objects:
        render_objects(sample.messages, objects, sample.images)
    return sample


@DATA_FORMATS.register("caption")
def convert_caption(data: dict[str, Any], sample_id: str, ctx: LoadContext) -> Sample:
    user = IMAGE_TOKEN if not ctx.prompt else f"{IMAGE_TOKEN}\n{ctx.prompt}"
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": data.get("caption")}]
    images = [_resolve(data.get("image"), ctx)]
    return Sample(sample_id, messages, images, _extras(data, {"id", "image", "caption"}), ctx.file)


@DATA_FORMATS.register("folder")
def convert_folder(data: dict[str, Any], sample_id: str, ctx: LoadContext) -> Sample:
    path = _resolve(data.get("image"), ctx)
    label = label_from_filename(path.name)
    user = f"{IMAGE_TOKEN}\n{ctx.prompt or DEFAULT_FOLDER_PROMPT}"
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": label}]
    return Sample(path.stem, messages, [path], {"label": label}, path)


def label_from_filename(name: str) -> str:
    """The label of a folder-format image: its stem without a `_<n>` duplicate suffix ("AB12_3.png" -> "AB12")."""
    stem = Path(name).stem
    m = _DUPLICATE_SUFFIX.match(stem)
    return m.group(1) if m else stem


# -------------------------------------------------------------------------------------------------- boxes
def to_cogvlm_box(
    box: list[float] | tuple[float, ...], image_size: tuple[int, int] | None = None, bbox_type: str = "real"
) -> str:
    """One box as CogVLM text `[[x0,y0,x1,y1]]` on the 000-999 scale.

    `bbox_type`: "real" (pixels; needs `image_size` = (width, height)), "norm1" (0-1) or "norm1000" (0-1000).
    """
    if len(box) != 4:
        raise BadRecord(f"a box needs 4 numbers [x1, y1, x2, y2], got {box!r}")
    if bbox_type == "real":
        if image_size is None:
            raise BadRecord("a pixel box needs the image size")
        w, h = image_size
        rel = [box[0] / w, box[1] / h, box[2] / w, box[3] / h]
    elif bbox_type == "norm1":
        rel = [float(v) for v in box]
    elif bbox_type == "norm1000":
        rel = [float(v) / 1000 for v in box]
    else:
        raise BadRecord(f"bbox_type '{bbox_type}'; allowed: real, norm1, norm1000")
    coords = [min(999, max(0, int(v * 1000 + 0.5))) for v in rel]
    return "[[" + ",".join(f"{c:03d}" for c in coords) + "]]"


def render_objects(messages: list[dict[str, Any]], objects: Any, images: list[Any]) -> None:
    """Fill ms-swift `<ref-object>` / `<bbox>` placeholders in order with the refs and CogVLM boxes (in place)."""
    if not isinstance(objects, dict):
        raise BadRecord("'objects' must be an object with 'ref', 'bbox' and 'bbox_type'")
    refs = [str(r) for r in objects.get("ref") or []]
    bboxes = objects.get("bbox") or []
    bbox_type = objects.get("bbox_type", "real")
    image_ids = objects.get("image_id") or [0] * len(bboxes)
    if not isinstance(bboxes, list) or len(image_ids) != len(bboxes):
        raise BadRecord("'objects.bbox' must be a list of [x1, y1, x2, y2] (and 'image_id' one per box)")
    boxes = [to_cogvlm_box(b, _box_image_size(images, i) if bbox_type == "real" else None, bbox_type)
             for b, i in zip(bboxes, image_ids)]
    _fill(messages, REF_PLACEHOLDER, refs)
    _fill(messages, BOX_PLACEHOLDER, boxes)


def _box_image_size(images: list[Any], image_id: Any) -> tuple[int, int]:
    if not isinstance(image_id, int) or not 0 <= image_id < len(images):
        raise BadRecord(f"box image_id {image_id!r} but the sample has {len(images)} images")
    image = images[image_id]
    if isinstance(image, Image.Image):
        return image.size
    try:
        with Image.open(image) as im:
            return im.size
    except OSError as e:
        raise BadRecord(f"cannot read the size of {image} to convert pixel boxes ({e})") from None


def _fill(messages: list[dict[str, Any]], placeholder: str, values: list[str]) -> None:
    texts = [m["content"] if isinstance(m["content"], str) else "" for m in messages]
    found = sum(t.count(placeholder) for t in texts)
    if found == 0:
        return
    if found != len(values):
        raise BadRecord(f"the text has {found} '{placeholder}' placeholders but objects give {len(values)}")
    it: Iterator[str] = iter(values)
    for m, t in zip(messages, texts):
        if placeholder in t:
            m["content"] = re.sub(re.escape(placeholder), lambda _m: next(it), t)
