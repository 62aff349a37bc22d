"""The snippet a result shows: about SNIPPET_CHARS of its passage (or caption) around the first
word of the query found in it, with `marks`, the character spans of every query word inside it.

Words match as the keyword search matches them (index.keywords): whole words, ignoring case
and diacritics ("Café" is "cafe"); a typed token of several parts (INV-48213, 4471-2209,
e-mail) is one match of its parts in a row (joined by punctuation or a space), marked whole.
The text is compared folded (NFKD, combining marks dropped, casefolded) through a map back
to the original characters, so a mark is always a span of the snippet as shown. A snippet is
cut at spaces, never inside a word, and says where it was cut with "…".
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

SNIPPET_CHARS = 200  # the most characters of text a snippet shows (plus "…" at each cut end)
LEAD = 60  # characters shown before the first match, when there are that many
ELLIPSIS = "…"
SPACE = re.compile(r"\s")
WORD_PART = re.compile(r"\w+")
JOIN = r"\W{1,3}"  # between a token's parts: INV-48213, 4471/2209, INV 48213 (as a phrase)
MAX_WORDS = 32  # a query's first words that are marked (a pasted paragraph marks no more)
MAX_PARTS = 16  # a typed token of more parts than this (a-a-a-...) is not marked

MAX_TOKEN = 200  # characters of a typed token compared (no word in a passage is longer)
Span = tuple[int, int]  # [start, end) character offsets


def fold(text: str) -> tuple[str, list[int]]:
    """`text` folded for comparison, and for each folded character the index of the
    original character it came from (one may become several: "ß" -> "ss")."""
    folded: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        plain = "".join(c for c in unicodedata.normalize("NFKD", char)
                        if not unicodedata.combining(c)).casefold()
        folded.append(plain)
        origin.extend([index] * len(plain))
    return "".join(folded), origin


@dataclass(frozen=True)
class Highlighter:
    """The query's words, compiled once; `snippet(text)` for each result."""

    pattern: re.Pattern[str] | None  # None: nothing to mark (no words)

    @classmethod
    def of(cls, query: str | None) -> Highlighter:
        """The words of `query`, a user's text (any characters: nothing in it is syntax)."""
        tokens = []
        for token in (query or "").split()[:MAX_WORDS]:
            parts = WORD_PART.findall(fold(token[:MAX_TOKEN])[0])
            if 0 < len(parts) <= MAX_PARTS:
                tokens.append(JOIN.join(re.escape(p) for p in parts))
        if not tokens:
            return cls(None)
        # longest first: "inv-48213" wins over "inv" where both match at one place
        body = "|".join(sorted(set(tokens), key=len, reverse=True))
        return cls(re.compile(rf"(?<!\w)(?:{body})(?!\w)"))

    def marks(self, text: str) -> list[Span]:
        """Spans of `text` holding a query word, in order, not overlapping."""
        if self.pattern is None:
            return []
        folded, origin = fold(text)
        spans = [(origin[m.start()], origin[m.end() - 1] + 1)
                 for m in self.pattern.finditer(folded) if m.end() > m.start()]
        merged: list[Span] = []
        for start, end in spans:
            if merged and start < merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    def snippet(self, text: str | None) -> tuple[str | None, list[Span]]:
        """(snippet, marks inside it) of `text` (None: no text, no snippet)."""
        if not text or not text.strip():
            return None, []
        marks = self.marks(text)  # the text as it is: the CLI shows its controls as escapes
        start = _cut_start(text, marks[0][0]) if marks else 0
        end = _cut_end(text, start, marks[0][1] if marks else start)
        head = ELLIPSIS if start > 0 else ""
        shown = head + text[start:end] + (ELLIPSIS if end < len(text) else "")
        shift = len(head) - start
        inside = [(max(a, start) + shift, min(b, end) + shift) for a, b in marks
                  if a < end and b > start]
        return shown, inside


def _cut_start(text: str, first: int) -> int:
    """Where a snippet showing the match at `first` starts: LEAD characters before it, moved
    forward to the start of a word (never past the match)."""
    start = max(0, first - LEAD)
    if start == 0:
        return 0
    space = SPACE.search(text, start - 1, first)
    return space.end() if space else first


def _cut_end(text: str, start: int, must_show: int) -> int:
    """Where a snippet from `start` ends: SNIPPET_CHARS on, moved back to the end of a word
    (but showing the first match whole, up to `must_show`)."""
    end = start + SNIPPET_CHARS
    if end >= len(text):
        return len(text)
    spaces = [m.start() for m in SPACE.finditer(text, must_show, end + 1)]
    return spaces[-1] if spaces and spaces[-1] > start else max(end, must_show)


NO_WORDS = Highlighter(None)  # results of a query without words: snippets, nothing marked
