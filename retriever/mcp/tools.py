"""What each `retriever mcp` tool answers, without the protocol (retriever.mcp.server adds it).

Everything goes through one `LiveCollection` (retriever.server.app), as `retriever serve`'s
requests do: one search at a time, the collection reopened when `retriever index` has written
since, and never the writer's lock. Only what the index covers is ever returned:

- results, items and duplicates are rows of the store; a thumbnail is made by item id by
  retriever.library.thumbnails, only from the file still holding the indexed bytes;
- an image to search by is named by path, so it must lie inside the folders the index was built
  from (its roots.json), its symlinks resolved first: else an assistant could name any file the
  user can read. Only the image's vector is used, never its bytes or a picture of it;
- a folder filter is compared with stored paths, never opened.

Failures are `RetrieverError`s with one line; the server turns them into tool errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from index.records import ItemView
from retriever.errors import ItemNotFound, RetrieverError, UsageError
from retriever.library.calibration import recorded
from retriever.library.duplicates import DEFAULT_THRESHOLD, find_duplicates
from retriever.library.locations import recorded_roots
from retriever.library.tags import check_tag
from retriever.library.thumbnails import DEFAULT_SIZE, THUMBNAILED, thumbnail
from retriever.search.query import MAX_ID, Query, Result, parse_date, search
from retriever.server.app import LiveCollection
from retriever.server.requests import folder as folder_filter

MAX_K = 100  # results per search: an assistant reads every row into its context
MAX_GROUPS = 50  # duplicate groups listed; `groups` counts them all
MAX_FAILURES = 20  # files that could not be indexed, listed by `info`; `failed` counts them all
THUMBNAIL_SIZE = DEFAULT_SIZE  # px, longest side: the picture `show_item` returns


@dataclass(frozen=True)
class Filters:
    """The filters every search tool takes, as the assistant sent them."""

    folder: str | None = None  # only files under this absolute folder (as result paths show)
    after: str | None = None  # only files taken (EXIF date, else modified) on/after YYYY-MM-DD
    before: str | None = None  # ... and before YYYY-MM-DD
    tag: str | None = None  # only images `retriever tag` labelled so

    def query(self, target: str, k: int, text: str | None = None, image: Path | None = None,
              item: int | None = None) -> Query:
        """The library's Query: these filters on a search by words, an image or an item."""
        return Query(text=text, image=image, item=item, target=target, k=k,
                     path_prefix=folder_filter(self.folder, "folder"),
                     after=parse_date(self.after, "after") if self.after else None,
                     before=parse_date(self.before, "before") if self.before else None,
                     tag=self.tag or None)


@dataclass(frozen=True)
class Shown:
    """`show_item`'s answer: the item's record, and its thumbnail (JPEG) if it has one."""

    record: dict[str, Any]
    jpeg: bytes | None


class Tools:
    """The tools' work over one live collection (the model and FAISS indexes kept loaded)."""

    def __init__(self, live: LiveCollection) -> None:
        self.live = live

    def search(self, query: Query) -> dict[str, Any]:
        """{"results": [row, ...]}, best first (retriever.search.query.search)."""
        query.check()  # before the lock: a bad query never waits for another search
        if not 1 <= query.k <= MAX_K:
            raise UsageError(f"k must be from 1 to {MAX_K}, not {query.k}")
        with self.live.current() as collection:
            if query.tag is not None:
                check_tag(collection, query.tag)  # a typo is told, with the tags there are
            results = search(collection, self.live.encoder, query)
        return {"results": [row(r) for r in results]}

    def query_image(self, given: str) -> Path:
        """The image file `given` names, resolved, if it lies inside the indexed folders;
        `UsageError` otherwise (before anything about the file itself is told)."""
        path = _absolute(given)
        with self.live.current() as collection:
            roots = [Path(os.path.realpath(root)) for root in recorded_roots(collection.directory)]
        if not roots:
            raise UsageError(f"{collection.directory} records no indexed folders: run "
                             f"`retriever index FOLDER` to record them")
        if not any(path.is_relative_to(root) for root in roots):
            raise UsageError(f"path {given} is outside the indexed folders "
                             f"({', '.join(map(str, roots))}): only images inside them can be "
                             f"searched by")
        if not _is_file(path):
            raise UsageError(f"path {given} is not a file: pass the path of an image file")
        return path

    def show(self, item: int) -> Shown:
        """The item's record (path, kind, caption or passage, date, page/section or video
        time, tags) and its thumbnail; a thumbnail that cannot be made is told in the record."""
        _check_id(item)
        with self.live.current() as collection:
            view = collection.reads.items([item]).get(item)
            if view is None:
                raise ItemNotFound(f"no item {item} in the index: pass an id from a search "
                                   f"result")
            record = {**_item_record(view), "tags": collection.reads.tags([item]).get(item, [])}
            jpeg = None
            if view.kind in THUMBNAILED:
                try:
                    jpeg = thumbnail(collection, item, THUMBNAIL_SIZE)
                except RetrieverError as error:  # its file changed, went, or cannot be decoded
                    record["thumbnail_error"] = str(error)
        return Shown(record, jpeg)

    def info(self) -> dict[str, Any]:
        """What the index holds (counts by kind), which model made it, its folders, and the
        files it could not index."""
        with self.live.current() as collection:
            summary = collection.summary()
            counts, tags = collection.reads.counts(), collection.reads.tag_counts()
            roots = recorded_roots(collection.directory)
        model = summary.model
        return {"directory": summary.directory, "folders": [str(root) for root in roots],
                "files": counts.files, "images": counts.images, "texts": counts.texts,
                "video_frames": counts.videos, "image_texts": counts.image_texts,
                "tags": len(tags),
                "model": None if model is None else {"name": model.name,
                                                     "pretrained": model.pretrained,
                                                     "dim": model.dim},
                "last_run": None if summary.last_run is None else summary.last_run.status,
                "failed": len(summary.failures),
                "failures": [{"path": f.path, "reason": f.reason}
                             for f in summary.failures[:MAX_FAILURES]]}

    def duplicates(self, threshold: float | None, folder: str | None) -> dict[str, Any]:
        """Groups of near-identical images (best copy first), at most MAX_GROUPS of them;
        `threshold` None: the one `retriever duplicates` measured, while it holds, else
        DEFAULT_THRESHOLD."""
        if threshold is not None and not -1 <= threshold <= 1:  # NaN fails this too
            raise UsageError(f"threshold {threshold} is not a cosine: pass one in [-1, 1]")
        prefix = folder_filter(folder, "folder")
        with self.live.current() as collection:
            if threshold is None:
                measured = recorded(collection)
                threshold = measured.threshold if measured else DEFAULT_THRESHOLD
            groups = find_duplicates(collection, threshold, prefix)
        return {"groups": len(groups), "threshold": threshold,
                "listed": [g.to_json() for g in groups[:MAX_GROUPS]]}

    def tags(self) -> dict[str, Any]:
        """{"tags": {label: items carrying it}}: the labels `search`'s tag filter takes."""
        with self.live.current() as collection:
            return {"tags": collection.reads.tag_counts()}


def row(result: Result) -> dict[str, Any]:
    """A result as the tools return it: its fields, and its date in words (local time)."""
    return {**result.to_json(), "date": _date(result.taken_at)}


def _item_record(view: ItemView) -> dict[str, Any]:
    return {"id": view.id, "path": view.path, "kind": view.kind, "caption": view.caption,
            "passage": view.passage, "date": _date(view.taken_at), "taken_at": view.taken_at,
            "page": view.page, "section": view.section, "time": view.time,
            "position": view.position}


def _date(when: float | None) -> str | None:
    return None if when is None else datetime.fromtimestamp(when).isoformat(timespec="seconds")


def _check_id(item: int) -> None:
    if not 0 <= item <= MAX_ID:
        raise UsageError(f"item {item} is not an item id: pass an id from a search result")


def _absolute(given: str) -> Path:
    """`given` as an absolute path with its symlinks resolved; `UsageError` for one that is
    relative (relative to what? the assistant's cwd is not ours) or not a path at all."""
    try:
        path = Path(given).expanduser()
    except RuntimeError:  # ~someone who is not a user here
        path = Path(given)
    if "\0" in given or not given.strip():
        raise UsageError(f"path {given!r} is not a file path: pass an image file's absolute "
                         f"path")
    if not path.is_absolute():
        raise UsageError(f"path {given} is relative: pass the image file's absolute path")
    return Path(os.path.realpath(path))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long, a loop of links
        return False
