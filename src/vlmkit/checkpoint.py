"""Model directories on disk: atomic writes, sharded safetensors weights, strict loading with clear errors.

Layout (compatible in spirit with Hugging Face): `config.json` (the whole VLMConfig), `model.safetensors` or
`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`, and the processor's files. No pickle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import CheckpointError

if TYPE_CHECKING:
    from .models.vlm import VLMModel

CONFIG_NAME = "config.json"
BASE_REF_NAME = "base_model.json"
"""In an adapter-only training checkpoint: where its base model is ({"path": ..., "overrides": [...]})."""
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


# --------------------------------------------------------------------------------------------- atomic I/O
@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success its files replace those in `target`.

    A new target appears by one rename. An existing target gets each file by `os.replace`, so a reader sees
    either the old or the new version of every file, never a half-written one. On error nothing changes.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _normal_permissions(tmp)
        if not target.exists():
            os.replace(tmp, target)
            return
        for item in sorted(tmp.rglob("*")):
            dest = target / item.relative_to(tmp)
            if item.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            else:
                os.replace(item, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _normal_permissions(root: Path) -> None:
    """mkdtemp makes 0700 directories (and some writers 0600 files); give them the umask's usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def write_json(path: Path, data: Any) -> None:
    """Write JSON to `path` atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def parse_size(size: int | str) -> int:
    """'5GB' / '500MB' / '10KB' / int bytes -> bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?i?B)\s*", size, re.IGNORECASE)
    if not m:
        raise CheckpointError(f"max_shard_size={size!r}: expected bytes or e.g. '5GB', '500MB'")
    unit = m.group(2).upper().replace("I", "")
    return int(float(m.group(1)) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[unit])


# ------------------------------------------------------------------------------------------------ weights
def unique_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied tensors (same storage) kept once, contiguous, ready for safetensors."""
    seen: set[tuple[int, tuple[int, ...], tuple[int, ...]]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in module.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous()
    return out


def tied_names(module: torch.nn.Module) -> set[str]:
    """Names in the state dict that alias an earlier tensor (tied weights) and are not stored on disk."""
    sd = module.state_dict()
    return set(sd) - set(unique_state_dict(module))


def save_weights(state: dict[str, torch.Tensor], directory: Path, max_shard_size: int | str = "5GB") -> set[str]:
    """Write `state` as one safetensors file, or shards plus an index past `max_shard_size`; returns names."""
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(directory / WEIGHTS_NAME), metadata=meta)
        return {WEIGHTS_NAME}
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / fname), metadata=meta)
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * t.element_size() for t in state.values())
    write_json(directory / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return {INDEX_NAME, *weight_map.values()}


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file missing: {path} (the model directory is incomplete; save it again)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"weights file is corrupt or not safetensors: {path} ({e})") from None


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model directory (single file or sharded), with errors naming the bad file."""
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        state: dict[str, torch.Tensor] = {}
        for fname in sorted(set(weight_map.values())):
            state.update(_load_file(directory / fname))
        return state
    if not (directory / WEIGHTS_NAME).exists():
        raise CheckpointError(
            f"no weights in {directory}: expected {WEIGHTS_NAME} or {INDEX_NAME} (was the model saved?)"
        )
    return _load_file(directory / WEIGHTS_NAME)


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load `state` strictly: every parameter present (tied aliases excepted), nothing unexpected."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state) - tied_names(module))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(
            f"weights in {source} do not match the model built from its config.json: {'; '.join(parts)}"
        )
    for name, t in state.items():
        if tuple(own[name].shape) != tuple(t.shape):
            raise CheckpointError(
                f"weights in {source}: '{name}' has shape {tuple(t.shape)}, the config expects "
                f"{tuple(own[name].shape)}"
            )
    module.load_state_dict(state, strict=False)


# ------------------------------------------------------------------------------------------ model dirs
def save_model_dir(model: VLMModel, directory: Path, max_shard_size: int | str = "5GB") -> Path:
    state = unique_state_dict(model)
    with atomic_directory(directory) as tmp:
        written = save_weights(state, tmp, max_shard_size)
        data = {"vlmkit_version": __version__, **model.resolved_config().to_dict()}
        write_json(tmp / CONFIG_NAME, data)
    remove_stale_weights(directory, keep=written)
    return directory


def remove_stale_weights(directory: Path, keep: set[str]) -> None:
    """After overwriting a directory, drop weight files of the previous save that the new one does not use."""
    for f in directory.iterdir():
        is_weight = f.name in (WEIGHTS_NAME, INDEX_NAME) or _SHARD_RE.match(f.name)
        if is_weight and f.name not in keep:
            f.unlink()


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise CheckpointError(f"model directory not found: {directory}")
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a vlmkit model directory: {CONFIG_NAME} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
