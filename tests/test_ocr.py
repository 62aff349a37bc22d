"""`retriever index --ocr`: words rendered in an image are read by Tesseract, stored as items of
kind image-text of that image, and found by a text search that returns the image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .helpers import write_invoice

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="tesseract-ocr is not installed (.ci/run installs it)")


@needs_tesseract
def test_words_in_an_image_are_found_by_text_search(tmp_path, cli):
    from tests.helpers import write_photo

    root = tmp_path / "media"
    write_photo(root / "disc.jpg", (220, 30, 30))
    write_invoice(root / "scan.png")
    db = tmp_path / "db"
    run = cli("index", root, "--db", db, "--model", "retriever-tiny", "--pretrained", "none",
              "--ocr", "--json")
    assert run.exit_code == 0, run.output
    out = json.loads(run.stdout)
    assert out["run"]["ocr_passages"] == 1 and out["image_texts"] == 1 and out["images"] == 2
    for target in ("texts", "all"):
        found = cli("search", "invoice", "--to", target, "--db", db, "--json")
        rows = [json.loads(line) for line in found.stdout.splitlines()]
        words = [r for r in rows if r["kind"] == "image-text"]
        assert len(words) == 1 and Path(words[0]["path"]).name == "scan.png", rows
        assert "INVOICE 2023" in words[0]["passage"] and "TOTAL 45.00" in words[0]["passage"]
    images = cli("search", "invoice", "--to", "images", "--db", db, "--json")
    assert all(json.loads(line)["kind"] == "image" for line in images.stdout.splitlines())
    again = json.loads(cli("index", root, "--db", db, "--ocr", "--json").stdout)
    assert again["run"]["encoded"] == 0


def test_without_tesseract_ocr_is_one_line_saying_how_to_install(tmp_path, cli, monkeypatch):
    monkeypatch.setattr("retriever.media.ocr.PROGRAM", "/nonexistent/tesseract")
    root = tmp_path / "media"
    write_invoice(root.mkdir() or root / "scan.png")
    run = cli("index", root, "--db", tmp_path / "db", "--model", "retriever-tiny",
              "--pretrained", "none", "--ocr")
    assert run.exit_code == 2, run.output
    assert run.stderr.count("\n") == 1 and "apt-get install tesseract-ocr" in run.stderr
    plain = cli("index", root, "--db", tmp_path / "db", "--model", "retriever-tiny",
                "--pretrained", "none")
    assert plain.exit_code == 0, plain.output  # indexing without --ocr never needs it
