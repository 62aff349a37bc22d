"""Documents as text, each piece with where it came from: PDF pages, DOCX/ODT/EPUB/HTML
sections (the heading it came under), RTF and plain text.

    suffix                  read with     where a piece came from
    .pdf                    pypdfium2     its page, 1-based (scanned pages: Tesseract, --ocr)
    .docx                   python-docx   the heading (Heading/Title style) above it
    .odt                    odfpy         the heading (text:h) above it
    .epub                   ebooklib      the chapter's title, then its h1-h3 headings
    .html .htm              selectolax    the h1-h3 heading above it (script, style dropped)
    .rtf                    striprtf      -
    .txt .md .rst .org .csv as text       -

`read_document` returns the pieces (text, page, section) in reading order and what the reader
noted about the file (pages it could not read); `document_passages` cuts them into passages the
text encoder takes, numbered 0..n-1 across the file. Everything is bounded: the extracted text
by `max_text_bytes` (the rest is not read), a PDF by MAX_PAGES, the text parts inside a zipped
format by MAX_UNPACKED (zip bombs), HTML by MAX_HTML_DEPTH (the parser is quadratic in depth);
the reader's per-file CPU and wall limits (retriever.ingest.readers) hold on top of these.
A file that cannot be read raises `DocumentError` (its path and what is wrong).
"""

from __future__ import annotations

import functools
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from retriever.errors import DocumentError
from retriever.media.images import DEFAULT_MAX_PIXELS
from retriever.media.passages import DEFAULT_MAX_TEXT_BYTES, Passage, read_text, split_passages

PLAIN_SUFFIXES = frozenset({".txt", ".md", ".rst", ".org", ".csv"})
DOCUMENT_SUFFIXES = PLAIN_SUFFIXES | {".pdf", ".docx", ".odt", ".epub", ".html", ".htm", ".rtf"}
# The text parts (XML, XHTML) of a DOCX/ODT/EPUB may unpack to this much in all; a real book's
# are a few MB, a zip bomb's are gigabytes from a few hundred kB
MAX_UNPACKED = 64 * 2**20
MAX_HTML_DEPTH = 2000  # nested tags; lexbor takes ~50 s for 10^5 (quadratic), ~10 ms for 2000
_TEXT_PARTS = (".xml", ".xhtml", ".html", ".htm", ".opf", ".ncx", ".rels")
SECTION_CHARS = 200  # a heading longer than this is cut (it opens every passage under it)


@dataclass(frozen=True)
class Piece:
    text: str
    page: int | None = None  # 1-based page of a PDF
    section: str | None = None  # the heading it came under


@dataclass(frozen=True)
class DocumentLimits:
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES  # extracted text beyond this is not read
    ocr: bool = False  # read PDF pages without a text layer with Tesseract
    max_pixels: int = DEFAULT_MAX_PIXELS  # a page rendered for OCR has at most this many


@dataclass(frozen=True)
class DocumentText:
    """What the text handler decodes a document to: its passages, and notes for the report
    (`<path>: no text layer on pages 2-3; ...`)."""

    passages: list[Passage]
    notes: tuple[str, ...] = ()


@dataclass
class Pieces:
    """Pieces gathered in reading order, up to `max_bytes` of UTF-8 text in all; `full` once
    the cap is reached (readers stop there). Paragraphs added under the same page and section
    join one piece, a blank line apart (a paragraph break for the passage splitter)."""

    max_bytes: int
    pieces: list[Piece] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    used: int = 0

    @property
    def full(self) -> bool:
        return self.used >= self.max_bytes

    def add(self, text: str, page: int | None = None, section: str | None = None) -> None:
        text = text.strip()
        if not text or self.full:
            return
        raw = text.encode("utf-8", errors="replace")
        if self.used + len(raw) > self.max_bytes:
            text = raw[:self.max_bytes - self.used].decode("utf-8", errors="ignore")
        self.used += len(text.encode("utf-8", errors="replace")) + 2
        last = self.pieces[-1] if self.pieces else None
        if last is not None and (last.page, last.section) == (page, section):
            self.pieces[-1] = replace(last, text=f"{last.text}\n\n{text}")
        else:
            self.pieces.append(Piece(text, page, section))


def read_document(fh: BinaryIO, path: str, limits: DocumentLimits) -> Pieces:
    """The text of the document open in `fh` (at its start), read by its suffix (`path`'s: a
    stored path key, named in errors). Raises DocumentError, OSError; with --ocr, OcrUnavailable
    and TimeoutError from Tesseract."""
    suffix = _suffix(path)
    out = Pieces(limits.max_text_bytes)
    reader = _readers().get(suffix)
    if reader is None:
        out.add(read_text(fh, limits.max_text_bytes))
    else:
        reader(fh, path, limits, out)
    return out


def document_passages(pieces: list[Piece], count_tokens: Callable[[str], int], budget: int,
                      overlap: int = 0) -> list[Passage]:
    """Each piece cut into passages (its section opening each), with its page and section,
    numbered 0..n-1 across the document."""
    passages: list[Passage] = []
    for piece in pieces:
        for p in split_passages(piece.text, count_tokens, budget, overlap=overlap,
                                heading=piece.section):
            passages.append(replace(p, position=len(passages), page=piece.page,
                                    section=piece.section))
    return passages


def _suffix(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _read_rtf(fh: BinaryIO, path: str, limits: DocumentLimits, out: Pieces) -> None:
    from striprtf.striprtf import rtf_to_text

    text = read_text(fh, limits.max_text_bytes)
    if not text.lstrip().startswith("{\\rtf"):
        raise DocumentError(path, "damaged RTF (it does not start with {\\rtf)")
    out.add(rtf_to_text(text, errors="replace"))


def _read_html(fh: BinaryIO, path: str, limits: DocumentLimits, out: Pieces) -> None:
    html_pieces(read_text(fh, limits.max_text_bytes), path, out)


# a tag as the depth check sees it: its slash, its name, and whether it closes itself
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)[^<>]*?(/?)>")
# tags that never hold others, or whose end tag may be left out (they do not nest)
_FLAT = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "param", "source", "track", "wbr", "p", "li", "dt", "dd", "tr", "td", "th",
                   "option", "thead", "tbody", "tfoot", "colgroup", "rp", "rt"})
_HEADINGS = ("h1", "h2", "h3")


def html_pieces(html: str, path: str, out: Pieces, section: str | None = None) -> None:
    """The visible text of an HTML or XHTML page, a piece for each h1-h3 heading's part;
    text before the first heading is under `section`. Raises DocumentError past
    MAX_HTML_DEPTH nested tags."""
    from selectolax.lexbor import LexborHTMLParser

    depth = _html_depth(html)
    if depth > MAX_HTML_DEPTH:
        raise DocumentError(path, f"HTML nested {depth} tags deep (at most {MAX_HTML_DEPTH})")
    tree = LexborHTMLParser(html.replace("\x00", ""))  # NUL marks the headings below
    tree.strip_tags(["script", "style", "noscript", "template"])
    titles = []
    for i, heading in enumerate(tree.css(", ".join(_HEADINGS))):
        titles.append(heading.text(separator=" ", strip=True)[:SECTION_CHARS] or None)
        heading.replace_with(f"\x00{i}\x00")  # a marker: the text splits at its headings
    body = tree.body if tree.body is not None else tree.root
    text = body.text(separator="\n") if body is not None else ""
    parts = text.split("\x00")  # text, heading number, text, heading number, ...
    out.add(parts[0], section=section)
    for number, part in zip(parts[1::2], parts[2::2], strict=True):
        out.add(part, section=titles[int(number)] or section)


def _html_depth(html: str) -> int:
    """The deepest nesting of tags in `html`, counted from its tags alone (linear)."""
    depth = deepest = 0
    for closing, name, self_closed in _TAG.findall(html):
        if self_closed or name.lower() in _FLAT:
            continue
        depth = max(depth - 1, 0) if closing else depth + 1
        deepest = max(deepest, depth)
    return deepest


def check_zip(fh: BinaryIO, path: str, kind: str) -> None:
    """Refuse a zipped document (DOCX, ODT, EPUB) that is no zip, or whose text parts unpack
    to more than MAX_UNPACKED (what the zip's directory says; zipfile reads no more)."""
    try:
        with zipfile.ZipFile(fh) as archive:
            unpacked = sum(i.file_size for i in archive.infolist()
                           if i.filename.lower().endswith(_TEXT_PARTS))
    except (zipfile.BadZipFile, ValueError, EOFError) as err:
        raise DocumentError(path, f"damaged {kind} ({err})") from None
    finally:
        fh.seek(0)
    if unpacked > MAX_UNPACKED:
        raise DocumentError(path, f"{kind} unpacks to {unpacked / 2**20:.0f} MB of text (at "
                                  f"most {MAX_UNPACKED // 2**20} MB: a zip bomb?)")


@functools.cache  # imported when first read: office and pdf import this module
def _readers() -> dict[str, Callable[[BinaryIO, str, DocumentLimits, Pieces], None]]:
    from retriever.media.office import read_docx, read_epub, read_odt
    from retriever.media.pdf import read_pdf

    return {".pdf": read_pdf, ".docx": read_docx, ".odt": read_odt, ".epub": read_epub,
            ".html": _read_html, ".htm": _read_html, ".rtf": _read_rtf}
