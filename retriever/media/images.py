"""Opening one image file the way every part of retriever sees it: RGB, upright, first frame."""

from __future__ import annotations

import io
import re
import struct
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from retriever.errors import ImageError
from retriever.media.formats import (
    HEIF_SUFFIXES,
    RAW_SUFFIXES,
    decode_raw,
    raw_exif,
    register_heif,
    suffix_of,
)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                            *HEIF_SUFFIXES, *RAW_SUFFIXES})
# Pixel cap against decompression bombs; a 100-megapixel photo still opens.
DEFAULT_MAX_PIXELS = 100_000_000
# PIL's own cap (a warning over 89.5 MP, an error over twice that, at open) would refuse images
# under ours, whatever `max_pixels` says. Ours is checked in decode_image from the header,
# before any pixel is decoded; every image retriever opens goes through this module.
Image.MAX_IMAGE_PIXELS = None
EXIF_IFD = 0x8769  # the Exif sub-IFD, where DateTimeOriginal lives
DATE_TIME_ORIGINAL = 36867
DATE_TIME = 306  # IFD0: when the file was last changed by the camera or an editor


def open_image(path: Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `path` fully into an RGB image with EXIF orientation applied (see decode_image)."""
    return decode_image(path, max_pixels)[0]


def decode_image(path: Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode `path` (a file or a binary file object) into an RGB image with EXIF orientation
    applied, and the image's own (width, height), upright.

    With `min_side`, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (DCT scaling: cheaper,
    and a fair downscale) as long as its short side stays >= `min_side`. Animated files give
    their first frame. HEIC/HEIF and RAW files: see `retriever.media.formats`. Raises
    `ImageError` naming the file and the reason.
    """
    name = path if isinstance(path, Path) else getattr(path, "name", path)  # an open file's path
    if suffix_of(path) in RAW_SUFFIXES:
        try:
            return decode_raw(path, max_pixels, min_side)
        except ImageError:
            raise
        except Exception as err:  # LibRaw's own errors, a preview PIL cannot read
            raise ImageError(f"{name}: not a readable RAW image ({_reason(err)})") from err
    _register_plugins(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(f"{name}: {width}x{height} exceeds the {max_pixels}-pixel cap")
            if min_side and im.format == "JPEG" and min(width, height) >= 2 * min_side:
                scale = min_side / min(width, height)
                im.draft("RGB", (int(width * scale + 1), int(height * scale + 1)))
            im.seek(0)  # animated GIF/WebP: first frame
            im.load()
            upright = ImageOps.exif_transpose(im)
            if upright.size != im.size:  # turned by 90 degrees
                width, height = height, width
            return _to_rgb(upright), (width, height)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, EOFError, ValueError,
            SyntaxError, struct.error, IndexError, ZeroDivisionError) as err:
        raise ImageError(f"{name}: not a readable image ({_reason(err)})") from err


def thumbnail_bytes(path: Path, size: int, format: str = "JPEG") -> bytes:
    """The image at `path`, upright, shrunk to fit `size` x `size`, encoded as `format`."""
    im, _ = decode_image(path, min_side=size)
    im.thumbnail((size, size))
    buffer = io.BytesIO()
    im.save(buffer, format, **({"quality": 85} if format == "JPEG" else {}))
    return buffer.getvalue()


def taken_at(path: Path | BinaryIO) -> float | None:
    """When the photo was taken (EXIF DateTimeOriginal, else DateTime) as unix time, read from
    the header alone; None without a usable date. Camera clocks have no zone: local time.
    A header that claims any size is fine here: no pixel is decoded."""
    try:
        if suffix_of(path) in RAW_SUFFIXES:
            exif = raw_exif(path)
        else:
            _register_plugins(path)
            with Image.open(path) as im:
                exif = im.getexif()
        if exif is None:
            return None
        raw = exif.get_ifd(EXIF_IFD).get(DATE_TIME_ORIGINAL) or exif.get(DATE_TIME)
        return datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S").timestamp()
    except (OSError, EOFError, ValueError, SyntaxError, TypeError, struct.error, IndexError,
            UnidentifiedImageError, Image.DecompressionBombError):
        return None


def _register_plugins(path: Path | BinaryIO) -> None:
    """HEIF support for a .heic/.heif file, or one without a name (an upload)."""
    suffix = suffix_of(path)
    if suffix in HEIF_SUFFIXES or not suffix:
        register_heif()


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im.convert("RGBA"), mask=im.convert("RGBA").getchannel("A"))
        return background
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: scale to 8 bits
        return im.point(lambda v: v / 256).convert("L").convert("RGB")
    return im.convert("RGB")


def _reason(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    # PIL names the file again ("cannot identify image file <_io.BufferedReader name='...'>"):
    # the message already starts with the path
    return re.sub(r"\s*<_io\.\w+ name=.*?>", "", text.splitlines()[0]).strip() or text
