"""Words inside images (`retriever index --ocr`): the Tesseract program, run here.

Tesseract is a system program (Debian: `apt-get install tesseract-ocr`); indexing without --ocr
never looks for it. Words Tesseract is at least `min_confidence` sure of are kept, in reading
order, one line of the image per line of text. Lines with no letter or digit in them (stray
marks read as punctuation) are dropped.

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

from PIL import Image

from retriever.errors import ImageError, OcrUnavailable

INSTALL = ("--ocr needs the Tesseract program: install it (Debian/Ubuntu: apt-get install "
           "tesseract-ocr; macOS: brew install tesseract), or index without --ocr")
PROGRAM = "tesseract"
MIN_CONFIDENCE = 60  # percent; Tesseract's word confidence below which words are noise
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


def read_words(image: Image.Image, min_confidence: int = MIN_CONFIDENCE,
               timeout: float = TIMEOUT) -> str:
    """The confident words of an RGB image, a line of text per line found ('' for none).
    Raises `ImageError` when Tesseract fails on it, `TimeoutError` when it runs past `timeout`
    seconds (stopped: a failure of the moment, tried again next run)."""
    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE))
    png = io.BytesIO()
    image.save(png, "PNG", compress_level=1)  # the pipe is local: speed over size
    lines: dict[tuple[str, str, str], list[str]] = {}
    for row in _tsv(run_tesseract(png.getvalue(), timeout)):
        word = row["text"].strip()
        if word and float(row["conf"]) >= min_confidence:
            key = (row["block_num"], row["par_num"], row["line_num"])
            lines.setdefault(key, []).append(word)
    kept = (" ".join(words) for _, words in sorted(lines.items(), key=_reading_order))
    return "\n".join(line for line in kept if any(c.isalnum() for c in line))


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


def _reading_order(item: tuple[tuple[str, str, str], list[str]]) -> tuple[int, ...]:
    return tuple(int(part) for part in item[0])
