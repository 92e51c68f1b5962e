"""Checkpoints of a training run and exact resume, without pickle.

Layout of `runs/x/checkpoint-<step>/`:

    <model files>                 a loadable model directory (`vlmkit.save`); PEFT runs: `adapters/<name>/`
                                  (`peft.save_adapter`) + the processor files
    training_state/
        trainer_state.json        step, data position, best metric, Python/NumPy RNG per rank, run facts
        optimizer.json + .safetensors   optimizer state: structure in JSON, tensors in safetensors
        scheduler.json            LR scheduler state (same JSON + safetensors split)
        rng.safetensors           torch (and CUDA) RNG state per rank
        trainable.safetensors     PEFT runs only: every trainable parameter (adapters + fully trained parts)

A checkpoint directory appears by one rename, so it either exists complete or not at all; `checkpoint-best`
is a symlink (a copy where symlinks are unavailable) to the checkpoint with the best validation metric.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint import write_json
from ..errors import CheckpointError, VlmkitError
from .distributed import DistInfo, barrier
from .metrics import PLOT_FILE

STATE_DIR = "training_state"
TRAINER_STATE = "trainer_state.json"
BEST_LINK = "checkpoint-best"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


# ---------------------------------------------------------------------------------- tensors <-> JSON
def split_tensors(tree: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """A JSON-ready copy of `tree` with tensors moved into `tensors` (replaced by {"__tensor__": key})."""
    if isinstance(tree, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = tree.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(tree, dict):
        if tree and all(isinstance(k, int) for k in tree):
            return {"__int_keys__": {str(k): split_tensors(v, tensors, prefix) for k, v in tree.items()}}
        return {str(k): split_tensors(v, tensors, prefix) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [split_tensors(v, tensors, prefix) for v in tree]
    return tree


def join_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `split_tensors`."""
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        if set(tree) == {"__int_keys__"}:
            return {int(k): join_tensors(v, tensors) for k, v in tree["__int_keys__"].items()}
        return {k: join_tensors(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tensors(v, tensors) for v in tree]
    return tree


def save_tree(directory: Path, name: str, tree: Any) -> None:
    """Write `name.json` (+ `name.safetensors` when the tree holds tensors)."""
    tensors: dict[str, torch.Tensor] = {}
    data = split_tensors(tree, tensors)
    if tensors:
        save_file(tensors, str(directory / f"{name}.safetensors"))
    write_json(directory / f"{name}.json", data)


def load_tree(directory: Path, name: str) -> Any:
    path = directory / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable training state ({e})") from None
    tfile = directory / f"{name}.safetensors"
    tensors = load_file(str(tfile)) if tfile.is_file() else {}
    return join_tensors(data, tensors)


# ----------------------------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """This process's RNG states (torch, CUDA, Python, NumPy) as JSON data + tensors."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt), gauss],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------- checkpoints
def checkpoint_step(path: Path) -> int | None:
    m = _CKPT_RE.match(path.name)
    return int(m.group(1)) if m and not path.is_symlink() else None


def is_complete(path: Path) -> bool:
    return (path / STATE_DIR / TRAINER_STATE).is_file()


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete `checkpoint-<step>` directories of a run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in run_dir.iterdir() if p.is_dir()]
    return sorted((s, p) for s, p in found if s is not None and is_complete(p))


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def remove_stale_temps(run_dir: Path) -> None:
    """Drop half-written checkpoint directories a crash left behind."""
    if run_dir.is_dir():
        for p in run_dir.glob(".checkpoint-*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


@contextmanager
def _new_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `target` as a whole on success (nothing changes on error)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a checkpoint gets the usual permissions
    try:
        yield tmp
        if target.exists():
            trash = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, trash)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def trained_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Persistent buffers of the modules that own a trainable parameter: the running statistics of a fully
    trained CNN tower's batch norms, which training updates beside its weights (and evaluation reads)."""
    out: dict[str, torch.Tensor] = {}
    for mname, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        saved = module.state_dict(keep_vars=True)  # holds the persistent buffers only
        for bname, b in module.named_buffers(recurse=False):
            if bname in saved:
                out[f"{mname}.{bname}" if mname else bname] = b
    return out


def named_tensors(model: nn.Module, remove_duplicate: bool = True) -> dict[str, torch.Tensor]:
    """Every buffer and parameter by name: what adapter extras and PEFT resume states are loaded into."""
    return {**dict(model.named_buffers()), **dict(model.named_parameters(remove_duplicate=remove_duplicate))}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A PEFT run's trainable parameters and the buffers trained with them (batch-norm statistics)."""
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    return {**{n: b.detach().cpu().contiguous() for n, b in trained_buffers(model).items()}, **state}


def write_checkpoint(
    run_dir: Path,
    step: int,
    write_model: Callable[[Path], Any],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    rng_per_rank: list[dict[str, Any]],
    trainable: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `checkpoint-<step>` atomically: the model via `write_model(dir)`, then the training state."""
    target = run_dir / f"checkpoint-{step}"
    with _new_directory(target) as tmp:
        write_model(tmp)
        sdir = tmp / STATE_DIR
        sdir.mkdir()
        save_tree(sdir, "optimizer", optimizer.state_dict())
        save_tree(sdir, "scheduler", scheduler.state_dict())
        tensors: dict[str, torch.Tensor] = {}
        rng = [split_tensors(r, tensors, prefix=f"rank{i}") for i, r in enumerate(rng_per_rank)]
        save_file(tensors, str(sdir / "rng.safetensors"))
        if trainable is not None:
            save_file(trainable, str(sdir / "trainable.safetensors"))
        write_json(sdir / TRAINER_STATE, {**trainer_state, "step": step, "rng": rng})
    return target


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint with RNG tensors joined back in."""
    sdir = ckpt / STATE_DIR
    state = json.loads((sdir / TRAINER_STATE).read_text(encoding="utf-8"))
    tensors = load_file(str(sdir / "rng.safetensors"))
    state["rng"] = [join_tensors(r, tensors) for r in state["rng"]]
    return state


def load_optimizer_state(ckpt: Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    sdir = ckpt / STATE_DIR
    optimizer.load_state_dict(load_tree(sdir, "optimizer"))
    scheduler.load_state_dict(load_tree(sdir, "scheduler"))


def load_trainable(ckpt: Path, model: nn.Module) -> None:
    """Copy a PEFT checkpoint's trainable parameters into `model` (names must match exactly)."""
    state = load_file(str(ckpt / STATE_DIR / "trainable.safetensors"))
    tensors = named_tensors(model)
    missing = sorted(set(state) - set(tensors))
    if missing:
        raise CheckpointError(f"{ckpt}: trainable parameters not in this model (e.g. {missing[0]}); resume "
                              "with the same model and peft settings")
    with torch.no_grad():
        for name, t in state.items():
            tensors[name].copy_(t)


def prune_checkpoints(run_dir: Path, keep_last: int, best_step: int | None) -> None:
    """Delete all but the newest `keep_last` checkpoints and the best one (keep_last < 1 keeps all)."""
    if keep_last < 1:
        return
    ckpts = list_checkpoints(run_dir)
    keep = {s for s, _ in ckpts[-keep_last:]} | ({best_step} if best_step is not None else set())
    for step, path in ckpts:
        if step not in keep:
            shutil.rmtree(path)


def link_best(run_dir: Path, step: int) -> Path:
    """Point `checkpoint-best` at `checkpoint-<step>` (a relative symlink, replaced atomically)."""
    link = run_dir / BEST_LINK
    tmp = run_dir / f".{BEST_LINK}.tmp-{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(f"checkpoint-{step}", target_is_directory=True)
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        os.replace(tmp, link)
    except OSError:  # no symlinks here: keep a copy instead
        tmp.unlink(missing_ok=True)
        with _new_directory(link) as copy_tmp:
            shutil.copytree(run_dir / f"checkpoint-{step}", copy_tmp, dirs_exist_ok=True)
    return link


# ----------------------------------------------------------------------------------------------- run dir
PREVIOUS_RUN = ("metrics.jsonl", "final")
RUN_OUTPUTS = (*PREVIOUS_RUN, PLOT_FILE, BEST_LINK)


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, info: DistInfo) -> None:
    """Refuse to mix a fresh run into an old one (unless resuming or overwriting); clear it on overwrite."""
    old = list(run_dir.glob("checkpoint-*")) + [run_dir / f for f in PREVIOUS_RUN if (run_dir / f).exists()]
    if resume or not old:
        return
    if not overwrite:
        raise VlmkitError(f"{run_dir} holds a previous run ({old[0].name}): resume it (--resume), choose "
                          "another output_dir, or pass --overwrite to replace it")
    barrier(info)
    if info.is_main:
        outputs = list(run_dir.glob("checkpoint-*")) + [run_dir / f for f in RUN_OUTPUTS]
        for p in outputs:
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.is_dir():
                shutil.rmtree(p)
