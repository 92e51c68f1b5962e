"""Writing generated samples to disk: LLaVA layout (`images/<id>.png` + `data.json`) or, for captcha, the CogVLM
demo layout (a folder of `<label>.png` files). Output appears atomically: built in a temp dir, then renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..sample import DataError, Sample

LAYOUTS = ("llava", "folder")
DATA_FILE = "data.json"
_FROM = {"user": "human", "assistant": "gpt", "system": "system"}
_RESERVED = {"id", "image", "conversations"}


@contextmanager
def atomic_output(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder next to `target`; on success it becomes `target` (replacing it if `overwrite`)."""
    target = Path(target)
    occupied = (target.is_dir() and any(target.iterdir())) or target.is_file()
    if occupied and not overwrite:
        raise DataError(f"{target} already exists and is not empty; choose another folder or overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    try:
        yield tmp
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def llava_record(sample: Sample, image_names: list[str]) -> dict[str, Any]:
    """A sample as a LLaVA JSON record; its meta keys become extra keys (read back into meta by `load_samples`)."""
    clash = _RESERVED & set(sample.meta)
    if clash:
        raise DataError(f"sample {sample.id}: meta keys {sorted(clash)} clash with LLaVA keys")
    record: dict[str, Any] = {"id": sample.id}
    if image_names:
        record["image"] = image_names[0] if len(image_names) == 1 else image_names
    record["conversations"] = [{"from": _FROM[m["role"]], "value": m["content"]} for m in sample.messages]
    record.update(sample.meta)
    return record


def write_llava(samples: list[Sample], directory: Path) -> Path:
    """Write `images/<id>[_k].png` and `data.json` for `samples` (images must be PIL images) into `directory`."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for s in samples:
        names = [f"images/{s.id}.png" if len(s.images) == 1 else f"images/{s.id}_{k}.png"
                 for k in range(len(s.images))]
        for image, name in zip(s.images, names):
            image.save(directory / name)
        records.append(llava_record(s, names))
    path = directory / DATA_FILE
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_folder(samples: list[Sample], directory: Path) -> Path:
    """Write each single-image sample as `<answer>.png` (`<answer>_<n>.png` for repeats): the folder format."""
    directory.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    for s in samples:
        label = s.answer() or ""
        if len(s.images) != 1 or not label or any(c in label for c in "/\\_.") or label != label.strip():
            raise ConfigError(f"sample {s.id}: the folder layout needs one image and a file-name-safe answer")
        n = seen.get(label, 0)
        seen[label] = n + 1
        s.images[0].save(directory / (f"{label}.png" if n == 0 else f"{label}_{n}.png"))
    return directory


def write_dataset(
    kind: str, n: int, out_dir: str | Path, seed: int = 0, layout: str = "llava", overwrite: bool = False,
    **options: Any,
) -> Path:
    """Generate `n` samples of `kind` and write them to `out_dir` atomically; returns the file or folder to load.

    layout "llava": `out_dir/images/<id>.png` + `out_dir/data.json` (answers, boxes and task kept as extra keys);
    layout "folder" (captcha): `out_dir/<label>.png`, readable by the `folder` data format.
    """
    from . import generate

    if layout not in LAYOUTS:
        raise ConfigError(f"layout '{layout}'; allowed: {', '.join(LAYOUTS)}")
    if layout == "folder" and kind != "captcha":
        raise ConfigError(f"layout 'folder' is for captcha data (labels as file names), not '{kind}'")
    samples = generate(kind, n, seed, **options)
    out_dir = Path(out_dir)
    with atomic_output(out_dir, overwrite) as tmp:
        if layout == "folder":
            write_folder(samples, tmp)
        else:
            write_llava(samples, tmp)
    return out_dir if layout == "folder" else out_dir / DATA_FILE
