"""Image preprocessing in PIL + numpy: the model's input pixels without torch.

Every encoder backend (torch, ONNX Runtime) takes the same (n, 3, S, S) float32 arrays, made
here, so an image indexed by one backend and searched by another meets the same pixels.
`preprocess` equals open_clip's inference transform on a PIL image (torchvision's Resize on a
PIL image is PIL's own resize; tests/test_onnx.py compares the two: a speed twin, README,
Architecture). `load_pixels` adds the fast path used for indexing and image queries: a JPEG
at least twice the model's input size is decoded at a reduced DCT scale (PIL's draft mode,
what thumbnailers do) whose short side is still >= S, never below what the resize takes.
That halves decode + resize for 1024x768 photos and cuts it 6x for 12 MP ones (~30 ms of one
core instead of ~200), for input pixels within cosine 0.999 of a full decode's and image
vectors within 0.999 too (tests/test_draft_decode.py, 12 MP phone and camera sizes).
Normalising is one table look-up per byte (`PixelConfig.table`): the same bits as the float
arithmetic it replaces (tested), in about two thirds of its time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

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

    def preprocess(self, im: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
        """An RGB PIL image -> (3, S, S) float32, normalised. `size`: the (width, height) of
        the picture `im` was decoded from at a reduced scale (`load_pixels`)."""
        s, resample = self.size, RESAMPLE[self.interpolation]
        scale = _reduction(im, size)
        if scale > 1:
            im = self._reduced(im, cast(tuple[int, int], size), scale)
        elif self.resize_mode == "squash":
            im = im.resize((s, s), resample)
        else:
            w, h = im.size
            nw, nh = _resized(s, w, h)
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), resample)
            left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))
            if (left, top, nw, nh) != (0, 0, s, s):
                im = im.crop((left, top, left + s, top + s))
        planes = np.asarray(im).transpose(2, 0, 1)  # (3, S, S) uint8, a view
        out = np.empty((3, s, s), dtype=np.float32)
        for c in range(3):  # one look-up per byte instead of four float passes over the image
            np.take(self.table[c], planes[c], out=out[c])
        return out

    def _reduced(self, im: Image.Image, size: tuple[int, int], scale: int) -> Image.Image:
        """The S x S input of the full-size picture (`size`) taken from `im`, its 1/`scale`
        reduction (pixel i covers the picture's [scale * i, scale * (i + 1))): the resize and
        crop of the full size, mapped onto `im` as one resize of a box. Resizing `im` as if it
        were the picture would round the crop to `im`'s coarser pixels: up to a whole input
        pixel off, cosine 0.994 to a full decode instead of >= 0.999 (tests/test_draft_decode)."""
        s, (w, h) = self.size, size
        if self.resize_mode == "squash":
            x0, y0, x1, y1 = 0.0, 0.0, float(w), float(h)
        else:
            nw, nh = _resized(s, w, h)
            left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))
            x0, y0 = left * w / nw, top * h / nh  # the crop, in the picture's pixels
            x1, y1 = (left + s) * w / nw, (top + s) * h / nh
        box = (x0 / scale, y0 / scale, min(x1 / scale, im.width), min(y1 / scale, im.height))
        return im.resize((s, s), RESAMPLE[self.interpolation], box=box)

    @cached_property
    def table(self) -> np.ndarray:
        """(3, 256) float32: byte value v of channel c -> (v / 255 - mean[c]) / std[c], in the
        float32 steps of the plain formula, so looking up gives the same bits (tested)."""
        levels = np.arange(256, dtype=np.float32)[None, :] * np.float32(1 / 255)  # (1, 256)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return (levels - mean[:, None]) / std[:, None]

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
    return Pixels(config.preprocess(im, (width, height)), width, height)


def _resized(s: int, w: int, h: int) -> tuple[int, int]:
    """torchvision's Resize(int): the short side becomes S, the long side is truncated."""
    return (s, int(s * h / w)) if w <= h else (int(s * w / h), s)


def _reduction(im: Image.Image, size: tuple[int, int] | None) -> int:
    """By what factor `im` is a reduction of a picture of `size`: JPEG's DCT scaling and PIL's
    reduce give ceil(width / f) x ceil(height / f) pixels, the last ones covering what is left.
    1 for anything else, a RAW's embedded preview included: taken as the whole picture."""
    if size is None or size == im.size:
        return 1
    return next((f for f in (2, 4, 8) if (-(-size[0] // f), -(-size[1] // f)) == im.size), 1)


def _triple(values: Any) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    a, b, c = (float(v) for v in values)
    return a, b, c
