"""`search --html FILE`: a self-contained results page (thumbnails embedded as data URIs)."""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Sequence
from pathlib import Path

from index.atomic import replacing
from retriever.errors import ImageError, UsageError
from retriever.media.images import thumbnail_bytes
from retriever.search.query import Result

THUMBNAIL = 256  # px, longest side

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; background: #fafafa; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr));
         gap: 1em; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6em; }}
.card img {{ width: 100%; height: 180px; object-fit: contain; background: #eee; }}
.score {{ font-weight: 600; }} .path {{ color: #555; word-break: break-all; font-size: 12px; }}
.passage {{ white-space: pre-wrap; }}
</style></head>
<body><h1>{title}</h1><p>{count} results</p><div class="grid">
{cards}
</div></body></html>
"""


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


def write_html(results: Sequence[Result], path: Path, title: str) -> Path:
    check_target(path)
    cards = "\n".join(_card(r) for r in results)
    page = PAGE.format(title=html.escape(title), count=len(results), cards=cards)
    try:
        with replacing(path) as tmp:
            Path(tmp).write_text(page, encoding="utf-8")
    except OSError as error:  # read-only folder, /proc, a full disk
        raise _unwritable(path, error) from None
    return path


def _card(r: Result) -> str:
    where = html.escape(r.path if r.kind == "image" else f"{r.path} (passage {r.position})")
    body = _image_tag(r) if r.kind == "image" else (
        f'<div class="passage">{html.escape(r.passage or "")}</div>')
    caption = f"<div>{html.escape(r.caption)}</div>" if r.caption else ""
    return (f'<div class="card {r.kind}">{body}<div class="score">{r.score:.3f}</div>'
            f'{caption}<div class="path">{where}</div></div>')


def _image_tag(r: Result) -> str:
    try:
        data = base64.b64encode(thumbnail_bytes(Path(r.path), THUMBNAIL)).decode("ascii")
    except (ImageError, OSError):
        return '<div class="missing">(image no longer readable)</div>'

    return f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(r.path)}">'
