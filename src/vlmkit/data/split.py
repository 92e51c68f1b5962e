"""Reproducible train / valid / test splits of a data file (JSON, JSONL, CSV) or of an image folder.

A data file gives `train.<ext>`, `valid.<ext>`, `test.<ext>` in the same format (relative image paths rewritten
when written to another folder); an image folder gives `train/`, `valid/`, `test/` with hard links (copies where
links are not possible). The shuffle depends only on the seed.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .formats import IMAGE_EXTENSIONS, read_records
from .sample import DataError
from .synthetic.writer import atomic_output

SPLITS = ("train", "valid", "test")
DEFAULT_RATIOS = (0.8, 0.05, 0.15)


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative numbers summing to 1 (train, valid, test), else `ConfigError`."""
    values = tuple(float(r) for r in ratios)
    if len(values) != 3 or any(r < 0 for r in values) or abs(sum(values) - 1) > 1e-6:
        raise ConfigError(
            f"split ratios {list(values)} must be three non-negative numbers (train valid test) summing to 1, "
            "e.g. 0.8 0.05 0.15"
        )
    return values  # type: ignore[return-value]


def split_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """How many of `n` items go to each split (cumulative rounding, so the counts always sum to `n`)."""
    bounds, total = [0], 0.0
    for r in ratios:
        total += r
        bounds.append(round(n * total))
    bounds[-1] = n
    return [b - a for a, b in zip(bounds, bounds[1:])]


def split_indices(n: int, ratios: Sequence[float], seed: int) -> dict[str, list[int]]:
    """Shuffled item indices per split; the same (n, ratios, seed) always gives the same split."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out, start = {}, 0
    for name, count in zip(SPLITS, split_counts(n, ratios)):
        out[name] = sorted(order[start:start + count])
        start += count
    return out


def split_dataset(
    src: str | Path,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Split a data file or image folder into train/valid/test; returns the path written for each split.

    Outputs go next to the data file (inside the image folder) unless `out` is given; existing outputs are only
    replaced with `overwrite=True`.
    """
    ratios = check_ratios(ratios)
    src = Path(src).expanduser()
    if not src.exists():
        raise DataError(f"nothing to split: {src} does not exist")
    if src.is_dir():
        return _split_folder(src, ratios, seed, Path(out) if out else src, overwrite)
    return _split_file(src, ratios, seed, Path(out) if out else src.parent, overwrite)


# --------------------------------------------------------------------------------------------- data files
def _split_file(src: Path, ratios: Sequence[float], seed: int, out: Path, overwrite: bool) -> dict[str, Path]:
    records = read_records(src)
    bad = [r.where for r in records if r.parse_error]
    if bad:
        raise DataError(f"{src}: {len(bad)} records are not valid JSON (first: {bad[0]}); fix them before splitting")
    suffix = src.suffix.lower() if src.suffix.lower() in (".jsonl", ".csv") else ".json"
    targets = {name: out / f"{name}{suffix}" for name in SPLITS}
    _check_targets(src, list(targets.values()), overwrite)
    out.mkdir(parents=True, exist_ok=True)
    data = [_rebase(r.data, src.parent, out) for r in records]
    for name, idx in split_indices(len(data), ratios, seed).items():
        _write_records(targets[name], [data[i] for i in idx], suffix)
    return targets


def _check_targets(src: Path, targets: list[Path], overwrite: bool) -> None:
    for t in targets:
        if t.resolve() == src.resolve():
            raise DataError(f"splitting {src} would overwrite it; pass another output folder (--out)")
        if t.exists() and not overwrite:
            raise DataError(f"{t} already exists; delete it, choose another --out, or pass --overwrite")


def _rebase(record: Any, old: Path, new: Path) -> Any:
    """Rewrite relative image paths so that they stay valid from the folder the split is written to."""
    if not isinstance(record, dict) or old.resolve() == new.resolve():
        return record
    record = dict(record)
    for key in ("image", "images"):
        value = record.get(key)
        if isinstance(value, str):
            record[key] = _rebase_path(value, old, new)
        elif isinstance(value, list):
            record[key] = [_rebase_path(v, old, new) if isinstance(v, str) else v for v in value]
    return record


def _rebase_path(path: str, old: Path, new: Path) -> str:
    if not path or Path(path).is_absolute():
        return path
    return Path(os.path.relpath(old.resolve() / path, new.resolve())).as_posix()


def _write_records(path: Path, records: list[Any], suffix: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        if suffix == ".csv":
            columns = list(dict.fromkeys(k for r in records for k in r)) or ["image", "caption"]
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)
        elif suffix == ".jsonl":
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        else:
            f.write(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ image folders
def _split_folder(src: Path, ratios: Sequence[float], seed: int, out: Path, overwrite: bool) -> dict[str, Path]:
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{src}: no image files ({', '.join(IMAGE_EXTENSIONS)}) to split")
    targets = {name: out / name for name in SPLITS}
    for t in targets.values():
        if t.exists() and not overwrite:
            raise DataError(f"{t} already exists; delete it, choose another --out, or pass --overwrite")
    for name, idx in split_indices(len(files), ratios, seed).items():
        with atomic_output(targets[name], overwrite=True) as tmp:
            for i in idx:
                _link_or_copy(files[i], tmp / files[i].name)
    return targets


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
