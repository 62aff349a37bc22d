"""OCR words worth keeping (retriever/media/ocr.py): a word is stored when Tesseract is sure
enough of it (the floor) and it looks like a word (`is_word`). Photos without text store no
words at all; the tokens planted on screenshots are stored. The floor was measured by
bench/ocr_floor.py, whose generated images these tests reuse."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from bench.ocr_floor import photo_without_text, screenshot
from retriever.media import ocr
from retriever.media.ocr import MIN_CONFIDENCE, TSV_COLUMNS, is_word, read_words

from .helpers import TINY_ARGS

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="tesseract-ocr is not installed (.ci/run installs it)")


@pytest.mark.parametrize("text", ["INV-48213", "Oslo", "total:", "(receipt)", "2023-04-12",
                                  "45.00", "42", "of", "OK", "Привет", "東京タワー"])
def test_words_are_words(text):
    assert is_word(text)


@pytest.mark.parametrize("text", ["", "©", "|", "=~", "—", "...", "ee", "Qe", "tb", "#)",
                                  "'.'", "=|-a~", "x", "Z", "A", "I", "7"])
def test_stray_marks_and_short_junk_are_not(text):
    assert not is_word(text)


def _tsv(words: list[tuple[str, float, int]]) -> str:
    """Tesseract's TSV for `words` as (text, confidence, line number)."""
    rows = [TSV_COLUMNS] + [(5, 1, 1, 1, line, n, 0, 0, 9, 9, conf, text)
                            for n, (text, conf, line) in enumerate(words, 1)]
    return "".join("\t".join(map(str, row)) + "\n" for row in rows)


def test_unsure_or_junk_words_are_dropped_and_the_rest_kept_in_lines(monkeypatch):
    read = [("ANT", MIN_CONFIDENCE - 1, 1), ("Seed", 17, 1), ("©", 96, 1), ("ee", 90, 1),
            ("INVOICE", 95, 2), ("INV-48213", MIN_CONFIDENCE, 2), ("|", 91, 3), ("of", 88, 3),
            ("7", 80, 3), ("12", 80, 3), ("days", MIN_CONFIDENCE + 5, 3)]
    monkeypatch.setattr(ocr, "run_tesseract", lambda png, timeout: _tsv(read))
    assert read_words(Image.new("RGB", (40, 20))) == "INVOICE INV-48213\nof 12 days"
    assert read_words(Image.new("RGB", (40, 20)), min_confidence=0).startswith("ANT Seed\n")


@needs_tesseract
@pytest.mark.slow
def test_photos_without_text_store_no_words(tmp_path, cli):
    root = tmp_path / "photos"
    root.mkdir()
    for number in range(10):  # one photo of each look: smooth, noisy, busy
        photo_without_text(number, seed=3).save(root / f"photo_{number}.jpg", quality=92)
    run = cli("index", root, "--db", tmp_path / "db", *TINY_ARGS, "--ocr", "--json")
    assert run.exit_code == 0, run.output
    out = json.loads(run.stdout)
    assert out["images"] == 10 and out["image_texts"] == 0 and out["run"]["ocr_passages"] == 0


@needs_tesseract
@pytest.mark.slow
def test_tokens_planted_on_screenshots_are_stored(tmp_path, cli):
    root = tmp_path / "shots"
    root.mkdir()
    planted = {}
    for number in range(2):  # a UI window and a receipt
        image, tokens = screenshot(number, seed=5)
        image.save(root / f"shot_{number}.png")
        planted[f"shot_{number}.png"] = [t for t in tokens if "-" in t]  # REF-, INV-, dates
    db = tmp_path / "db"
    run = cli("index", root, "--db", db, *TINY_ARGS, "--ocr", "--json")
    assert run.exit_code == 0, run.output
    found = cli("search", "receipt", "--to", "texts", "--db", db, "--json", "-k", "50")
    stored: dict[str, str] = {}
    for row in map(json.loads, found.stdout.splitlines()):
        name = row["path"].rsplit("/", 1)[-1]
        stored[name] = stored.get(name, "") + " " + row["passage"]
    for name, tokens in planted.items():
        assert tokens and all(t in stored.get(name, "") for t in tokens), (tokens, stored)
