"""PDF text, page by page (pypdfium2), each piece with its 1-based page.

A page with no text but an image on it is a scan: with --ocr it is rendered (at most 300 dpi,
OCR_MAX_SIDE px and `max_pixels`) and read by Tesseract (retriever.media.ocr); without, the
file's pages so are noted once (`<path>: no text layer on pages 2-3; index with --ocr to read
them`), and a PDF of scans alone is a `NoTextLayer` failure. An encrypted PDF, or one PDFium
cannot open, is a `DocumentError`; a page that fails to load ends the reading there (noted).
At most MAX_PAGES pages are read: a file can claim a million.

PDFium is not thread-safe and the reader threads read files side by side: every call into it
holds its lock (`_pdfium`; Tesseract runs outside it).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO

from retriever.errors import DocumentError, ImageError, NoTextLayer
from retriever.media.documents import DocumentLimits, Pieces

if TYPE_CHECKING:
    import pypdfium2 as pdfium
    from PIL import Image

MAX_PAGES = 5000  # pages read from one PDF; a 5000-page one is already a rare book
OCR_DPI = 300  # a scan rendered finer than this reads no better and takes longer
OCR_MAX_SIDE = 3000  # px; retriever.media.ocr shrinks larger images to this anyway
# PDFium's own error codes (FPDF_GetLastError) for a document it cannot open
_PASSWORD, _FORMAT = 4, 3
_LOCK = threading.Lock()
# seconds a reader waits for PDFium: longer, and another file holds it in a call that does not
# end (its reader given up by the time limits): this file is tried again next run
LOCK_WAIT = 300.0


def read_pdf(fh: BinaryIO, path: str, limits: DocumentLimits, out: Pieces) -> None:
    """The text of each page into `out`; scanned pages OCR'd with `limits.ocr`, else noted.
    Raises DocumentError (encrypted, damaged), NoTextLayer (nothing but scans)."""
    scanned: list[int] = []
    with _document(fh, path) as document:
        with _pdfium():
            count = len(document)
        for number in range(1, min(count, MAX_PAGES) + 1):
            if out.full:
                break
            page = _page(document, (number, count), path, out, limits.max_pixels)
            if page is None:  # damaged from here on (noted)
                count = number - 1
                break
            text, image = page
            if image is not None and limits.ocr:
                text = _ocr(image, number, path)
            elif image is not None:
                scanned.append(number)
            out.add(text, page=number)
    if scanned and not out.pieces:
        raise NoTextLayer(path, page_ranges(scanned))
    if scanned:
        out.notes.append(f"{path}: no text layer on pages {page_ranges(scanned)}; index with "
                         "--ocr to read them")
    if count > MAX_PAGES and not out.full:
        out.notes.append(f"{path}: read the first {MAX_PAGES} of its {count} pages")


@contextmanager
def _pdfium() -> Iterator[None]:
    """PDFium to this thread alone. Raises TimeoutError (an OSError: a failure of the moment)
    past LOCK_WAIT."""
    if not _LOCK.acquire(timeout=LOCK_WAIT):
        raise TimeoutError(f"PDFium was busy with another PDF for {LOCK_WAIT:g} s")
    try:
        yield
    finally:
        _LOCK.release()


@contextmanager
def _document(fh: BinaryIO, path: str) -> Iterator[pdfium.PdfDocument]:
    import pypdfium2 as pdfium

    with _pdfium():
        try:
            document = pdfium.PdfDocument(fh)
        except pdfium.PdfiumError as err:
            raise _refusal(err, path) from None
    try:
        yield document
    finally:
        with _pdfium():
            document.close()


def _refusal(err: Exception, path: str) -> DocumentError:
    code = getattr(err, "err_code", None)
    if code == _PASSWORD:
        return DocumentError(path, "encrypted PDF (needs a password)")
    detail = str(err).split("(PDFium: ")[-1].rstrip(").") if code == _FORMAT else str(err)
    return DocumentError(path, f"damaged PDF ({detail.lower()})")


def _page(document: pdfium.PdfDocument, at: tuple[int, int], path: str, out: Pieces,
          max_pixels: int) -> tuple[str, Image.Image | None] | None:
    """Page `at` = (number, of count)'s text, and its rendering when it is a scan (no text,
    an image on it); None when it cannot be loaded (noted; the first page: DocumentError)."""
    import pypdfium2 as pdfium

    number, count = at
    with _pdfium():
        try:
            page = document[number - 1]
        except pdfium.PdfiumError as err:
            if number == 1:
                raise _refusal(err, path) from None
            out.notes.append(f"{path}: damaged PDF (page {number} of {count} cannot be read): "
                             f"read pages {page_ranges(list(range(1, number)))}")
            return None
        try:
            textpage = page.get_textpage()
            text = textpage.get_text_bounded()
            textpage.close()
            scan = not text.strip() and _has_image(page)
            return text, (_render(page, max_pixels) if scan else None)
        finally:
            page.close()


def _has_image(page: pdfium.PdfPage) -> bool:
    import pypdfium2.raw as pdfium_c

    return next(iter(page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,))), None) is not None


def _render(page: pdfium.PdfPage, max_pixels: int) -> Image.Image:
    """The page as an RGB image: OCR_DPI, within OCR_MAX_SIDE px and `max_pixels`."""
    width, height = page.get_size()  # points, 1/72 inch
    scale = min(OCR_DPI / 72, OCR_MAX_SIDE / max(width, height, 1),
                math.sqrt(max_pixels / max(width * height, 1)))
    bitmap = page.render(scale=scale)
    try:
        return bitmap.to_pil().convert("RGB")  # a copy: the bitmap is freed here, locked
    finally:
        bitmap.close()


def _ocr(image: Image.Image, number: int, path: str) -> str:
    from retriever.media.ocr import read_words

    try:
        return read_words(image)
    except ImageError as err:  # Tesseract failed on it
        raise DocumentError(path, f"page {number}: {err}") from None


def page_ranges(pages: list[int]) -> str:
    """1, 2, 3, 5, 7, 8 -> '1-3, 5, 7-8'."""
    ranges: list[list[int]] = []
    for page in pages:
        if ranges and page == ranges[-1][1] + 1:
            ranges[-1][1] = page
        else:
            ranges.append([page, page])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
