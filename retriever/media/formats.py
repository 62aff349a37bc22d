"""Image formats PIL does not read by itself: HEIC/HEIF and camera RAW.

HEIC/HEIF: pillow-heif, registered as a PIL plugin the first time one is opened; libheif turns
the image upright (EXIF orientation is stored as HEIF transforms), as PIL's exif_transpose
does for JPEGs.

RAW (CR2, CR3, NEF, ARW, RAF, ORF, RW2, DNG): rawpy (LibRaw). The embedded preview, when the
camera wrote one at least `min_side` pixels on its short side, is used as is (a JPEG decode,
milliseconds); otherwise the sensor data is demosaiced (at half size when that still covers
`min_side`: 4x less work). Either way the raw file's own orientation is applied. The date is
the TIFF header's DateTimeOriginal (every TIFF-based RAW), else the preview's EXIF.

Both libraries load only when such a file is met: indexing JPEGs never imports them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from retriever.errors import ImageError

HEIF_SUFFIXES = frozenset({".heic", ".heif"})
RAW_SUFFIXES = frozenset({".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".dng"})
# LibRaw's `flip` -> the PIL transpose that makes the picture upright
FLIPS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90,
         6: Image.Transpose.ROTATE_270}
HEADER_BYTES = 1 << 20  # TIFF-based RAWs keep IFD0 and the Exif IFD in their first bytes
_heif: list[bool] = []  # [True] once pillow-heif is registered


def suffix_of(source: Path | BinaryIO) -> str:
    """The lower-case suffix of a path or of an open file's name ('' when it has none)."""
    name = source if isinstance(source, Path) else getattr(source, "name", "")
    return Path(str(name)).suffix.lower() if isinstance(name, (str, Path)) else ""


def register_heif() -> None:
    """Let PIL open HEIC/HEIF (once per process)."""
    if not _heif:
        import pillow_heif

        pillow_heif.register_heif_opener()
        _heif.append(True)


def decode_raw(source: Path | BinaryIO, max_pixels: int,
               min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """A RAW file as an upright RGB image and the sensor image's own (width, height), upright.
    Raises `ImageError` for a file over `max_pixels`, rawpy's errors for one it cannot read."""
    import rawpy

    with rawpy.imread(str(source) if isinstance(source, Path) else source) as raw:
        sizes = raw.sizes
        width, height = sizes.width, sizes.height
        if width * height > max_pixels:
            raise ImageError(f"{source}: {width}x{height} exceeds the {max_pixels}-pixel cap")
        if sizes.flip in (5, 6):
            width, height = height, width
        preview = _preview(raw, rawpy, min_side or 0)
        if preview is not None:
            turn = FLIPS.get(sizes.flip)
            return (preview.transpose(turn) if turn else preview), (width, height)
        half = bool(min_side) and min(width, height) >= 2 * (min_side or 0)
        rgb = raw.postprocess(output_bps=8, use_camera_wb=True, half_size=half)  # (h, w, 3)
    return Image.fromarray(rgb), (width, height)


def _preview(raw: Any, rawpy: Any, min_side: int) -> Image.Image | None:
    """The embedded preview as RGB if it has at least `min_side` pixels on its short side."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    im: Image.Image
    if thumb.format == rawpy.ThumbFormat.JPEG:
        im = Image.open(io.BytesIO(bytes(thumb.data)))
        im.load()
    else:  # a bitmap, (h, w, 3) uint8
        im = Image.fromarray(thumb.data)
    return im.convert("RGB") if min(im.size) >= min_side else None


def raw_exif(source: Path | BinaryIO) -> Image.Exif | None:
    """The EXIF of a RAW file: its TIFF header's, else its embedded preview's; None if neither."""
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            return raw_exif(fh)
    start = source.tell()
    header = source.read(HEADER_BYTES)
    if header[:4] in (b"II*\x00", b"MM\x00*"):
        exif = Image.Exif()
        exif.load(header)
        return exif
    source.seek(start)
    import rawpy

    try:
        with rawpy.imread(source) as raw:
            thumb = raw.extract_thumb()
        if thumb.format != rawpy.ThumbFormat.JPEG:
            return None
        with Image.open(io.BytesIO(bytes(thumb.data))) as im:
            return im.getexif()
    except (rawpy.LibRawError, OSError):
        return None
