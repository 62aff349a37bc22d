"""OCR leaves nothing behind: the photo reaches Tesseract through a pipe (no copy of it in a
temporary folder where other users could read it), and a Tesseract that never ends is killed
with its children at the time limit, the call failing with one line.

A stand-in `tesseract` (a shell script first on PATH) records what it was given and what the
private temporary folder held while it ran; the real one, when installed, reads words without
writing a file either."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from retriever.media.ocr import TSV_COLUMNS, read_words

WORDS = [(5, 1, 1, 1, 1, 1, 0, 0, 9, 9, 96.5, "HELLO"), (5, 1, 1, 1, 1, 2, 9, 0, 9, 9, 12, "noise")]
TSV = "".join("\t".join(map(str, row)) + "\n" for row in [TSV_COLUMNS, *WORDS])
FAKE = f"""#!/bin/sh
if [ "$1" = "--version" ]; then echo "tesseract 5.3.0"; exit 0; fi
ls -A "$PRIVATE" > "$LOG/files"
OUT=/dev/stdout
if [ "$1" = stdin ]; then wc -c > "$LOG/stdin"; else OUT="$2.tsv"; fi  # else: a file's name
if [ "$FAKE_MODE" = hang ]; then
  sleep 1000 &
  echo $! > "$LOG/child"
  echo $$ > "$LOG/self"
  exec sleep 1000
fi
cat > "$OUT" <<'END'
{TSV}END
"""


@pytest.fixture
def fake_tesseract(tmp_path, monkeypatch) -> Path:
    """A stand-in tesseract first on PATH; TMPDIR (and Python's temp folder) a private one.
    Returns the folder it logs to."""
    bin_dir, log, private = tmp_path / "bin", tmp_path / "log", tmp_path / "private"
    for folder in (bin_dir, log, private):
        folder.mkdir()
    private.chmod(0o700)
    script = bin_dir / "tesseract"
    script.write_text(FAKE)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.setenv("PRIVATE", str(private))
    monkeypatch.setenv("LOG", str(log))
    return log


def page() -> Image.Image:
    return Image.new("RGB", (120, 40), "white")


def test_the_image_is_piped_and_no_file_is_written(fake_tesseract):
    assert read_words(page()) == "HELLO"  # the confident word only
    assert (fake_tesseract / "files").read_text() == ""  # nothing in TMPDIR while it ran
    assert int((fake_tesseract / "stdin").read_text()) > 100  # the PNG came on its stdin
    assert list(Path(tempfile.gettempdir()).iterdir()) == []


def test_a_tesseract_that_never_ends_is_killed_with_its_children(fake_tesseract, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "hang")
    with pytest.raises(TimeoutError, match=r"^tesseract was still reading after 2 s: stopped$"):
        read_words(page(), timeout=2)
    pids = [int((fake_tesseract / name).read_text()) for name in ("self", "child")]
    deadline = time.monotonic() + 60  # SIGKILL is immediate; the margin is for a loaded machine
    while any(map(running, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(running, pids))
    assert list(Path(tempfile.gettempdir()).iterdir()) == []


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for its parent is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(shutil.which("tesseract") is None,
                    reason="tesseract-ocr is not installed (.ci/run installs it)")
def test_real_tesseract_reads_words_and_writes_nothing(tmp_path, monkeypatch):
    from tests.helpers import write_invoice

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    image = Image.open(write_invoice(tmp_path / "scan.png")).convert("RGB")
    assert read_words(image) == "INVOICE 2023\nTOTAL 45.00"
    assert list(private.iterdir()) == []
