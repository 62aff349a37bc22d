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
them already. The file itself at its stored path, reached through real folders only (no
symlink on the way: nothing outside the indexed folders) and with the stored size and mtime,
is taken as the bytes hashed when indexed and read once, not hashed first; any other (a
link, a size or mtime changed) is hashed whole before a byte of it is used.

A cached thumbnail is read back only as a regular file named there (never through a symlink:
retriever.jsonfile.read_small), and only while its item's file still opens as above with the
stored size and mtime; else it is made afresh from the fully checked file. Everything that
shows a picture of an item (the server, `search --html`, `--preview`, `duplicates --html`)
gets it from here.
"""

from __future__ import annotations

import hashlib
import os
import stat
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from index.kinds import IMAGE, IMAGE_TEXT, VIDEO
from index.records import FileState, ItemView
from retriever.atomic import replacing
from retriever.errors import ItemNotFound, SmallFileError, UsageError
from retriever.jsonfile import read_small
from retriever.library.collection import THUMBS_DIRNAME, Collection
from retriever.media.images import thumbnail_bytes
from retriever.media.in_place import linkless_stat
from retriever.media.paths import key_path, path_key
from retriever.media.video import frame_jpeg

# kinds with a picture: an image (and the words read in it) shows the image, a video frame itself
THUMBNAILED = (IMAGE, IMAGE_TEXT, VIDEO)
DEFAULT_SIZE = 256  # px, longest side: sharp in a ~200 px grid cell on a 1.25x screen
CHUNK = 1 << 20  # bytes hashed per read
MAX_CHECKED = 4096  # file identities `open_indexed` remembers as hashed, per caller's set
MAX_THUMBNAIL_BYTES = 1 << 20  # a 256 px JPEG is 10-40 kB: anything larger was not made here
# O_NONBLOCK: a FIFO swapped in for a file must not block the open; it is refused after fstat
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def open_indexed(collection: Collection, item_id: int, checked: set[tuple] | None = None
                 ) -> tuple[ItemView, BinaryIO]:
    """The store's record of `item_id` and its file opened at offset 0, checked to be the
    indexed file (see the module docstring); `ItemNotFound` otherwise. The caller closes it.
    `checked`: identities of files already hashed here (`_identity`); a file that still has
    one is not hashed again (a <video>'s range requests of a 2 GB file: ~4 s each at
    560 MB/s), one hashed now is added (the set is emptied at MAX_CHECKED)."""
    view, state, handle, where = _open_item(collection, item_id)
    try:
        identity = _identity(handle, state)
        # a file as stored, in place, is read once by whoever sends or decodes it
        if not _as_stored_in_place(handle, view.path, state) and (
                checked is None or identity not in checked):
            if not _holds(handle, state):
                raise ItemNotFound(f"{where} changed since it was indexed: run `retriever "
                                   f"index` to update the index")
            if checked is not None:
                if len(checked) >= MAX_CHECKED:
                    checked.clear()
                checked.add(identity)
    except BaseException:
        handle.close()
        raise
    return view, handle


def _as_stored_in_place(handle: BinaryIO, path: str, state: FileState) -> bool:
    """Whether the open file is the one at its stored path reached through real folders only
    (retriever.media.in_place) and still has the stored size and mtime, as when its bytes
    were hashed: anything that rewrote it since changed one of them. Such a file is trusted
    without hashing it whole first (a 200 MB video: one read, not two)."""
    now = os.fstat(handle.fileno())
    if (now.st_size, now.st_mtime) != (state.size, state.mtime):
        return False
    there = linkless_stat(os.fspath(key_path(path)))
    return there is not None and (there.st_dev, there.st_ino) == (now.st_dev, now.st_ino)


def _identity(handle: BinaryIO, state: FileState) -> tuple:
    """The open file as the kernel knows it: any write since changes its ctime (which no
    caller can set back), a replacement its inode; and the stored hash it was checked with."""
    now = os.fstat(handle.fileno())
    return (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns,
            state.content_hash)


def _open_item(collection: Collection, item_id: int
               ) -> tuple[ItemView, FileState, BinaryIO, str]:
    """The item's record, its file's, the file opened (`_open`: not yet hashed), and how
    errors name it; `ItemNotFound` when it cannot be opened."""
    view = collection.reads.items([item_id]).get(item_id)
    state = collection.reads.file_state(view.path) if view is not None else None
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
    return view, state, handle, where


def _open(collection: Collection, path: str, state: FileState, where: str) -> BinaryIO:
    """The file of key `path` (retriever.media.paths) opened as a regular file; a symlink only
    to an indexed file with the same bytes."""
    file = os.fspath(key_path(path))
    if os.path.islink(file):
        file = _indexed_target(collection, file, state, where)
    handle = open(file, "rb", opener=lambda name, _: os.open(name, OPEN_FLAGS))  # noqa: SIM115
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        handle.close()
        raise ItemNotFound(f"{where} is no longer a regular file: run `retriever index`")
    os.set_blocking(handle.fileno(), True)
    return handle


def _indexed_target(collection: Collection, link: str, state: FileState, where: str) -> str:
    """The path of the indexed file `link` resolves to; its target spelled as the store
    spells paths (through a symlinked root) or fully resolved."""
    resolved = os.path.realpath(link)
    with_root = os.path.normpath(os.path.join(os.path.dirname(link), os.readlink(link)))
    for candidate in (with_root, resolved):
        found = collection.reads.file_state(path_key(candidate))
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


def thumbnail(collection: Collection, item_id: int, size: int = DEFAULT_SIZE) -> bytes:
    """The JPEG thumbnail of image or video-frame item `item_id`: the cached one while its file
    is still the indexed one, else made from the checked file (`open_indexed`) and cached
    where the index folder can be written (not read-only, its disk not full)."""
    view = collection.reads.items([item_id]).get(item_id)
    if view is not None and view.kind not in THUMBNAILED:
        raise UsageError(f"item {item_id} is a text passage: only images and video frames "
                         f"have thumbnails")
    target = collection.directory / THUMBS_DIRNAME / str(size) / f"{item_id}.jpg"
    cached = _cached(collection, item_id, target) if view is not None else None
    if cached is not None:
        return cached
    view, handle = open_indexed(collection, item_id)
    with handle:
        # decode_image, under thumbnail_bytes, reads a Path or an open binary file
        data = (frame_jpeg(handle, view.time or 0.0, size) if view.kind == VIDEO  # type: ignore[arg-type]
                else thumbnail_bytes(handle, size))  # type: ignore[arg-type]
    if not collection.read_only and not _linked(collection.directory, target.parent):
        # not cached on a full disk or a folder made read-only meanwhile; a concurrent
        # request never reads half a JPEG (written aside, then renamed into place)
        with suppress(OSError), replacing(target) as tmp:
            Path(tmp).write_bytes(data)
    return data


def _linked(directory: Path, folder: Path) -> bool:
    """Whether a cache folder below `directory` (thumbs/, thumbs/<size>/) is a symlink: then
    nothing is written through it (it could point among the user's own files)."""
    parts = folder.relative_to(directory).parts
    return any(os.path.islink(directory.joinpath(*parts[:n])) for n in range(1, len(parts) + 1))


def _cached(collection: Collection, item_id: int, target: Path) -> bytes | None:
    """The cached thumbnail's bytes, if the cache holds a regular file there (never a link:
    whatever is planted in the cache is not served) and the item's file still opens as the
    indexed one with its stored size and mtime; else None (made afresh, fully checked)."""
    try:
        data = read_small(target, MAX_THUMBNAIL_BYTES, inside=collection.directory)
        _, state, handle, _ = _open_item(collection, item_id)
    except (OSError, SmallFileError, ItemNotFound):
        return None
    with handle:
        now = os.fstat(handle.fileno())
    # the thumbnail was made from bytes checked against the stored sha256; a file rewritten
    # since shows another size or mtime, and is then hashed again by open_indexed
    return data if (now.st_size, now.st_mtime) == (state.size, state.mtime) else None
