"""`retriever duplicates --html FILE`: a self-contained page, each group's copies side by side
(thumbnails embedded as data URIs, checked as `search --html` checks them), best copy first;
and the threshold in words, as `duplicates` and `info` print it."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from retriever.library.duplicates import Copy, Group
from retriever.present.html_page import check_target, image_tag, write_page

if TYPE_CHECKING:
    from index.records import ThresholdRecord
    from retriever.library.collection import Collection

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; background: #fafafa; }}
.group {{ display: flex; gap: 1em; overflow-x: auto; margin-bottom: 1.5em; padding: .6em;
          background: #fff; border: 1px solid #ddd; border-radius: 6px; }}
.copy {{ flex: 0 0 220px; }} .copy img {{ width: 100%; height: 180px; object-fit: contain;
                                         background: #eee; }}
.best {{ font-weight: 600; }} .path {{ color: #555; word-break: break-all; font-size: 12px; }}
</style></head>
<body><h1>{title}</h1><p>{count} groups, threshold {threshold}. Nothing was deleted.</p>
{groups}
</body></html>
"""


def write_duplicates_html(groups: Sequence[Group], path: Path, threshold: float,
                          collection: Collection) -> Path:
    """The page of `groups`, found in `collection` (whose files its pictures show)."""
    check_target(path)
    body = "\n".join(_group(collection, n, g) for n, g in enumerate(groups, 1))
    return write_page(path, PAGE.format(title="retriever: duplicates", count=len(groups),
                                        threshold=f"{threshold:g}", groups=body))


def threshold_words(threshold: float, measured: ThresholdRecord | None) -> str:
    """"cosine 0.9712 (measured for ...)" for a measured threshold, "cosine 0.99" else."""
    if measured is None:
        return f"cosine {threshold:g}"
    return f"cosine {measured.threshold:.4f} ({measured_words(measured)})"


def measured_words(measured: ThresholdRecord) -> str:
    """How a threshold was measured, for `duplicates` and `info`."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(measured.measured_at))
    return (f"measured for precision {measured.target_precision:g} on {measured.sample} of "
            f"{measured.images} images, {measured.recall:.0%} of in-memory copies above it, "
            f"{when}")


def _group(collection: Collection, number: int, group: Group) -> str:
    copies = "".join(_copy(collection, c, i == 0) for i, c in enumerate(group.copies))
    return f'<section class="group" id="group-{number}">{copies}</section>'


def _copy(collection: Collection, c: Copy, best: bool) -> str:
    size = f"{c.width}x{c.height}, " if c.width and c.height else ""
    note = "best copy" if best else f"{c.score:.3f}"
    if c.same_bytes_as:
        note += f", same bytes as {c.same_bytes_as}"
    return (f'<div class="copy">{image_tag(collection, c.id, c.path)}'
            f'<div class="{"best" if best else ""}">{html.escape(note)}</div>'
            f'<div>{size}{c.size:,} bytes</div>'
            f'<div class="path">{html.escape(c.path)}</div></div>')
