"""HEIC/HEIF (pillow-heif) and camera RAW (rawpy): decoded upright, dated, indexed and searched
like JPEGs. The DNGs are written here with tifffile: a CFA (Bayer) sensor image with the DNG tags
LibRaw needs, with or without an embedded preview."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retriever.media.images import decode_image, taken_at

from .helpers import DNG_DATE, write_dng, write_heic


def assert_upright(im: Image.Image) -> None:
    """Red on top, blue below: the orientation was applied."""
    assert im.height > im.width
    top, bottom = np.asarray(im)[2, im.width // 2], np.asarray(im)[-3, im.width // 2]
    assert top[0] > 150 and top[2] < 100 and bottom[2] > 150 and bottom[0] < 100, (top, bottom)


def test_heic_is_upright(tmp_path):
    im, size = decode_image(write_heic(tmp_path / "photo.heic"))
    assert size == (64, 96)
    assert_upright(im)


def test_dng_demosaiced_upright_and_dated(tmp_path):
    path = write_dng(tmp_path / "photo.dng")
    im, size = decode_image(path)
    assert size == (64, 96) and im.size == (64, 96)
    assert_upright(im)
    half, _ = decode_image(path, min_side=16)  # half-size demosaic still covers 16 px
    assert half.size == (32, 48)
    assert_upright(half)
    with open(path, "rb") as fh:  # as the indexer passes it: an open file
        assert taken_at(fh) == datetime.strptime(DNG_DATE, "%Y:%m:%d %H:%M:%S").timestamp()


def test_dng_preview_used_when_large_enough(tmp_path):
    path = write_dng(tmp_path / "photo.dng", preview=(72, 48))
    im, size = decode_image(path, min_side=32)
    assert size == (64, 96) and im.size == (48, 72)  # the preview, turned
    assert_upright(im)
    im, _ = decode_image(path, min_side=60)  # the preview is too small: demosaiced
    assert im.size == (64, 96)
    assert_upright(im)


def test_broken_raw_is_an_image_error(tmp_path):
    from retriever.errors import ImageError

    path = tmp_path / "broken.cr2"
    path.write_bytes(b"II*\x00" + b"\x00" * 60)
    with pytest.raises(ImageError, match="broken.cr2"):
        decode_image(path)


def test_heic_and_dng_index_and_search_like_jpegs(tmp_path, cli):
    from tests.helpers import write_photo

    root = tmp_path / "media"
    root.mkdir()
    write_heic(root / "phone.heic")
    write_dng(root / "camera.dng")
    write_dng(root / "camera-preview.dng", preview=(72, 48))
    write_photo(root / "plain.jpg", (30, 200, 60))
    db = tmp_path / "db"
    run = cli("index", root, "--db", db, "--model", "retriever-tiny", "--pretrained", "none",
              "--json")
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["run"]["images"] == 4
    for name in ("phone.heic", "camera.dng", "camera-preview.dng"):
        found = cli("search", "--image", root / name, "--to", "images", "--db", db, "--json")
        assert found.exit_code == 0, found.output
        best = json.loads(found.stdout.splitlines()[0])
        assert Path(best["path"]).name == name and best["score"] > 0.999
    again = cli("index", root, "--db", db, "--json")
    assert json.loads(again.stdout)["run"]["encoded"] == 0
