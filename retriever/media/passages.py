"""Splitting text documents into passages that fit the text encoder's context.

CLIP-style text towers read at most `context_length` tokens (77 for ViT-B-32) and truncate the
rest silently, so a document is cut into passages, each within budget. Cuts fall between
sentences: a paragraph end is preferred once a passage is half full, then a sentence end; only
a sentence longer than a passage is cut between words (into near-equal pieces, so no passage is
a stray tail like "shoes."), and only a word longer than a passage between characters. Each
passage may begin with the last sentences of the one before (`overlap` tokens at most), so a
fact told across a cut is whole in one of them; a section's `heading` opens each passage of it
("Setup: ...") as context, within the budget.
"""

from __future__ import annotations

import codecs
import functools
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
# A sentence ends with . ! ? (closing quotes or brackets may follow); CJK text, written
# without spaces, ends them with 。！？ inside a run of characters.
_SENTENCE_END = re.compile(r"[.!?]+[\"'’”»)\]]*$")
_CJK_END = re.compile(r"(?<=[。！？])(?=.)")
# Words ending in a dot that seldom end a sentence: "e.g. the", "Dr. Smith", "p. 12"
ABBREVIATIONS = frozenset((
    "e.g.", "i.e.", "vs.", "cf.", "al.", "approx.", "mr.", "mrs.", "ms.", "dr.", "prof.",
    "st.", "jr.", "sr.", "no.", "nos.", "p.", "pp.", "fig.", "figs.", "vol.", "ch.", "sec.",
    "ed.", "inc.", "ltd.", "co.", "corp.", "dept.", "jan.", "feb.", "mar.", "apr.", "jun.",
    "jul.", "aug.", "sep.", "sept.", "oct.", "nov.", "dec.", "mon.", "tue.", "wed.", "thu.",
    "fri.", "sat.", "a.m.", "p.m.", "u.s.", "u.k."))
_NOT_END = re.compile(r"(?:\d+|\w)\.$")  # "1." of a list, "J." of a name
# Words longer than this many characters are cut into pieces before their tokens are counted:
# BPE time grows with the square of a word's length (~20 s for one 100,000-letter word).
LONG_WORD = 64
# TextHandler's passages overlap by budget // OVERLAP_SHARE tokens (bench/passages.py)
OVERLAP_SHARE = 5
HEADING_SHARE = 4  # a heading takes at most budget // HEADING_SHARE tokens of each passage


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


@dataclass(frozen=True)
class _Unit:
    """A sentence, or a piece of one too long for a passage: its words and their tokens."""

    words: tuple[str, ...]
    cost: int
    ends_paragraph: bool


def split_passages(text: str, count_tokens: Callable[[str], int], budget: int,
                   overlap: int = 0, heading: str | None = None) -> list[Passage]:
    """Cut `text` into passages of at most `budget` tokens, in order, every word kept.

    `count_tokens(text)` counts tokens without start/end markers. CLIP's BPE encodes each
    whitespace-separated word on its own, so a passage's cost is the sum over its words.
    `overlap`: tokens of whole sentences a passage may repeat from the end of the one before,
    when the cut falls inside a paragraph. `heading`: a section title opening every passage.
    """
    cost = functools.lru_cache(maxsize=None)(count_tokens)  # a word's tokens, counted once
    prefix, room = _heading(heading, cost, budget)
    units = [unit for paragraph in _PARAGRAPH.split(text)
             for unit in _paragraph_units(paragraph, cost, room)]
    texts = [" ".join(prefix + [w for unit in run for w in unit.words])
             for run in _pack(units, room, overlap)]
    return [Passage(i, t) for i, t in enumerate(texts)]


def _heading(heading: str | None, cost: Callable[[str], int], budget: int
             ) -> tuple[list[str], int]:
    """The heading's words as a passage's opening ("Setup:"), cut to its share of the budget,
    and the tokens left for the text."""
    words = [w[:LONG_WORD] for w in (heading or "").split()[:budget]]  # a word takes a token
    if words:
        words[-1] = words[-1].rstrip(":") + ":"
    share = budget // HEADING_SHARE
    while words and sum(cost(w) for w in words) > share:
        words = words[:-1]
        if words:
            words[-1] = words[-1].rstrip(":") + ":"
    return words, max(budget - sum(cost(w) for w in words), 1)


def _paragraph_units(paragraph: str, cost: Callable[[str], int], room: int) -> list[_Unit]:
    """A paragraph's sentences, each within `room` tokens (a longer one cut in pieces)."""
    words = [piece for word in paragraph.split() for piece in _CJK_END.split(word)]
    words = [piece for word in words for piece in _fitted(word, cost, room)]
    units: list[_Unit] = []
    start = 0
    for i, word in enumerate(words):
        if i + 1 == len(words) or _ends_sentence(word):
            units.extend(_pieces(words[start:i + 1], cost, room))
            start = i + 1
    if units:
        units[-1] = _Unit(units[-1].words, units[-1].cost, True)
    return units


def _ends_sentence(word: str) -> bool:
    if word[-1] in "。！？":
        return True
    if not _SENTENCE_END.search(word):
        return False
    return word.lower() not in ABBREVIATIONS and not _NOT_END.fullmatch(word)


def _fitted(word: str, cost: Callable[[str], int], room: int) -> list[str]:
    """`word`, or pieces of it each within `room` tokens where it is longer."""
    if len(word) > LONG_WORD:
        return [piece for at in range(0, len(word), LONG_WORD)
                for piece in _fitted(word[at:at + LONG_WORD], cost, room)]
    if len(word) == 1 or cost(word) <= room:
        return [word]
    half = len(word) // 2
    return _fitted(word[:half], cost, room) + _fitted(word[half:], cost, room)


def _pieces(words: list[str], cost: Callable[[str], int], room: int) -> list[_Unit]:
    """A sentence as one unit, or, over `room` tokens, as near-equal runs of its words."""
    costs = [cost(w) for w in words]
    total = sum(costs)
    if total <= room:
        return [_Unit(tuple(words), total, False)]
    target = total / -(-total // room)  # total over the fewest pieces that could hold it
    units, start, used = [], 0, 0
    for i, c in enumerate(costs):
        if i > start and (used + c > room or used >= target):
            units.append(_Unit(tuple(words[start:i]), used, False))
            start, used = i, 0
        used += c
    units.append(_Unit(tuple(words[start:]), used, False))
    return units


def _pack(units: list[_Unit], room: int, overlap: int) -> list[list[_Unit]]:
    """Consecutive units gathered into passages of at most `room` tokens."""
    passages: list[list[_Unit]] = []
    current: list[_Unit] = []
    used = 0
    for unit in units:
        if current and used + unit.cost > room:
            passages.append(current)
            current = _carried(current, min(overlap, room - unit.cost))
            used = sum(u.cost for u in current)
        current.append(unit)
        used += unit.cost
        if unit.ends_paragraph and used >= room // 2:  # a paragraph end: a good cut
            passages.append(current)
            current, used = [], 0
    if current:
        passages.append(current)
    return passages


def _carried(done: list[_Unit], tokens: int) -> list[_Unit]:
    """The last units of `done` (never all of it) within `tokens`: the next one's opening."""
    carried: list[_Unit] = []
    for unit in reversed(done[1:]):
        if unit.ends_paragraph or sum(u.cost for u in carried) + unit.cost > tokens:
            break
        carried.insert(0, unit)
    return carried
