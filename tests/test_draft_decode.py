"""JPEG draft decoding (DCT-scaled, `retriever.media.formats.draft`): a photo at least twice the
model's input in both sides is decoded at 1/2, 1/4 or 1/8 scale, never below the input the
resize needs. Measured here against a full decode of the same file, on photo-like JPEGs
(bench/photos.py: gradients, shapes, sensor noise) of phone and camera sizes:
- the model's input pixels, (3, S, S) normalised arrays, at S = 224 and 256 (real models) and
  at the tiny model's 32: cosine >= 0.999;
- the tiny model's image vectors of those pixels: cosine >= 0.999.
Small images and other formats are decoded whole; a damaged big JPEG is one named error."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from bench.photos import photo
from retriever.encoding.pixels import PixelConfig, load_pixels
from retriever.errors import ImageError
from retriever.media.images import decode_image

COSINE = 0.999
PHONE, CAMERA = (4032, 3024), (4000, 3000)  # 12 MP phone photo; a 12 MP camera JPEG
TURNED_CW = 6  # EXIF orientation: shown turned 90 degrees clockwise


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def write_jpeg(path: Path, size: tuple[int, int], orientation: int | None = None) -> Path:
    exif = Image.Exif()
    if orientation:
        exif[274] = orientation
    photo(*size, seed=sum(size)).save(path, quality=90, exif=exif)
    return path


def full_decode(path: Path, config: PixelConfig) -> np.ndarray:
    """The reference: every pixel decoded, turned upright, then preprocessed."""
    with Image.open(path) as im:
        return config.preprocess(ImageOps.exif_transpose(im).convert("RGB"))


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("big")
    return {"phone": write_jpeg(root / "phone.jpg", PHONE),
            "camera": write_jpeg(root / "camera.jpg", CAMERA),
            "turned": write_jpeg(root / "turned.jpg", PHONE, TURNED_CW)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["phone", "camera", "turned"])
def test_drafted_pixels_and_vectors_stay_within_cosine_of_a_full_decode(big, name,
                                                                         tiny_encoder):
    path = big[name]
    for config in (PixelConfig(224), PixelConfig(256), tiny_encoder.pixels):
        decoded, _ = decode_image(path, min_side=config.size)
        assert config.size <= min(decoded.size) < min(PHONE) // 4  # drafted: 1/8 scale
        drafted = load_pixels(path, config)
        reference = full_decode(path, config)
        assert cosine(drafted.data, reference) >= COSINE, (name, config.size)
    vectors = tiny_encoder.encode_pixels(np.stack([drafted.data, reference]))
    assert cosine(vectors[0], vectors[1]) >= COSINE
    # the record keeps the photo's own size, upright
    want = PHONE[::-1] if name == "turned" else (CAMERA if name == "camera" else PHONE)
    assert (drafted.width, drafted.height) == want


@pytest.mark.parametrize("short", [255, 256, 300, 511, 512, 513, 514, 700, 770, 1023, 1024,
                                   1030, 2048, 2060])
def test_a_draft_never_goes_below_the_resize_input(tmp_path, short):
    """Whatever the size, the decoded short side is >= S; only JPEGs at least 2 S on their
    short side are decoded smaller; a drafted photo still meets the full decode's pixels, also
    where the reduced short side is barely S (514 at 1/2; 1030 at 1/4 and 2060 at 1/8 gave
    cosine 0.998 and 0.997 before the crop was mapped from the full size) or 1.5 S (770)."""
    config = PixelConfig(256)
    size = (short * 4 // 3, short)
    path = tmp_path / "p.jpg"
    photo(*size, seed=short).save(path, quality=90)
    decoded, own = decode_image(path, min_side=config.size)
    assert own == size
    assert min(decoded.size) >= min(config.size, short)
    if short < 2 * config.size:
        assert decoded.size == size  # small: decoded whole
    elif short >= 2 * config.size + 2:  # (up to 2 S + 1, 1/2 would give S: decoded whole)
        assert decoded.size < size
    assert cosine(load_pixels(path, config).data, full_decode(path, config)) >= COSINE


def test_other_formats_and_no_target_are_decoded_whole(tmp_path):
    png = tmp_path / "big.png"
    photo(1200, 900, seed=1).save(png)
    assert decode_image(png, min_side=224)[0].size == (1200, 900)
    jpeg = tmp_path / "big.jpg"
    photo(1200, 900, seed=1).save(jpeg)
    assert decode_image(jpeg)[0].size == (1200, 900)  # no min_side: thumbnails, full views
    assert decode_image(jpeg, min_side=224)[0].size == (300, 225)  # 1/4: 225 >= 224


def test_preprocess_look_up_equals_the_plain_formula():
    """The optimized normalisation (a table per channel) against (x / 255 - mean) / std."""
    rng = np.random.default_rng(0)
    for config in (PixelConfig(224), PixelConfig(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))):
        im = Image.fromarray(rng.integers(0, 256, (config.size, config.size, 3), np.uint8))
        x = np.asarray(im, dtype=np.float32) * np.float32(1 / 255)
        plain = (x - np.asarray(config.mean, np.float32)) / np.asarray(config.std, np.float32)
        got = config.preprocess(im)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(got, plain.transpose(2, 0, 1))


def damaged(path: Path, how: str) -> Path:
    """A 2400x1800 JPEG cut short, with a header claiming 60000x60000, or garbage after its
    first bytes."""
    buffer = io.BytesIO()
    photo(2400, 1800, seed=2).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    if how == "truncated":
        data = data[: len(data) // 3]
    elif how == "huge header":
        sof = data.index(b"\xff\xc0")  # SOF0: length (2), precision (1), height, width (2 each)
        data = data[: sof + 5] + (60000).to_bytes(2, "big") * 2 + data[sof + 9 :]
    else:
        data = data[:600] + bytes(range(256)) * 40
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("how", ["truncated", "huge header", "garbage"])
def test_damaged_big_jpegs_are_one_named_line(tmp_path, how, tiny_encoder):
    path = damaged(tmp_path / "bad.jpg", how)
    with pytest.raises(ImageError) as caught:
        load_pixels(path, tiny_encoder.pixels, max_pixels=100_000_000)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message
