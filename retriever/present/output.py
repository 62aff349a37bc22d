"""How the CLI prints search results: a table per section, plain text from files, inline previews.

Text from files (paths, captions, passages) is shown, never interpreted: C0/C1 controls, DEL and
Unicode line/bidi controls become escapes (\\n, \\x1b), and rich never reads it as markup.
A result's text is its snippet (retriever.search.highlight) with the query's words in MARK.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from retriever.search.query import Result

if TYPE_CHECKING:
    from retriever.library.collection import Collection

CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
SECTION_TITLES = {"images": "images", "texts": "passages (and photos found by their captions)"}
MARK = "bold reverse"  # the style of a query's word inside a snippet
FOLDER_ROOM = 40  # characters of a path's folder part shown before it is shortened (never the name)


def visible(text: str) -> str:
    """`text` on one line with every control character written as an escape."""
    return CONTROLS.sub(lambda m: SHORT_ESCAPES.get(m[0]) or ascii(m[0])[1:-1], text)


def plain(text: str | None) -> Text:
    """A table cell of text from a file: never read as markup, controls made visible."""
    return Text(visible(text or ""))


def marked(text: str, marks: Sequence[tuple[int, int]]) -> Text:
    """`text` as `plain` shows it, with the spans `marks` (offsets into `text`) in MARK."""
    out, at = Text(), 0
    for start, end in marks:
        out.append(visible(text[at:start]))
        out.append(visible(text[start:end]), style=MARK)
        at = end
    out.append(visible(text[at:]))
    return out


def short_path(path: str, room: int = FOLDER_ROOM) -> str:
    """The full file name, its folder with ~ for home and cut from the left past `room`:
    /home/me/Pictures/2023/trip/x.jpg -> ~/Pictures/2023/trip/x.jpg, or …/2023/trip/x.jpg."""
    home = os.path.expanduser("~")
    if home not in ("", "/") and path.startswith(home + os.sep):
        path = "~" + path[len(home):]
    folder, sep, name = path.rpartition(os.sep)
    if len(folder) > room:
        folder = "…" + folder[len(folder) - room + 1:]
    return folder + sep + name


def where(r: Result) -> str:
    """The path as a row shows it: a video moment, a passage's number, words in an image."""
    from retriever.media.video import clock

    if r.time is not None:
        return f"{short_path(r.path)} @ {clock(r.time)}"
    if r.page is not None:  # a document's page (PDF) or heading: where to open it
        return f"{short_path(r.path)} p. {r.page}"
    if r.section is not None:
        return f"{short_path(r.path)} § {r.section}"
    if r.kind == "text":
        return f"{short_path(r.path)} #{r.position}"
    if r.kind == "image-text":
        return f"{short_path(r.path)} (words in it)"
    return short_path(r.path)


def results_tables(results: Sequence[Result]) -> list[Table]:
    """One table per section present (images, then passages), each without empty columns."""
    tables = []
    for section, title in SECTION_TITLES.items():
        rows = [r for r in results if r.found_in == section]
        if not rows:
            continue
        texts = [marked(r.snippet, r.marks) if r.snippet else None for r in rows]
        columns = ["id", "score", "path"] + (["caption / passage"] if any(texts) else [])
        both = len({r.found_in for r in results}) > 1
        table = Table(*columns, title=title if both else None, title_justify="left")
        table.columns[2].overflow = "fold"  # a long name wraps; it is never cut
        for r, text in zip(rows, texts, strict=True):
            cells: list[str | Text] = [str(r.id), f"{r.score:.3f}", plain(where(r))]
            table.add_row(*cells, *([text or Text()] if any(texts) else []))
        tables.append(table)
    return tables


def unbounded(out: Console) -> Console:
    """Where to print a table: `out` on a terminal; piped, a console as wide as the rows need,
    so a path is never cut at 80 columns (`retriever duplicates | grep`)."""
    if out.is_terminal:
        return out
    return Console(file=out.file, width=10_000, highlight=False, emoji=False)


def print_results(out: Console, results: Sequence[Result]) -> None:
    """The tables; as wide as they need when stdout is not a terminal (nothing is cut)."""
    out = unbounded(out)
    for table in results_tables(results):
        out.print(table)


def print_previews(out: Console, err: Console, results: Sequence[Result],
                   collection: Collection, terminal: Mapping[str, str]) -> None:
    """Thumbnails inline (kitty, iTerm2), each with its row; elsewhere, the tables. Pictures
    of `collection`'s files, checked as the server checks them (preview.preview_png).
    `terminal`: the variables the terminal sets (`Settings.terminal`)."""
    from retriever.present.preview import inline_image, preview_png, terminal_protocol

    protocol = terminal_protocol(terminal)
    if protocol is None or not out.is_terminal:
        err.print("--preview needs a kitty or iTerm2 terminal on stdout; showing the table",
                  markup=False)
        print_results(out, results)
        return
    for r in results:
        png = preview_png(collection, r.id) if r.kind == "image" else None
        if png is not None:  # else the row alone
            sys.stdout.write(inline_image(png, protocol) + "\n")
        text = r.caption if r.kind == "image" else f"#{r.position}: {r.passage}"
        out.print(visible(f"{r.score:.3f}  {r.path}  {text or ''}"), markup=False)
