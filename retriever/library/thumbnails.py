"""Thumbnails of indexed images: JPEG, EXIF-upright, made once and kept under <index>/thumbs/.

    <index>/thumbs/<size>/<item id>.jpg     longest side `size` pixels

A thumbnail is named by item id. Item ids are never reused and a file whose bytes change is
stored with new items, so a cached thumbnail never shows an older version of its image.
Files are found by item id in the store, never from a path a caller supplies.

A file is served (or made into a thumbnail) only as the indexed file (`open_indexed`): opened
without following a symlink at its stored path, and holding exactly the bytes whose sha256 the
store recorded. A symlink is followed only to another indexed file (one inside the indexed
folders); a file swapped after indexing, for a symlink or through a folder replaced by one,
holds other bytes and is refused. Equal bytes prove nothing leaks: whoever planted them had
them already.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from index.atomic import replacing
from index.store import IMAGE, IMAGE_TEXT, VIDEO, FileState, ItemView
from retriever.errors import ItemNotFound, UsageError
from retriever.library.collection import THUMBS_DIRNAME, Collection
from retriever.media.images import thumbnail_bytes
from retriever.media.video import frame_jpeg

# kinds with a picture: an image (and the words read in it) shows the image, a video frame itself
THUMBNAILED = (IMAGE, IMAGE_TEXT, VIDEO)
DEFAULT_SIZE = 256  # px, longest side: sharp in a ~200 px grid cell on a 1.25x screen
CHUNK = 1 << 20  # bytes hashed per read
# O_NONBLOCK: a FIFO swapped in for a file must not block the open; it is refused after fstat
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def open_indexed(collection: Collection, item_id: int) -> tuple[ItemView, BinaryIO]:
    """The store's record of `item_id` and its file opened at offset 0, checked to be the
    indexed file (see the module docstring); `ItemNotFound` otherwise. The caller closes it."""
    view = collection.store.items([item_id]).get(item_id)
    state = collection.store.file_state(view.path) if view is not None else None
    if view is None or state is None:
        raise ItemNotFound(f"no item {item_id} in {collection.directory}: use an id from a "
                           f"search result")
    where = f"item {item_id}: {view.path}"
    try:
        handle = _open(collection, view.path, state, where)
    except (FileNotFoundError, NotADirectoryError):
        raise ItemNotFound(f"{where} is no longer on disk: run `retriever index` to update "
                           f"the index") from None
    except OSError as error:  # ELOOP: swapped for a symlink between the check and the open
        raise ItemNotFound(f"{where} cannot be opened ({error.strerror}): run `retriever "
                           f"index` to update the index") from None
    try:
        if not _holds(handle, state):
            raise ItemNotFound(f"{where} changed since it was indexed: run `retriever index` "
                               f"to update the index")
    except BaseException:
        handle.close()
        raise
    return view, handle


def _open(collection: Collection, path: str, state: FileState, where: str) -> BinaryIO:
    """`path` opened as a regular file; a symlink only to an indexed file with the same bytes."""
    if os.path.islink(path):
        path = _indexed_target(collection, path, state, where)
    handle = open(path, "rb", opener=lambda name, _: os.open(name, OPEN_FLAGS))  # noqa: SIM115
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        handle.close()
        raise ItemNotFound(f"{where} is no longer a regular file: run `retriever index`")
    os.set_blocking(handle.fileno(), True)
    return handle


def _indexed_target(collection: Collection, link: str, state: FileState, where: str) -> str:
    """The stored path of the indexed file `link` resolves to; its target spelled as the
    store spells paths (through a symlinked root) or fully resolved."""
    resolved = os.path.realpath(link)
    with_root = os.path.normpath(os.path.join(os.path.dirname(link), os.readlink(link)))
    for candidate in (with_root, resolved):
        found = collection.store.file_state(candidate)
        if (candidate != link and found is not None and found.content_hash == state.content_hash
                and os.path.realpath(candidate) == resolved):
            return candidate
    raise ItemNotFound(f"{where} is a link to a file outside the indexed folders: it is not "
                       f"served")  # where to stays private


def _holds(handle: BinaryIO, state: FileState) -> bool:
    """Whether the open file has the stored size and sha256; leaves it at offset 0."""
    if os.fstat(handle.fileno()).st_size != state.size:
        return False
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
    handle.seek(0)
    return digest.hexdigest() == state.content_hash


def thumbnail(collection: Collection, item_id: int, size: int = DEFAULT_SIZE) -> Path | bytes:
    """The cached JPEG thumbnail of image item `item_id`, made on first use; its bytes, not
    cached, where the index folder cannot be written (read-only, or its disk full)."""
    view = collection.store.items([item_id]).get(item_id)
    if view is not None and view.kind not in THUMBNAILED:
        raise UsageError(f"item {item_id} is a text passage: only images and video frames "
                         f"have thumbnails")
    target = collection.directory / THUMBS_DIRNAME / str(size) / f"{item_id}.jpg"
    if view is not None and target.is_file() and os.path.lexists(view.path):
        return target  # made from the checked bytes of this item, which never change
    view, handle = open_indexed(collection, item_id)
    with handle:
        # decode_image, under thumbnail_bytes, reads a Path or an open binary file
        data = (frame_jpeg(handle, view.time or 0.0, size) if view.kind == VIDEO  # type: ignore[arg-type]
                else thumbnail_bytes(handle, size))  # type: ignore[arg-type]
    if collection.read_only:
        return data
    try:
        with replacing(target) as tmp:  # a concurrent request never reads a half-written JPEG
            Path(tmp).write_bytes(data)
    except OSError:
        return data
    return target
