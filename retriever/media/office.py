"""Zipped documents as text: DOCX (python-docx), ODT (odfpy), EPUB (ebooklib + selectolax).
Each paragraph goes under the heading above it: a DOCX paragraph styled Heading N or Title, an
ODT text:h, an EPUB chapter's title from its table of contents, then its h1-h3.

Each is first checked as a zip (`check_zip`: its text parts' unpacked size is bounded), so a
zip bomb is refused before any library unpacks it. What the libraries raise on a damaged file
is a `DocumentError`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO
from xml.parsers.expat import ExpatError
from xml.sax import SAXException

from retriever.errors import DocumentError
from retriever.media.documents import SECTION_CHARS, DocumentLimits, Pieces, check_zip, html_pieces

# what the libraries raise on a damaged file (a missing part, bad XML, a broken zip)
_DAMAGED: tuple[type[Exception], ...] = (zipfile.BadZipFile, KeyError, ValueError, EOFError,
                                         ExpatError, SAXException, AttributeError, TypeError)


@contextmanager
def _damaged(path: str, kind: str) -> Iterator[None]:
    """A library's error while reading as the file's DocumentError (lxml's are ValueErrors)."""
    try:
        yield
    except _DAMAGED as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DocumentError(path, f"damaged {kind} ({detail})") from None


def read_docx(fh: BinaryIO, path: str, limits: DocumentLimits, out: Pieces) -> None:
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table

    check_zip(fh, path, "DOCX")
    section = None
    try:
        with _damaged(path, "DOCX"):
            document = docx.Document(fh)
            for block in document.iter_inner_content():
                if out.full:
                    break
                if isinstance(block, Table):
                    out.add(_table_text(block), section=section)
                    continue
                style = block.style.name if block.style is not None else ""
                if style and style.startswith(("Heading", "Title")) and block.text.strip():
                    section = block.text.strip()[:SECTION_CHARS]
                else:
                    out.add(block.text, section=section)
    except PackageNotFoundError as err:
        raise DocumentError(path, f"damaged DOCX ({err})") from None


def _table_text(table: Any) -> str:
    """A table's rows, a line each, cells ' | ' apart (nested tables' text included)."""
    return "\n".join(" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows)


def read_odt(fh: BinaryIO, path: str, limits: DocumentLimits, out: Pieces) -> None:
    from odf import opendocument, teletype
    from odf.namespaces import TEXTNS

    check_zip(fh, path, "ODT")
    with _damaged(path, "ODT"):
        body = opendocument.load(fh).text
        section = None
        stack = list(reversed(body.childNodes))  # a stack, not recursion: any depth
        while stack and not out.full:
            node = stack.pop()
            if node.nodeType != node.ELEMENT_NODE:
                continue
            if node.qname == (TEXTNS, "h"):
                section = teletype.extractText(node).strip()[:SECTION_CHARS] or section
            elif node.qname == (TEXTNS, "p"):
                out.add(teletype.extractText(node), section=section)
            else:
                stack.extend(reversed(node.childNodes))


def read_epub(fh: BinaryIO, path: str, limits: DocumentLimits, out: Pieces) -> None:
    import ebooklib
    from ebooklib import epub

    check_zip(fh, path, "EPUB")
    with _damaged(path, "EPUB"):
        try:
            book = epub.read_epub(fh, options={"ignore_ncx": True})
        except epub.EpubException as err:
            raise DocumentError(path, f"damaged EPUB ({err.msg})") from None
        titles = dict(_toc_titles(book.toc))
        for idref, _ in book.spine:
            item = book.get_item_with_id(idref)
            if out.full:
                break
            if item is None or item.get_type() != ebooklib.ITEM_DOCUMENT:
                continue
            xhtml = item.get_content().decode("utf-8", errors="replace")
            html_pieces(xhtml, path, out, titles.get(item.file_name))


def _toc_titles(toc: Any) -> Iterator[tuple[str, str]]:
    """(file name, title) of each entry of an EPUB's table of contents, the first per file
    first; the toc nests (section, [entries]) tuples, walked with a stack."""
    stack = list(reversed(list(toc)))
    seen: set[str] = set()
    while stack:
        entry = stack.pop()
        if isinstance(entry, (tuple, list)):
            stack.extend(reversed([entry[0], *entry[1]]) if len(entry) == 2 else [])
            continue
        href = (getattr(entry, "href", None) or "").split("#")[0]
        title = (getattr(entry, "title", None) or "").strip()[:SECTION_CHARS]
        if href and title and href not in seen:
            seen.add(href)
            yield href, title
