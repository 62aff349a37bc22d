"""Words inside images (`retriever index --ocr`): the Tesseract program, run here.

Tesseract is a system program (Debian: `apt-get install tesseract-ocr`); indexing without --ocr
never looks for it. A word is kept when Tesseract is at least `min_confidence` sure of it and it
looks like a word (`is_word`): a photo without text (foliage, sky, a tiled floor) makes
Tesseract "read" stray marks, mostly one or two characters or symbols, at low confidence, and
those are not stored. The floor and the rule were chosen by measurement (bench/ocr_floor.py,
bench/RESULTS.md). Kept words come in reading order, one line of the image per line of text.

The image goes to `tesseract stdin stdout tsv` as PNG on its standard input and the words come
back on its standard output: no file is written anywhere (a photo from a private folder is never
copied where others could read it). Tesseract runs in its own process group, and the whole group
is killed when it runs past `timeout`: nothing keeps a core busy after the call has given up.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass

from PIL import Image

from retriever.errors import ImageError, OcrUnavailable

INSTALL = ("--ocr needs the Tesseract program: install it (Debian/Ubuntu: apt-get install "
           "tesseract-ocr; macOS: brew install tesseract), or index without --ocr")
PROGRAM = "tesseract"
# percent: Tesseract's word confidence below which a word is noise. bench/ocr_floor.py, with
# `is_word`: 70 kept 1 junk word on 40 photos without text (60: 5 words on 3 photos) and as
# many planted screenshot tokens as 80 did (269 of 307); 80 kept no junk there, but dropped a
# receipt's "INV-58777", read right at 75%, on another seed's screenshot: 70 is the floor.
MIN_CONFIDENCE = 70
# A lone letter or digit is never kept (a photo's twigs and gravel read as "A", "7"; and
# alone it finds nothing); two-character words are kept when common or digits ("42", "OK").
SHORT_WORDS = frozenset((
    "am", "an", "as", "at", "be", "by", "do", "go", "he", "hi", "id", "if", "in", "is", "it",
    "me", "my", "no", "of", "oh", "ok", "on", "or", "so", "to", "up", "us", "we"))
MAX_SIDE = 3000  # px: larger images are shrunk first (OCR time grows with the pixel count)
# seconds one image may take: a 3000 px page takes Tesseract 2-10 s on one core; the indexer
# gives a whole file (decode + OCR) DEFAULT_READ_TIMEOUT = 60 s
TIMEOUT = 60.0
TSV_COLUMNS = ("level", "page_num", "block_num", "par_num", "line_num", "word_num", "left",
               "top", "width", "height", "conf", "text")


def check_tesseract() -> None:
    """Raise `OcrUnavailable` (saying how to install it) when Tesseract cannot be run."""
    program = shutil.which(PROGRAM)
    try:
        if program is None or subprocess.run([program, "--version"], capture_output=True,
                                             timeout=30).returncode != 0:
            raise OcrUnavailable(INSTALL)
    except (OSError, subprocess.TimeoutExpired):
        raise OcrUnavailable(INSTALL) from None


@dataclass(frozen=True)
class Word:
    """A word as Tesseract read it."""

    text: str
    confidence: float  # percent
    line: tuple[int, int, int]  # (block, paragraph, line) numbers: reading order


def is_word(text: str) -> bool:
    """Whether `text` looks like a word worth storing: three or more letters or digits, or
    two digits, or a common two-letter word; punctuation around it aside."""
    core = text.strip(".,;:!?'\"()[]{}<>«»“”‘’*-_~|/\\")
    letters = sum(c.isalnum() for c in core)
    if letters < 2 or letters * 2 < len(core):  # one character, or mostly symbols: "=|-a~"
        return False
    return letters >= 3 or core.isdigit() or core.lower() in SHORT_WORDS


def scan_words(image: Image.Image, timeout: float = TIMEOUT) -> list[Word]:
    """Every word Tesseract reads in an RGB image, with its confidence, in reading order.
    Raises `ImageError` when Tesseract fails on it, `TimeoutError` when it runs past `timeout`
    seconds (stopped: a failure of the moment, tried again next run)."""
    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE))
    png = io.BytesIO()
    image.save(png, "PNG", compress_level=1)  # the pipe is local: speed over size
    words = [Word(row["text"].strip(), float(row["conf"]),
                  (int(row["block_num"]), int(row["par_num"]), int(row["line_num"])))
             for row in _tsv(run_tesseract(png.getvalue(), timeout)) if row["text"].strip()]
    return sorted(words, key=lambda w: w.line)  # stable: word order kept within a line


def read_words(image: Image.Image, min_confidence: float = MIN_CONFIDENCE,
               timeout: float = TIMEOUT) -> str:
    """The words worth keeping in an RGB image (confident, `is_word`), a line of text per line
    found ('' for none). Raises as `scan_words` does."""
    lines: dict[tuple[int, int, int], list[str]] = {}
    for word in scan_words(image, timeout):
        if word.confidence >= min_confidence and is_word(word.text):
            lines.setdefault(word.line, []).append(word.text)
    return "\n".join(" ".join(words) for words in lines.values())


def run_tesseract(png: bytes, timeout: float) -> str:
    """Tesseract's TSV for a PNG, piped in and out; its process group killed past `timeout`."""
    program = shutil.which(PROGRAM)
    if program is None:
        raise OcrUnavailable(INSTALL)
    process = subprocess.Popen(  # noqa: SIM115 (communicate() closes it, or _kill_group)
        [program, "stdin", "stdout", "tsv"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True)  # its own group: killed as one
    try:
        out, err = process.communicate(png, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise TimeoutError(f"tesseract was still reading after {timeout:g} s: stopped") \
            from None
    except BaseException:  # interrupted (Ctrl-C): nothing of it keeps running either
        _kill_group(process)
        raise
    if process.returncode != 0:
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise ImageError(f"tesseract failed (exit status {process.returncode}: {reason[0]})")
    return out.decode(errors="replace")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill `process`'s group (its children too) and reap it. Called before it is reaped, so
    its pid (the group's id) cannot belong to anything else yet."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group has ended
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def _tsv(text: str) -> list[dict[str, str]]:
    """Tesseract's TSV rows (one per page, block, paragraph, line and word) as dicts."""
    rows = [line.split("\t") for line in text.splitlines()[1:]]  # [0]: the column names
    return [dict(zip(TSV_COLUMNS, row, strict=True)) for row in rows if len(row) == 12]
