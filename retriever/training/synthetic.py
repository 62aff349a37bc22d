"""Generated captioned data: coloured shapes a tiny model learns from scratch in seconds.

Used by the tests (train, evaluate, search without downloading anything) and by `retriever demo`.
Every scene is one shape on a lightly noisy background, described by three attributes:
colour x shape x where it sits. Everything is deterministic given `seed`.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 20),
    "purple": (140, 40, 170),
    "black": (20, 20, 20),
}
# shape -> the second wording used in captions, so both templates name every attribute
SHAPES = {"circle": "round shape", "square": "boxy shape", "triangle": "pointed shape"}
# where -> centre of the shape as fractions of the image size
PLACES = {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72)}
SHAPE_FRACTION = 0.36  # shape width / image width: big enough to survive resizing to 32 px
BACKGROUND_NOISE = 12  # std of the grey background's pixel noise, in 0..255 units

# The recipe under which retriever-tiny learns these scenes from scratch on CPU in ~10 s
# (2 cores): held-out text->image R@1 goes from ~0.02 to 0.3-0.5 with each objective. R@1 cannot
# approach 1: 240 images repeat the 72 scenes, so a caption usually fits several held-out images.


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    place: str

    def captions(self) -> tuple[str, str]:
        """Two differently-worded captions, so the multi-caption path is exercised."""
        return (
            f"a {self.colour} {self.shape} on the {self.place}",
            f"{self.place} side: {self.colour} {SHAPES[self.shape]}",
        )


ALL_SCENES = [Scene(*combo) for combo in itertools.product(COLOURS, SHAPES, PLACES)]


def write_captioned_images(folder: Path, n: int, seed: int = 0, size: int = 64) -> list[Path]:
    """Write `n` JPEGs `img_0000.jpg`... with sidecar captions `img_0000.txt` (one per line).

    Scenes cycle through every colour x shape x place combination in a seeded order, so any
    `len(ALL_SCENES)` consecutive images are all different.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i, scene in enumerate(_scene_sequence(n, rng)):
        path = folder / f"img_{i:04d}.jpg"
        draw_scene(scene, size, rng).save(path, quality=95)
        path.with_suffix(".txt").write_text("\n".join(scene.captions()) + "\n")
        paths.append(path)
    return paths


def draw_scene(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, BACKGROUND_NOISE, (size, size, 1))
    grey = rng.uniform(200, 240)
    background = np.clip(grey + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)
    image = Image.fromarray(background)
    cx, cy = PLACES[scene.place]
    jitter = 0.04 * size  # small random offset so no two images are pixel-identical
    x, y = cx * size + rng.uniform(-jitter, jitter), cy * size + rng.uniform(-jitter, jitter)
    r = SHAPE_FRACTION * size / 2
    _draw_shape(ImageDraw.Draw(image), scene.shape, x, y, r, COLOURS[scene.colour])
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float,
                fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    else:  # triangle, point up
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)


def _scene_sequence(n: int, rng: random.Random) -> list[Scene]:
    scenes: list[Scene] = []
    while len(scenes) < n:
        cycle = list(ALL_SCENES)
        rng.shuffle(cycle)
        scenes.extend(cycle)
    return scenes[:n]


# --- documents --------------------------------------------------------------------------------

_OPENINGS = [
    "This note describes a small picture.",
    "Here is what the drawing shows.",
    "A short description of one image follows.",
]
_CLOSINGS = [
    "The background is a plain light grey with a little noise.",
    "Nothing else appears in the frame.",
    "The shape is drawn flat, without shading.",
]


def write_text_documents(folder: Path, seed: int = 0, n: int = 6) -> list[Path]:
    """Write `n` documents (.txt and .md alternating) whose paragraphs describe scenes.

    The last document describes many scenes, one paragraph each, so it is long enough to be
    split into several passages of ~30 tokens; the others describe one scene in a few sentences.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    scenes = _scene_sequence(n + 5, rng)
    paths = []
    for i in range(n):
        long = i == n - 1
        described = scenes[i:i + 6] if long else [scenes[i]]
        suffix = ".md" if i % 2 else ".txt"
        path = folder / f"doc_{i:02d}{suffix}"
        title = f"# Scenes, part {i + 1}\n\n" if suffix == ".md" else ""
        path.write_text(title + "\n\n".join(_paragraph(s, rng) for s in described) + "\n")
        paths.append(path)
    return paths


def _paragraph(scene: Scene, rng: random.Random) -> str:
    return " ".join([
        rng.choice(_OPENINGS),
        f"It shows a {scene.colour} {scene.shape} on the {scene.place} of the frame.",
        f"The {scene.colour} {SHAPES[scene.shape]} sits on the {scene.place} side.",
        rng.choice(_CLOSINGS),
    ])
