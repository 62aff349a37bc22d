"""Image formats PIL does not read by itself: HEIC/HEIF and camera RAW.

HEIC/HEIF: pillow-heif, registered as a PIL plugin the first time one is opened; libheif turns
the image upright (EXIF orientation is stored as HEIF transforms), as PIL's exif_transpose
does for JPEGs.

RAW (CR2, CR3, NEF, ARW, RAF, ORF, RW2, DNG): rawpy (LibRaw). The embedded preview, when the
camera wrote one at least `min_side` pixels on its short side, is used as is (a JPEG decode,
milliseconds; its size read from its header and refused over the pixel cap before any pixel is
decoded: a 0.8 MB DNG may claim a 60000x60000 preview); otherwise the sensor data is
demosaiced (at half size when that still covers `min_side`: 4x less work). Either way the raw
file's own orientation is applied. The date is the TIFF header's DateTimeOriginal (every
TIFF-based RAW), else the preview's EXIF.

Both libraries load only when such a file is met: indexing JPEGs never imports them. Both run
in a worker process (`retriever.media.isolation`, called from `retriever.media.images`).
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
RAW_EXIF_MEMORY = 1 << 30  # bytes: LibRaw reads the file (tens of MB) and its preview's bytes
HEADER_BYTES = 1 << 20  # TIFF-based RAWs keep IFD0 and the Exif IFD in their first bytes
_heif: list[bool] = []  # [True] once pillow-heif is registered


def name_of(source: Path | BinaryIO) -> str:
    """What messages call `source`: its path, an open file's name, else 'upload'."""
    name = source if isinstance(source, Path) else getattr(source, "name", None)
    return str(name) if isinstance(name, (str, Path)) else "upload"


def refuse_over(source: Path | BinaryIO | str, size: tuple[int, int], max_pixels: int,
                what: str = "") -> None:
    """Raise `ImageError` when `size` (w, h, as a header claims it) is over `max_pixels`:
    "<path>: 60000x60000 preview exceeds the 100000000-pixel cap"."""
    width, height = size
    if width * height > max_pixels:
        name = source if isinstance(source, str) else name_of(source)
        raise ImageError(f"{name}: {width}x{height}{' ' + what if what else ''} exceeds the "
                         f"{max_pixels}-pixel cap")


def draft(im: Image.Image, min_side: int | None) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale (DCT scaling: cheaper, and a fair
    downscale) as long as its short side stays >= `min_side`."""
    width, height = im.size
    if min_side and im.format == "JPEG" and min(width, height) >= 2 * min_side:
        scale = min_side / min(width, height)
        im.draft("RGB", (int(width * scale + 1), int(height * scale + 1)))


def head_of(source: Path | BinaryIO, size: int = 32) -> bytes:
    """The first `size` bytes of `source` (an open file is left where it was)."""
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            return fh.read(size)
    start = source.tell()
    head = source.read(size)
    source.seek(start)
    return head


def is_heif(head: bytes) -> bool:
    """Whether a file starting with `head` is ISO-BMFF (HEIC, HEIF, AVIF: `....ftyp`),
    whatever its name says."""
    return head[4:8] == b"ftyp"


def webp_canvas(head: bytes) -> tuple[int, int] | None:
    """The canvas (w, h) an extended WebP's VP8X chunk claims: libwebp allocates it when PIL
    opens the file, before any check of ours could run; None for other files."""
    if head[:4] != b"RIFF" or head[8:16] != b"WEBPVP8X" or len(head) < 30:
        return None
    return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")


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
    Raises `ImageError` for a sensor or preview over `max_pixels` (from their headers), rawpy's
    errors for a file it cannot read. Run it in a worker (`retriever.media.isolation`)."""
    import rawpy

    with rawpy.imread(str(source) if isinstance(source, Path) else source) as raw:
        sizes = raw.sizes
        width, height = sizes.width, sizes.height
        refuse_over(source, (width, height), max_pixels, "sensor image")
        if sizes.flip in (5, 6):
            width, height = height, width
        preview = _preview(raw, rawpy, min_side or 0, max_pixels, name_of(source))
        if preview is not None:
            turn = FLIPS.get(sizes.flip)
            return (preview.transpose(turn) if turn else preview), (width, height)
        half = bool(min_side) and min(width, height) >= 2 * (min_side or 0)
        rgb = raw.postprocess(output_bps=8, use_camera_wb=True, half_size=half)  # (h, w, 3)
    return Image.fromarray(rgb), (width, height)


def _preview(raw: Any, rawpy: Any, min_side: int, max_pixels: int,
             name: str) -> Image.Image | None:
    """The embedded preview as RGB if it has at least `min_side` pixels on its short side;
    `ImageError` if its header claims more than `max_pixels`."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format != rawpy.ThumbFormat.JPEG:  # a bitmap, (h, w, 3) uint8, LibRaw-decoded
        height, width = thumb.data.shape[:2]
        refuse_over(name, (width, height), max_pixels, "preview")
        return Image.fromarray(thumb.data).convert("RGB") if min(width, height) >= min_side \
            else None
    with Image.open(io.BytesIO(bytes(thumb.data))) as im:  # the header only, so far
        refuse_over(name, im.size, max_pixels, "preview")
        if min(im.size) < min_side:
            return None
        draft(im, min_side)
        return im.convert("RGB")


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
    from retriever.media.isolation import isolated

    return exif_of(isolated(preview_exif, source, memory=RAW_EXIF_MEMORY))  # LibRaw parses it


def exif_of(data: bytes | None) -> Image.Exif | None:
    """EXIF bytes (as a JPEG's APP1 or a HEIF's Exif item holds them) read, None for None."""
    if data is None:
        return None
    exif = Image.Exif()
    exif.load(data)
    return exif


def heif_exif(source: BinaryIO) -> bytes | None:
    """The EXIF bytes of a HEIC/HEIF file (run in a worker: libheif parses it); nothing is
    decoded."""
    register_heif()
    with Image.open(source) as im:
        data = im.info.get("exif")
    return data if isinstance(data, bytes) else None


def preview_exif(source: BinaryIO) -> bytes | None:
    """The EXIF bytes of a RAW file's embedded JPEG preview (run in a worker: LibRaw parses
    the file); None without one. Nothing is decoded."""
    import rawpy

    try:
        with rawpy.imread(source) as raw:
            thumb = raw.extract_thumb()
        if thumb.format != rawpy.ThumbFormat.JPEG:
            return None
        with Image.open(io.BytesIO(bytes(thumb.data))) as im:
            data = im.info.get("exif")
        return data if isinstance(data, bytes) else None
    except (rawpy.LibRawError, OSError):
        return None
