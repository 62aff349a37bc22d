"""`search --html FILE`: a self-contained results page (thumbnails embedded as data URIs).

A picture is embedded only as the server would show it (retriever.library.thumbnails.thumbnail:
the indexed file, still inside the indexed folders and holding the indexed bytes); a file
swapped since for a link elsewhere shows a note instead. Text from files is escaped; a result's
snippet shows the query's words in <mark> (escaped too: marks are spans of the text).
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from retriever.atomic import replacing
from retriever.errors import ImageError, ItemNotFound, UsageError, VideoError
from retriever.library.thumbnails import thumbnail
from retriever.media.video import clock
from retriever.search.query import Result

if TYPE_CHECKING:
    from retriever.library.collection import Collection

THUMBNAIL = 256  # px, longest side

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; background: #fafafa; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr));
         gap: 1em; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6em; }}
.card img, .card video {{ width: 100%; height: 180px; object-fit: contain;
                          background: #eee; }}
.score {{ font-weight: 600; }} .path {{ color: #555; word-break: break-all; font-size: 12px; }}
.passage {{ white-space: pre-wrap; }} mark {{ background: #ffe066; }}
</style></head>
<body><h1>{title}</h1><p>{count} results</p>
{cards}
</body></html>
"""
SECTIONS = {"images": "Images", "texts": "Passages (and photos found by their captions)"}


def check_target(path: Path) -> None:
    """`UsageError` unless a page can be written at `path` (missing folders are made)."""
    if path.is_dir():
        raise UsageError(f"--html {path} is a folder: pass a file name such as results.html")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):  # what `replacing` will need
            pass
    except OSError as error:
        raise _unwritable(path, error) from None


def _unwritable(path: Path, error: OSError) -> UsageError:
    return UsageError(f"--html {path}: cannot write it ({error.strerror}): pass a file in a "
                      f"folder you can write")


def write_html(results: Sequence[Result], path: Path, title: str,
               collection: Collection) -> Path:
    """The page of `results`, found in `collection` (whose files its pictures show)."""
    check_target(path)
    both = len({r.found_in for r in results}) > 1  # `--to all`: two sections, as in the table
    page_dir = Path(os.path.abspath(path)).parent  # a video's link is relative to it
    cards = "\n".join(
        (f"<h2>{heading}</h2>" if both else "") + '<div class="grid">\n'
        + "\n".join(_card(collection, r, page_dir) for r in rows) + "\n</div>"
        for section, heading in SECTIONS.items()
        if (rows := [r for r in results if r.found_in == section]))
    return write_page(path, PAGE.format(title=html.escape(title), count=len(results),
                                        cards=cards))


def write_page(path: Path, page: str) -> Path:
    """Write a finished page atomically; `UsageError` naming --html if it cannot be."""
    try:
        with replacing(path) as tmp:
            Path(tmp).write_text(page, encoding="utf-8")
    except OSError as error:  # read-only folder, /proc, a full disk
        raise _unwritable(path, error) from None
    return path


def _card(collection: Collection, r: Result, page_dir: Path) -> str:
    if r.time is not None:  # a video frame: the video, from that moment, the frame its poster
        return _video_card(collection, r, page_dir)
    where = html.escape(r.path if r.kind == "image" else f"{r.path} ({_place(r)})")
    text = marked_html(r.snippet or "", r.marks)
    body = image_tag(collection, r.id, r.path) if r.kind == "image" else (
        f'<div class="passage">{text}</div>')
    caption = f"<div>{text}</div>" if r.caption and r.kind == "image" else ""
    return (f'<div class="card {r.kind}">{body}<div class="score">{r.score:.3f}</div>'
            f'{caption}<div class="path">{where}</div></div>')


def _place(r: Result) -> str:
    """Where in its file a passage is: its page, its heading, else its number."""
    if r.page is not None:
        return f"p. {r.page}"
    return f"§ {r.section}" if r.section is not None else f"passage {r.position}"


def marked_html(text: str, marks: Sequence[tuple[int, int]]) -> str:
    """`text` escaped, the spans `marks` (offsets into `text`) in <mark>."""
    out, at = [], 0
    for start, end in marks:
        out += [html.escape(text[at:start]), f"<mark>{html.escape(text[start:end])}</mark>"]
        at = end
    return "".join(out) + html.escape(text[at:])


def _video_card(collection: Collection, r: Result, page_dir: Path) -> str:
    time = r.time or 0.0
    frame = embedded(collection, r.id)
    # the frame's own width and height: the card keeps the video's shape before it loads
    poster = f' poster="data:image/jpeg;base64,{frame}"{_size(frame)}' if frame else ""
    source = html.escape(f"{file_link(r.file, page_dir)}#t={time:g}")
    return (f'<div class="card video"><video controls preload="none" src="{source}"{poster}>'
            f'</video><div class="score">{r.score:.3f}</div>'
            f'<div class="path">{html.escape(f"{r.path} @ {clock(time)}")}</div></div>')


def image_tag(collection: Collection, item_id: int, path: str) -> str:
    """An <img> with item `item_id`'s thumbnail embedded (a data URI), or a note if its file
    is unreadable or no longer the indexed one."""
    data = embedded(collection, item_id)
    if data is None:
        return '<div class="missing">(image no longer readable as indexed)</div>'
    return f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(path)}">'


def embedded(collection: Collection, item_id: int) -> str | None:
    """Item `item_id`'s JPEG thumbnail (of an image, or a video's frame) in base64; None when
    the server would refuse it too."""
    try:
        return base64.b64encode(thumbnail(collection, item_id, THUMBNAIL)).decode("ascii")
    except (ItemNotFound, ImageError, VideoError, UsageError, OSError):
        return None


def file_link(file: Path, page_dir: Path) -> str:
    """A link to `file` from a page in `page_dir`: relative when the file is in that folder or
    below it (the page moves with its files), else a file:// URI."""
    if file.is_relative_to(page_dir):
        return quote(os.fsencode(file.relative_to(page_dir).as_posix()))  # a name's own bytes
    return file.as_uri()


def _size(jpeg: str) -> str:
    """' width="W" height="H"' of a base64 JPEG thumbnail ("" if it cannot be read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(base64.b64decode(jpeg))) as im:
            return f' width="{im.width}" height="{im.height}"'
    except (OSError, UnidentifiedImageError, ValueError):
        return ""
