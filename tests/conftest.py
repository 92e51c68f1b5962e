"""Shared fixtures: tiny synthetic images and offline settings. Models are built for real from tiny presets."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (the scripts are not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_image(seed: int = 0, size: int = 48) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = torch.randint(0, size - 12, (2,), generator=g).tolist()
        color = tuple(torch.randint(0, 256, (3,), generator=g).tolist())
        d.rectangle([x0, y0, x0 + 10, y0 + 10], fill=color)
    return img


@pytest.fixture
def image() -> Image.Image:
    return make_image(0)


@pytest.fixture
def images() -> list[Image.Image]:
    return [make_image(i) for i in range(3)]
