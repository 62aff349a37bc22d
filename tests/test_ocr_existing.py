"""`index --ocr` on an index built without it reads the words of the images stored before and
encodes nothing again; an image whose words were read (words found or not) is not read again.
Proved by counting: the run's report, and the images handed to Tesseract."""

from __future__ import annotations

import json
import shutil

import pytest
from sqlalchemy import text

from bench.ocr_floor import photo_without_text
from index.kinds import IMAGE, IMAGE_TEXT
from index.records import FileRecord, ItemRecord
from index.store import Store
from retriever.media import ocr

from .helpers import TINY_ARGS, engine_at_version, vec, write_invoice

SCAN, PHOTO = "/m/scan.png", "/m/photo.jpg"

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="tesseract-ocr is not installed (.ci/run installs it)")


@pytest.fixture
def tesseract_calls(monkeypatch) -> list[int]:
    """One entry per image handed to Tesseract from now on (its PNG's size)."""
    calls: list[int] = []
    real = ocr.run_tesseract

    def counted(png: bytes, timeout: float) -> str:
        calls.append(len(png))
        return real(png, timeout)

    monkeypatch.setattr(ocr, "run_tesseract", counted)
    return calls


def _index(cli, root, db, *extra) -> dict:
    run = cli("index", root, "--db", db, *TINY_ARGS, *extra, "--json")
    assert run.exit_code == 0, run.output
    return json.loads(run.stdout)


def _images(cli, db) -> dict[str, tuple]:
    """Each image's score for one query (unchanged vectors score the same) and its tags."""
    found = cli("search", "a photo", "--to", "images", "--db", db, "--json")
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    return {row["path"]: (row["score"], row["tags"]) for row in rows}


@needs_tesseract
@pytest.mark.slow
def test_ocr_on_an_existing_index_reads_only_the_words(tmp_path, cli, tesseract_calls):
    root, db = tmp_path / "media", tmp_path / "db"
    root.mkdir()
    write_invoice(root / "scan.png")
    for number in (0, 8):  # a gradient, and marks Tesseract misreads
        photo_without_text(number, seed=3).save(root / f"photo_{number}.jpg")
    first = _index(cli, root, db)
    assert first["run"]["encoded"] == 3 and first["image_texts"] == 0 and not tesseract_calls
    assert cli("tag", "red", "green", "--db", db).exit_code == 0
    before = _images(cli, db)
    assert len(before) == 3 and all(tags for _, tags in before.values())

    second = _index(cli, root, db, "--ocr")
    assert second["run"]["encoded"] == 0 and second["run"]["ocr_only"] == 3
    assert second["run"]["ocr_passages"] == 1 and second["image_texts"] == 1
    assert second["images"] == 3 and len(tesseract_calls) == 3
    assert _images(cli, db) == before  # not encoded again, and their tags kept
    words = cli("search", "invoice", "--to", "texts", "--db", db, "--json")
    rows = [json.loads(line) for line in words.stdout.splitlines()]
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == ["scan.png"]
    assert "INVOICE 2023" in rows[0]["passage"]

    third = _index(cli, root, db, "--ocr")  # all read: the photos without words too
    assert third["run"]["encoded"] == 0 and third["run"]["ocr_only"] == 0
    assert len(tesseract_calls) == 3 and third["image_texts"] == 1


@needs_tesseract
@pytest.mark.slow
def test_images_indexed_with_ocr_are_not_read_again(tmp_path, cli, tesseract_calls):
    root, db = tmp_path / "media", tmp_path / "db"
    root.mkdir()
    write_invoice(root / "scan.png")
    photo_without_text(8, seed=4).save(root / "photo.jpg")
    first = _index(cli, root, db, "--ocr")
    assert first["run"]["encoded"] == 2 and first["run"]["words_read"] == 2
    assert len(tesseract_calls) == 2
    photo_without_text(0, seed=4).save(root / "new.jpg")  # a new image: read with the rest
    again = _index(cli, root, db, "--ocr")
    assert again["run"]["encoded"] == 1 and again["run"]["ocr_only"] == 0
    assert len(tesseract_calls) == 3 and again["image_texts"] == 1


def test_an_older_store_knows_which_images_had_their_words_read(stores):
    """Migration 9 marks the images with words stored as read; a mark lasts until the file's
    bytes are written anew."""
    url = stores.url()
    engine = engine_at_version(url, 7)  # 8 fills the keyword rows from what 7 held
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO files (id, path, kind, content_hash, size, mtime, "
                          "indexed_at, taken_at) VALUES (1, :scan, 'image', 'h1', 1, 1.0, 1.0, "
                          "1.0), (2, :photo, 'image', 'h2', 1, 1.0, 1.0, 1.0)"),
                     {"scan": SCAN, "photo": PHOTO})
        conn.execute(text("INSERT INTO items (id, file_id, kind, position, passage) VALUES "
                          "(1, 1, 'image', 0, NULL), (2, 1, 'image-text', 1, 'INVOICE 2023'), "
                          "(3, 2, 'image', 0, NULL)"))
    engine.dispose()
    store = Store(url)
    try:
        assert store.images_without_words() == [PHOTO]
        store.mark_words_read([PHOTO])
        assert store.images_without_words() == []
        store.write_files([(FileRecord(SCAN, IMAGE, "h3", 2, 2.0),
                            [ItemRecord(IMAGE, 0, None, vec(1)),
                             ItemRecord(IMAGE_TEXT, 1, "TOTAL 45.00", vec(2))])])
        assert store.images_without_words() == [SCAN]  # new bytes: not read yet
    finally:
        store.close()
