"""Scanning folders, opening images, and cutting documents into passages."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retriever.errors import FolderNotFound, ImageError
from retriever.media.images import open_image
from retriever.media.passages import read_text, split_passages
from retriever.media.scan import IMAGE, TEXT, scan

from .helpers import write_photo


def test_scan_finds_images_and_texts_and_links_sidecars(media_folder):
    result = scan([media_folder])
    by_name = {f.path.name: f for f in result.files}
    assert {n for n, f in by_name.items() if f.kind == IMAGE} == {
        "red.jpg", "green.jpg", "blue.jpg", "broken.jpg"}
    assert {n for n, f in by_name.items() if f.kind == TEXT} == {"red.txt", "trip.md", "todo.txt"}
    assert by_name["red.jpg"].sidecar == media_folder / "photos" / "red.txt"
    assert by_name["green.jpg"].sidecar is None


def test_hidden_and_excluded_paths_are_skipped(tmp_path):
    write_photo(tmp_path / "keep.jpg", (1, 2, 3))
    write_photo(tmp_path / ".hidden.jpg", (1, 2, 3))
    write_photo(tmp_path / ".cache" / "inside.jpg", (1, 2, 3))
    write_photo(tmp_path / "raw" / "skip.jpg", (1, 2, 3))
    (tmp_path / "draft.md").write_text("x")
    (tmp_path / "other.pages").write_text("not media")
    names = {f.path.name for f in scan([tmp_path], exclude=["raw/*", "*.md"]).files}
    assert names == {"keep.jpg"}


def test_broken_symlink_is_a_failure_not_a_crash(tmp_path):
    write_photo(tmp_path / "ok.jpg", (1, 2, 3))
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    result = scan([tmp_path])
    assert [f.path.name for f in result.files] == ["ok.jpg"]
    assert [f.path for f in result.failures] == [str(tmp_path / "gone.jpg")]


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FolderNotFound, match=f"{tmp_path / 'nope'} does not exist"):
        scan([tmp_path / "nope"])


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert open_image(tmp_path / "rot.jpg").size == (20, 40)


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("P", (8, 8), i) for i in (1, 2)]
    frames[0].putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    frames[1].putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert open_image(tmp_path / "a.gif").getpixel((0, 0)) == (255, 0, 0)


def test_transparent_palette_and_16_bit_images_become_rgb(tmp_path):
    p = Image.new("P", (4, 4), 0)
    p.info["transparency"] = 0
    p.save(tmp_path / "t.png", transparency=0)
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert open_image(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)
    deep = open_image(tmp_path / "deep.png")
    assert deep.mode == "RGB" and deep.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 truncated jpeg", b"hello, I am text"])
def test_unreadable_images_raise_image_error_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="bad.jpg: not a readable image"):
        open_image(path)


def test_pixel_cap(tmp_path):
    write_photo(tmp_path / "big.jpg", (1, 2, 3), size=(200, 100))
    with pytest.raises(ImageError, match="exceeds the 10000-pixel cap"):
        open_image(tmp_path / "big.jpg", max_pixels=10_000)


def test_passages_fit_the_budget_and_keep_every_word(tiny_encoder):
    text = "Intro line.\n\n" + " ".join(f"word{i} and some filler" for i in range(60))
    passages = split_passages(text, tiny_encoder.count_tokens, tiny_encoder.text_budget)
    assert len(passages) > 3 and [p.position for p in passages] == list(range(len(passages)))
    for p in passages:
        assert tiny_encoder.count_tokens(p.text) <= tiny_encoder.text_budget
    assert " ".join(p.text for p in passages).split() == text.split()


def test_short_paragraphs_share_a_passage(tiny_encoder):
    passages = split_passages("a cat.\n\na dog.", tiny_encoder.count_tokens, 30)
    assert [p.text for p in passages] == ["a cat. a dog."]


def test_non_utf8_text_is_decoded_with_replacement(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    assert read_text(tmp_path / "latin1.txt") == "caf\ufffd au lait"
    assert read_text(tmp_path / "latin1.txt", max_bytes=3) == "caf"
