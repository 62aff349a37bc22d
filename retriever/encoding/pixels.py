"""Image preprocessing in PIL + numpy: the model's input pixels without torch.

Every encoder backend (torch, ONNX Runtime) takes the same (n, 3, S, S) float32 arrays, made
here, so an image indexed by one backend and searched by another meets the same pixels.
`preprocess` equals open_clip's inference transform on a PIL image (torchvision's Resize on a
PIL image is PIL's own resize; tests/test_onnx.py compares the two: a speed twin, README,
Architecture). `load_pixels` adds the fast path used for indexing and image queries: a JPEG
at least twice the model's input size is decoded at a reduced DCT scale (PIL's draft mode,
what thumbnailers do) whose short side is still >= S.
That halves decode + resize for 1024x768 photos and cuts it 6x for 12 MP ones, for a mean
pixel difference of 0.5/255 (measured in the closing note of issue 4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from retriever.media.images import DEFAULT_MAX_PIXELS, decode_image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
RESIZE_MODES = ("shortest", "squash")


@dataclass(frozen=True)
class PixelConfig:
    """open_clip's inference preprocessing: resize, centre crop, scale to [0, 1], normalise."""

    size: int  # S: the model's input is S x S
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # shortest side to S then centre crop; or squash to S x S

    @classmethod
    def from_open_clip(cls, cfg: dict[str, Any]) -> PixelConfig:
        """From `open_clip.get_model_preprocess_cfg(model)`."""
        size = cfg["size"]
        if isinstance(size, (list, tuple)):
            if len(set(size[-2:])) != 1:
                raise ValueError(f"non-square input size {size} is not supported")
            size = size[-1]
        mean, std = cfg.get("mean") or OPENAI_MEAN, cfg.get("std") or OPENAI_STD
        config = cls(int(size), _triple(mean), _triple(std),
                     cfg.get("interpolation") or "bicubic", cfg.get("resize_mode") or "shortest")
        config.check()
        return config

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PixelConfig:
        return cls(int(data["size"]), _triple(data["mean"]), _triple(data["std"]),
                   data["interpolation"], data["resize_mode"])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        if self.interpolation not in RESAMPLE or self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"preprocessing {self.interpolation}/{self.resize_mode} is not "
                             f"supported (use {'/'.join(RESAMPLE)} with "
                             f"{'/'.join(RESIZE_MODES)})")

    def preprocess(self, im: Image.Image) -> np.ndarray:
        """An RGB PIL image -> (3, S, S) float32, normalised."""
        s, resample = self.size, RESAMPLE[self.interpolation]
        if self.resize_mode == "squash":
            im = im.resize((s, s), resample)
        else:
            w, h = im.size
            # torchvision Resize(int): the short side becomes S, the long side is truncated
            nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), resample)
            left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))
            if (left, top, nw, nh) != (0, 0, s, s):
                im = im.crop((left, top, left + s, top + s))
        x = np.asarray(im, dtype=np.float32) * np.float32(1 / 255)  # (S, S, 3)
        normed = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(normed.transpose(2, 0, 1), dtype=np.float32)

    def batch(self, images: list[Image.Image]) -> np.ndarray:
        """(n, 3, S, S) float32."""
        out = np.empty((len(images), 3, self.size, self.size), dtype=np.float32)
        for i, im in enumerate(images):
            out[i] = self.preprocess(im)
        return out


@dataclass(frozen=True)
class Pixels:
    data: np.ndarray  # (3, S, S) float32
    width: int  # the image's own size, upright, before any reduced decode
    height: int


def load_pixels(path: Path | Any, config: PixelConfig,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Pixels:
    """Decode `path` (a file or a binary file object) and preprocess it. Raises `ImageError`."""
    im, (width, height) = decode_image(path, max_pixels, min_side=config.size)
    return Pixels(config.preprocess(im), width, height)


def _triple(values: Any) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    a, b, c = (float(v) for v in values)
    return a, b, c
