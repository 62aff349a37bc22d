"""Thumbnails of indexed images: JPEG, EXIF-upright, made once and kept under <index>/thumbs/.

    <index>/thumbs/<size>/<item id>.jpg     longest side `size` pixels

A thumbnail is named by item id. Item ids are never reused and a file whose bytes change is
stored with new items, so a cached thumbnail never shows an older version of its image.
Files are found by item id in the store, never from a path a caller supplies.
"""

from __future__ import annotations

from pathlib import Path

from index.atomic import replacing
from index.store import IMAGE, ItemView
from retriever.collection import THUMBS_DIRNAME, Collection
from retriever.errors import ItemNotFound, UsageError
from retriever.images import thumbnail_bytes

DEFAULT_SIZE = 256  # px, longest side: sharp in a ~200 px grid cell on a 1.25x screen


def indexed_file(collection: Collection, item_id: int) -> tuple[ItemView, Path]:
    """The store's record of `item_id` and its file; `ItemNotFound` if either is gone."""
    view = collection.store.items([item_id]).get(item_id)
    if view is None:
        raise ItemNotFound(f"no item {item_id} in {collection.directory}: use an id from a "
                           f"search result")
    path = Path(view.path)
    if not path.is_file():
        raise ItemNotFound(f"item {item_id}: {view.path} is no longer on disk: run `retriever "
                           f"index` to update the index")
    return view, path


def thumbnail(collection: Collection, item_id: int, size: int = DEFAULT_SIZE) -> Path:
    """The cached JPEG thumbnail of image item `item_id`, made on first use."""
    view, source = indexed_file(collection, item_id)
    if view.kind != IMAGE:
        raise UsageError(f"item {item_id} is a text passage: only images have thumbnails")
    target = collection.directory / THUMBS_DIRNAME / str(size) / f"{item_id}.jpg"
    if not target.is_file():
        _render(source, target, size)
    return target


def _render(source: Path, target: Path, size: int) -> None:
    data = thumbnail_bytes(source, size)  # upright, aspect kept; the CLI's --html uses it too
    with replacing(target) as tmp:  # a concurrent request never reads a half-written JPEG
        Path(tmp).write_bytes(data)
