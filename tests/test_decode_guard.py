"""One guarded opener: whatever decodes a file (PIL, LibRaw's preview, libheif, FFmpeg), a header
that claims more pixels than the cap is refused from the header, in one line, before a pixel is
decoded; native decoders run in worker processes whose memory is bounded, so a file that kills
its decoder or asks for all memory is that file's failure alone.

Forged headers are decoded in a subprocess under RLIMIT_AS (2 GiB): a decoder that believed a
60000x60000 header would need 10 GB there and fail with MemoryError instead of the line."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retriever.errors import ImageError
from retriever.media.isolation import isolated
from tests.helpers import halves, write_dng, write_heic, write_photo

CAP = 100_000_000  # the default --max-pixels
LIMIT = 2 << 30  # bytes of address space the decoding subprocess gets
DECODE = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({LIMIT}, {LIMIT}))
from pathlib import Path
from PIL import Image
Image.MAX_IMAGE_PIXELS = None  # as the CLI sets it at its edge: the opener's cap decides
from retriever.errors import RetrieverError
from retriever.media.images import decode_image
from retriever.media.video import VideoOptions, sample_frames
for arg in sys.argv[1:]:
    path = Path(arg)
    try:
        if path.suffix == ".avi":
            video = sample_frames(path, VideoOptions(), 32)
            print("decoded", video.width, video.height)
        else:
            print("decoded", *decode_image(path, min_side=32)[1])
    except RetrieverError as err:
        print(err)
"""


def decode_lines(paths: list[Path]) -> list[str]:
    """What decoding each path prints under RLIMIT_AS: 'decoded W H', or its one error line."""
    run = subprocess.run([sys.executable, "-c", DECODE, *map(str, paths)], capture_output=True,
                         text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.splitlines()


def forged_jpeg_bytes(width: int, height: int) -> bytes:
    """A valid small JPEG whose SOF header claims width x height."""
    buffer = io.BytesIO()
    Image.fromarray(halves(96, 64)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height, width
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def forged_jpeg(path: Path, width: int, height: int) -> Path:
    path.write_bytes(forged_jpeg_bytes(width, height))
    return path


def forged_png(path: Path, width: int, height: int) -> Path:
    Image.new("RGB", (8, 8), (9, 9, 9)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def forged_gif(path: Path, width: int, height: int) -> Path:
    """Two frames; the logical screen claims width x height."""
    frames = [Image.new("P", (8, 8), i) for i in range(2)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    data = bytearray(path.read_bytes())
    data[6:10] = struct.pack("<HH", width, height)
    path.write_bytes(bytes(data))
    return path


def forged_webp(path: Path, width: int, height: int) -> Path:
    """Two frames; the VP8X chunk's canvas claims width x height."""
    frames = [Image.new("RGB", (8, 8), (i, i, i)) for i in (10, 200)]
    frames[0].save(path, save_all=True, append_images=frames[1:], lossless=True)
    data = bytearray(path.read_bytes())
    vp8x = data.index(b"VP8X")  # tag, size (4), flags (4), canvas width - 1, height - 1 (3 each)
    data[vp8x + 12: vp8x + 18] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(
        3, "little")
    path.write_bytes(bytes(data))
    return path


def forged_tiff(path: Path, width: int, height: int) -> Path:
    """Two pages; the first page's tags claim width x height."""
    import tifffile

    frames = [Image.new("RGB", (8, 8), (i, i, i)) for i in (10, 200)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags[256].overwrite(width)
        tif.pages[0].tags[257].overwrite(height)
    return path


def forged_dng(path: Path, width: int, height: int) -> Path:
    """A 0.02 MB DNG whose embedded JPEG preview claims width x height: its preview IFD made
    JPEG-compressed, its strip a small JPEG with a forged SOF."""
    import tifffile

    write_dng(path, preview=(72, 48))
    jpeg, offset = forged_jpeg_bytes(width, height), path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(jpeg)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tags = tif.pages[0].tags
        for tag, value in ((259, 7), (262, 6), (273, offset), (279, len(jpeg))):
            tags[tag].overwrite(value)  # compression JPEG, YCbCr, the strip
    return path


def forged_heic(path: Path, width: int, height: int) -> Path:
    """A HEIC whose image spatial extent ('ispe' box) claims width x height."""
    write_heic(path)
    data = bytearray(path.read_bytes())
    at = data.find(b"ispe")
    data[at + 8: at + 16] = struct.pack(">II", width, height)  # after version and flags
    path.write_bytes(bytes(data))
    return path


def forged_avi(path: Path, width: int, height: int) -> Path:
    """Raw RGB video whose headers (avih, strf) claim frames of width x height."""
    import av

    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("rawvideo", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "rgb24"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 64, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
    data = bytearray(path.read_bytes())
    avih, strf = data.find(b"avih"), data.find(b"strf")
    data[avih + 40: avih + 48] = struct.pack("<II", width, height)
    data[strf + 12: strf + 20] = struct.pack("<ii", width, height)
    path.write_bytes(bytes(data))
    return path


FORGED = {  # name: (writer, width, height, what the refusal calls it)
    "bomb.jpg": (forged_jpeg, 60000, 60000, ""),
    "bomb.png": (forged_png, 60000, 60000, ""),
    "frames.gif": (forged_gif, 60000, 60000, ""),
    "frames.webp": (forged_webp, 60000, 60000, ""),
    "pages.tif": (forged_tiff, 60000, 60000, ""),
    "preview.dng": (forged_dng, 60000, 60000, " preview"),
    "preview400mp.dng": (forged_dng, 20000, 20000, " preview"),  # fits 16 bits, passes LibRaw
    "phone.heic": (forged_heic, 60000, 60000, ""),
    "phone400mp.heic": (forged_heic, 20000, 20000, ""),
    "clip.avi": (forged_avi, 16000, 16000, " video frame"),  # FFmpeg's own size check passes
}


def test_every_decoder_refuses_a_forged_size_from_the_header(tmp_path):
    paths = [write(tmp_path / name, width, height)
             for name, (write, width, height, _) in FORGED.items()]
    good = [write_photo(tmp_path / "good.jpg", (200, 30, 30)), write_heic(tmp_path / "ok.heic"),
            write_dng(tmp_path / "ok.dng", preview=(72, 48))]
    lines = decode_lines([*paths, *good])
    expected = [f"{path}: {width}x{height}{what} exceeds the {CAP}-pixel cap"
                for path, (_, width, height, what) in zip(paths, FORGED.values(), strict=True)]
    # the good files still decode under the same memory limit, upright sizes
    assert lines == [*expected, "decoded 160 120", "decoded 64 96", "decoded 64 96"]


def test_the_opener_sets_no_process_wide_switch_when_imported():
    code = ("from PIL import Image; default = Image.MAX_IMAGE_PIXELS; "
            "import retriever.media.images, retriever.encoding.pixels, retriever.media.video; "
            "print(Image.MAX_IMAGE_PIXELS == default and default is not None)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).parent.parent)
    assert run.stdout.strip() == "True", run.stderr[-2000:]


def eat_memory(source: io.BufferedIOBase) -> int:
    """A 'decoder' that asks for 4 GiB (run in a worker)."""
    return len(bytearray(4 << 30))


def die(source: io.BufferedIOBase) -> int:
    """A 'decoder' that crashes (run in a worker)."""
    os.kill(os.getpid(), 9)
    return 0


def read_all(source: io.BufferedIOBase) -> bytes:
    return source.read()


def test_a_decoder_that_dies_or_eats_memory_fails_only_its_file(tmp_path):
    photo = write_photo(tmp_path / "p.jpg", (30, 200, 30))
    with pytest.raises(ImageError, match=r"p\.jpg: the decoder needed more than its 256 MB"):
        isolated(eat_memory, photo, memory=256 << 20)
    with pytest.raises(ImageError, match=r"p\.jpg: the decoder died \(SIGKILL\)"):
        isolated(die, photo, memory=256 << 20)
    # the next file gets a working decoder, and an open file is read from its position
    # without moving it
    with open(photo, "rb") as fh:
        fh.seek(10)
        assert isolated(read_all, fh, memory=256 << 20) == photo.read_bytes()[10:]
        assert fh.tell() == 10
    assert isolated(read_all, io.BytesIO(b"abc"), memory=256 << 20) == b"abc"
