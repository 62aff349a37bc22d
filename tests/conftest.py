"""Shared fixtures. Nothing here touches the network: models are tiny open_clip architectures
from a registered config, with random (seeded) or test-trained weights."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from retriever.encoding.clip_encoder import ClipEncoder
from retriever.encoding.models import ModelSpec, load_model

TINY = ModelSpec("retriever-tiny", "none")  # bundled config: 32 px ViT, 64-d, context 32
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220)}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path_factory):
    """No test reads the user's caches, index or environment."""
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
    monkeypatch.delenv("RETRIEVER_DB", raising=False)
    monkeypatch.delenv("RETRIEVER_STORE_URL", raising=False)
    # torch unless a test asks for ONNX: an export costs each new index seconds (tests/test_onnx
    # runs the default, auto = ONNX on CPU, end to end)
    monkeypatch.setenv("RETRIEVER_BACKEND", "torch")
    logging.getLogger().setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Training tests on one thread: retriever-tiny runs as fast on one as on two, one thread
    does not collapse (10x slower, measured) when another process competes for the 2 cores,
    and a fixed thread count sums in a fixed order (runs compare bit for bit)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_encoder() -> ClipEncoder:
    return ClipEncoder(load_model(TINY))


def write_photo(path: Path, colour: tuple[int, int, int], size=(160, 120)) -> Path:
    """A real JPEG: a coloured disc on a grey, slightly noisy background."""
    rng = np.random.default_rng(sum(os.fsencode(path.name)))
    pixels = rng.integers(100, 140, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(pixels)
    from PIL import ImageDraw

    ImageDraw.Draw(im).ellipse((30, 20, 130, 100), fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "JPEG", quality=90)
    return path


@pytest.fixture
def media_folder(tmp_path) -> Path:
    """Three photos (one with a sidecar caption), two documents, one corrupt image."""
    root = tmp_path / "media"
    for name, colour in COLOURS.items():
        write_photo(root / "photos" / f"{name}.jpg", colour)
    (root / "photos" / "red.txt").write_text("a red disc on grey\n")
    (root / "notes").mkdir()
    (root / "notes" / "trip.md").write_text(
        "# Trip\n\nWe saw a green field.\n\n" + "The sky was blue all day long. " * 12
    )
    (root / "notes" / "todo.txt").write_text("buy red paint")
    (root / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


@pytest.fixture
def cli():
    """Run the real CLI in-process: cli(args...) -> click Result (stdout, stderr, exit_code)."""
    from cli import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return run
