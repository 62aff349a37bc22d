"""Opening one image file the way every part of retriever sees it: RGB, upright, first frame."""

from __future__ import annotations

import contextlib
import io
import re
import struct
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, cast

from PIL import Image, ImageOps, UnidentifiedImageError

from retriever.errors import ImageError
from retriever.media.formats import (
    HEIF_SUFFIXES,
    RAW_SUFFIXES,
    decode_raw,
    draft,
    exif_of,
    head_of,
    heif_exif,
    is_heif,
    name_of,
    raw_exif,
    refuse_over,
    register_heif,
    suffix_of,
    webp_canvas,
)
from retriever.media.isolation import isolated

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                            *HEIF_SUFFIXES, *RAW_SUFFIXES})
# Pixel cap against decompression bombs; a 100-megapixel photo still opens.
DEFAULT_MAX_PIXELS = 100_000_000
# Address space a worker decoding a RAW or HEIC may add, per pixel of the cap: LibRaw holds the
# mosaic (2 B/px) and its 4-channel 16-bit image (8 B/px), then the 8-bit output (3 B/px),
# PIL's copy and a transpose (3 B/px each); 1 GiB at least (the file's own bytes, libraries).
MEMORY_PER_PIXEL = 24
MIN_DECODE_MEMORY = 1 << 30
# what PIL may read a file as, whatever its name: the formats retriever indexes (a camera's MPO
# comes as JPEG), and HEIF/AVIF in a worker. PIL's dozens of other plugins (ICNS, EPS, FLI, ...)
# are never reached by a file's first bytes.
PIL_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
EXIF_IFD = 0x8769  # the Exif sub-IFD, where DateTimeOriginal lives
DATE_TIME_ORIGINAL = 36867
DATE_TIME = 306  # IFD0: when the file was last changed by the camera or an editor


def open_image(path: Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `path` fully into an RGB image with EXIF orientation applied (see decode_image)."""
    return decode_image(path, max_pixels)[0]


def decode_image(path: Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode `path` (a file or a binary file object) into an RGB image with EXIF orientation
    applied, and the image's own (width, height), upright. The one guarded opener: every
    image retriever decodes comes through here.

    Whatever the format, the size its header claims is checked against `max_pixels` before any
    pixel is decoded (RAW: the sensor's and the embedded preview's). RAW and HEIC/HEIF (by
    content: any `ftyp` file) are decoded in a worker process with bounded memory
    (`retriever.media.isolation`); PIL's own formats here. With `min_side`, a JPEG may be
    decoded at a reduced scale (`formats.draft`). Animated files give their first frame.
    Raises `ImageError` naming the file and the reason.
    """
    head = head_of(path)
    if suffix_of(path) in RAW_SUFFIXES or is_heif(head):
        return cast(tuple[Image.Image, tuple[int, int]], isolated(
            decode_native, path, max_pixels, min_side, memory=decode_memory(max_pixels)))
    canvas = webp_canvas(head)
    if canvas:
        refuse_over(path, canvas, max_pixels)
    return _decode_pil(path, max_pixels, min_side)


def decode_memory(max_pixels: int) -> int:
    """Bytes of address space a worker may add to decode one image of up to `max_pixels`."""
    return max(MIN_DECODE_MEMORY, MEMORY_PER_PIXEL * max_pixels)


def decode_native(source: BinaryIO, max_pixels: int,
                  min_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """`decode_image` for a RAW or HEIC/HEIF file, in a worker process."""
    if suffix_of(source) in RAW_SUFFIXES:
        try:
            return decode_raw(source, max_pixels, min_side)
        except ImageError:
            raise
        except Exception as err:  # LibRaw's own errors, a preview PIL cannot read
            raise ImageError(f"{name_of(source)}: not a readable RAW image ({_reason(err)})") \
                from err
    register_heif()
    im, size = _decode_pil(source, max_pixels, min_side)
    return shrink(im, min_side), size


def shrink(im: Image.Image, min_side: int | None) -> Image.Image:
    """`im` box-reduced by 2, 4 or 8 while its short side stays >= `min_side`, as JPEG's
    reduced decode does: a 12 MP HEIC crosses from its worker as 0.6 MB, not 36 MB (the
    copy cost 200 ms)."""
    factor = 8
    while factor > 1 and (not min_side or min(im.size) // factor < min_side):
        factor //= 2
    return im.reduce(factor) if factor > 1 else im


def _decode_pil(path: Path | BinaryIO, max_pixels: int,
                min_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    name = name_of(path)
    try:
        with Image.open(path, formats=_registered()) as im:  # the header: no pixel decoded yet
            refuse_over(name, im.size, max_pixels)
            width, height = im.size
            draft(im, min_side)
            im.seek(0)  # animated GIF/WebP: first frame
            im.load()
            upright = ImageOps.exif_transpose(im)
            if upright.size != im.size:  # turned by 90 degrees
                width, height = height, width
            return _to_rgb(upright), (width, height)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:  # PIL's own cap, where the application kept it
        raise ImageError(_over_pils_cap(name, err, max_pixels)) from err
    except (UnidentifiedImageError, OSError, EOFError, ValueError,
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
        exif = _exif(path)
        if exif is None:
            return None
        raw = exif.get_ifd(EXIF_IFD).get(DATE_TIME_ORIGINAL) or exif.get(DATE_TIME)
        return datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S").timestamp()
    except (OSError, EOFError, ValueError, SyntaxError, TypeError, struct.error, IndexError,
            UnidentifiedImageError, Image.DecompressionBombError, ImageError):
        return None


def _registered() -> list[str]:
    """PIL_FORMATS that PIL has a plugin for (HEIF: once pillow-heif is registered)."""
    Image.preinit()  # JPEG, PNG, GIF, BMP; the rest by name (4 ms; all of PIL's take 60)
    import PIL.TiffImagePlugin
    import PIL.WebPImagePlugin

    with contextlib.suppress(ImportError):  # Pillow < 11.3 has none
        import PIL.AvifImagePlugin  # noqa: F401
    return [name for name in PIL_FORMATS if name in Image.OPEN]


def _exif(path: Path | BinaryIO) -> Image.Exif | None:
    if suffix_of(path) in RAW_SUFFIXES:
        return raw_exif(path)
    head = head_of(path)
    if is_heif(head):  # libheif parses it, in a worker
        return exif_of(isolated(heif_exif, path, memory=MIN_DECODE_MEMORY))
    canvas = webp_canvas(head)
    if canvas and canvas[0] * canvas[1] > DEFAULT_MAX_PIXELS:  # libwebp would allocate it
        return None
    with Image.open(path, formats=_registered()) as im:
        return im.getexif()


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im.convert("RGBA"), mask=im.convert("RGBA").getchannel("A"))
        return background
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: scale to 8 bits
        return im.point(lambda v: v / 256).convert("L").convert("RGB")
    return im.convert("RGB")


def _over_pils_cap(name: str, err: Image.DecompressionBombError, max_pixels: int) -> str:
    """PIL refused the header's size (Image.MAX_IMAGE_PIXELS: the CLI lifts it, a library
    caller may keep it): in our words when ours would have refused it too."""
    claimed = re.search(r"\((\d+) pixels\)", str(err))
    if claimed and int(claimed[1]) > max_pixels:
        return f"{name}: a {claimed[1]}-pixel image exceeds the {max_pixels}-pixel cap"
    return f"{name}: {_reason(err)} (PIL's Image.MAX_IMAGE_PIXELS)"


def _reason(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    # PIL names the file again ("cannot identify image file <_io.BufferedReader name='...'>"):
    # the message already starts with the path
    return re.sub(r"\s*<_io\.\w+ name=.*?>", "", text.splitlines()[0]).strip() or text
