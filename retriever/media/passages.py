"""Splitting text documents into passages that fit the text encoder's context.

CLIP-style text towers read at most `context_length` tokens (77 for ViT-B-32) and truncate the
rest silently, so a document is cut into passages of whole words, each within budget. Paragraph
breaks are preferred cut points: short paragraphs share a passage, long ones are split.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from retriever.media.scan import open_regular

# Documents larger than this are read up to the cap (a log file dropped into a photo folder
# must not take the run down); change it with `--max-text-bytes`.
DEFAULT_MAX_TEXT_BYTES = 2_000_000
_PARAGRAPH = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Passage:
    position: int  # 0-based passage number within its file
    text: str
    page: int | None = None  # the document's page it came from, 1-based (PDF)
    section: str | None = None  # the heading or chapter it came under (DOCX, EPUB, HTML)


# A byte-order mark names its encoding (UTF-32's before UTF-16's: FF FE 00 00 starts both).
BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
        (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"))


def read_text(source: Path | BinaryIO, max_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> str:
    """The text of `source` (a regular file's path, or an open file), up to `max_bytes`: in
    the encoding its byte-order mark names (UTF-8/16/32; Windows' Notepad writes UTF-16 so),
    else UTF-8; the mark left out, bytes that do not decode become U+FFFD. Raises OSError."""
    if isinstance(source, Path):
        with open_regular(source) as fh:
            raw = fh.read(max_bytes)
    else:
        raw = source.read(max_bytes)
    bom, encoding = next(((b, e) for b, e in BOMS if raw.startswith(b)), (b"", "utf-8"))
    return raw[len(bom):].decode(encoding, errors="replace")


def split_passages(text: str, count_tokens: Callable[[str], int], budget: int) -> list[Passage]:
    """Cut `text` into passages of at most `budget` tokens.

    `count_tokens(word)` counts one word's tokens without start/end markers. CLIP's BPE encodes
    each whitespace-separated word on its own, so a passage's cost is the sum over its words.
    """
    passages: list[str] = []
    words: list[str] = []
    used = 0
    for paragraph in _PARAGRAPH.split(text):
        for word in paragraph.split():
            cost = count_tokens(word)
            if words and used + cost > budget:
                passages.append(" ".join(words))
                words, used = [], 0
            words.append(word)
            used += cost
        if words and used >= budget // 2:  # a paragraph end is a good cut once half full
            passages.append(" ".join(words))
            words, used = [], 0
    if words:
        passages.append(" ".join(words))
    return [Passage(i, p) for i, p in enumerate(passages)]
