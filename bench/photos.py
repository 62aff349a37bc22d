"""Photo-like JPEGs for speed benchmarks, generated deterministically and cached.

    python -m bench.photos --size large --n 20      # prints the folder

Each picture is a smooth colour gradient with a low-frequency wave, a few filled shapes and
mild sensor-like noise: JPEG has real work to do, so files come out at camera-ish sizes
(a few hundred KB at 1024x768, ~2.8 MB at 12 MP, quality 90) rather than the few KB of a flat
synthetic image.
Picture i of a folder depends only on (seed, i) and the size, so every tool sees the same bytes.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WORK = Path(__file__).with_name(".work")
# 12mp: a phone's 4:3 photo (4032x3024, ~2.8 MB here); large: a camera JPEG resized for the
# web or a messaging app; small: a web thumbnail
SIZES = {"12mp": (4032, 3024), "large": (1024, 768), "small": (320, 240)}
QUALITY = 90
NOISE = 7.0  # std of the per-pixel noise, in 0-255 levels
DONE = ".complete"  # written last: a folder without it was interrupted and is regenerated


def photo(width: int, height: int, seed: int) -> Image.Image:
    """One picture: gradient + wave background, 3-7 shapes, noise. Same seed, same pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / width, y / height  # (h, w) in [0, 1)
    corners = rng.uniform(0, 255, size=(4, 3)).astype(np.float32)  # colours at the 4 corners
    background = ((1 - u)[..., None] * (1 - v)[..., None] * corners[0]
                  + u[..., None] * (1 - v)[..., None] * corners[1]
                  + (1 - u)[..., None] * v[..., None] * corners[2]
                  + u[..., None] * v[..., None] * corners[3])  # (h, w, 3) bilinear gradient
    fx, fy, phase = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 2 * np.pi)
    background += 25 * np.sin(2 * np.pi * (fx * u + fy * v) + phase)[..., None]
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        box = _box(rng, width, height)
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.ellipse(box, fill=fill)
        elif shape == 1:
            draw.rectangle(box, fill=fill)
        else:
            sides = int(rng.integers(3, 7))
            points = rng.uniform([box[0], box[1]], [box[2], box[3]], size=(sides, 2))
            draw.polygon([tuple(p) for p in points.tolist()], fill=fill)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.normal(0, NOISE, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    w, h = rng.uniform(0.1, 0.5) * width, rng.uniform(0.1, 0.5) * height
    left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return int(left), int(top), int(left + w), int(top + h)


def photo_folder(size: str, n: int, seed: int = 0, work: Path = WORK) -> Path:
    """bench/.work/photos-<size>-<n>[-s<seed>]/ holding n JPEGs; reused when complete."""
    suffix = f"-s{seed}" if seed else ""
    folder = work / f"photos-{size}-{n}{suffix}"
    if (folder / DONE).is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    width, height = SIZES[size]
    for i in range(n):
        photo(width, height, seed * 1_000_003 + i).save(
            folder / f"photo-{i:05d}.jpg", quality=QUALITY)
    (folder / DONE).write_text(f"{n} photos, {width}x{height}, JPEG quality {QUALITY}\n")
    return folder


def mean_kb(folder: Path) -> float:
    sizes = [p.stat().st_size for p in folder.glob("*.jpg")]
    return sum(sizes) / len(sizes) / 1024 if sizes else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="large")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = photo_folder(args.size, args.n, args.seed)
    print(f"{folder} ({mean_kb(folder):.0f} KB per photo)")


if __name__ == "__main__":
    main()
