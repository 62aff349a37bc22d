"""Words inside images (`retriever index --ocr`): Tesseract, through pytesseract.

Tesseract is a system program (Debian: `apt-get install tesseract-ocr`); indexing without --ocr
never looks for it. Words Tesseract is at least `min_confidence` sure of are kept, in reading
order, one line of the image per line of text. Lines with no letter or digit in them (stray
marks read as punctuation) are dropped.
"""

from __future__ import annotations

from PIL import Image

from retriever.errors import OcrUnavailable

INSTALL = ("--ocr needs the Tesseract program: install it (Debian/Ubuntu: apt-get install "
           "tesseract-ocr; macOS: brew install tesseract), or index without --ocr")
MIN_CONFIDENCE = 60  # percent; Tesseract's word confidence below which words are noise
MAX_SIDE = 3000  # px: larger images are shrunk first (OCR time grows with the pixel count)


def check_tesseract() -> None:
    """Raise `OcrUnavailable` (saying how to install it) when Tesseract cannot be run."""
    import pytesseract

    try:
        pytesseract.get_tesseract_version()
    except (pytesseract.TesseractNotFoundError, OSError):
        raise OcrUnavailable(INSTALL) from None


def read_words(image: Image.Image, min_confidence: int = MIN_CONFIDENCE) -> str:
    """The confident words of an RGB image, a line of text per line found ('' for none)."""
    import pytesseract

    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE))
    data = pytesseract.image_to_data(image, output_type=pytesseract.Output.DICT)
    lines: dict[tuple[int, int, int], list[str]] = {}
    for i, word in enumerate(data["text"]):
        if word.strip() and float(data["conf"][i]) >= min_confidence:
            key = (data["block_num"][i], data["par_num"][i], data["line_num"][i])
            lines.setdefault(key, []).append(word.strip())
    kept = (" ".join(words) for _, words in sorted(lines.items()))
    return "\n".join(line for line in kept if any(c.isalnum() for c in line))
