"""Indexed files sent back: several as one zip (`POST /api/download`), or a byte range of one
(`Range: bytes=a-b` on `GET /api/items/{id}/file`, which a <video> seeking to a moment asks).

A download names item ids, never paths: each id is looked up in the store, its file opened as
the indexed file (retriever.library.thumbnails.open_indexed: no symlink out of the indexed
folders, the stored sha256). Selected results that are passages of one file give that file
once. The zip is streamed as it is written (entries stored, not compressed: photos and videos
are compressed already); the ids, their count and the files' total stored size are checked
before the first byte, so a bad request is one JSON error, never half a zip. A file changed or
removed between that check and its turn is left out and named in `NOT INCLUDED.txt` in the
zip, with the reason.
"""

from __future__ import annotations

import os
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from retriever.errors import ItemNotFound, UsageError
from retriever.library.collection import Collection
from retriever.library.thumbnails import CHUNK, open_indexed
from retriever.media.paths import key_path
from retriever.server.requests import whole_number

RANGE = re.compile(r"bytes=(\d*)-(\d*)")  # one range; a list of several is answered whole
NOT_INCLUDED = "NOT INCLUDED.txt"


class DownloadTooLarge(UsageError):
    """A download asks for more files, or more bytes, than `ServerSettings` allows."""


class RangeNotSatisfiable(UsageError):
    """A `Range` header outside the file (answered 416 with the file's size)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the requested range is outside the file ({size} bytes)")
        self.size = size


@dataclass(frozen=True)
class Entry:
    item: int  # the first selected item id of this file
    path: str  # the file's key (retriever.media.paths)
    name: str  # its name inside the zip
    size: int  # bytes, as stored when indexed


def item_ids(body: dict, max_items: int) -> list[int]:
    """The `ids` of a download request's JSON body: whole numbers, at most `max_items`."""
    unknown = sorted(set(body) - {"ids"})
    if unknown:
        raise UsageError(f"unknown field {unknown[0]!r}: send {{\"ids\": [12, 40]}}")
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids:
        raise UsageError("ids must be a non-empty list of item ids, e.g. {\"ids\": [12, 40]}")
    if len(ids) > max_items:
        raise DownloadTooLarge(f"{len(ids)} items asked for: a download takes at most "
                               f"{max_items}; select fewer results")
    return list(dict.fromkeys(whole_number(value, "ids") for value in ids))


def plan(collection: Collection, ids: list[int], max_bytes: int) -> list[Entry]:
    """One entry per distinct file of `ids`, named by its path below the files' common
    folder; `ItemNotFound` naming the first id not in the index, `DownloadTooLarge` over
    `max_bytes` in all."""
    views = collection.reads.items(ids)
    missing = [i for i in ids if i not in views]
    if missing:
        raise ItemNotFound(f"no item {missing[0]} in the index: select results of a search")
    first: dict[str, int] = {}
    for i in ids:
        first.setdefault(views[i].path, i)
    sizes = {path: _stored_size(collection, path, item) for path, item in first.items()}
    total = sum(sizes.values())
    if total > max_bytes:
        raise DownloadTooLarge(f"the selected files hold {_mb(total)}: a download takes at "
                               f"most {_mb(max_bytes)}; select fewer results")
    names = _names(list(first))
    return [Entry(item, path, names[path], sizes[path]) for path, item in first.items()]


def zip_chunks(collection: Collection, entries: list[Entry],
               checked: set[tuple] | None = None) -> Iterator[bytes]:
    """The zip of `entries`' files, in pieces as written; `checked`: the files the server
    has hashed already (open_indexed), so a file it served unchanged is not read whole twice."""
    sink = _Sink()
    left_out: list[str] = []
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:  # type: ignore[call-overload]
        for entry in entries:
            try:
                _, handle = open_indexed(collection, entry.item, checked)
            except ItemNotFound as error:
                left_out.append(f"{entry.name}: {error}")
                continue
            info = zipfile.ZipInfo(entry.name, _modified(handle.fileno()))
            info.file_size = entry.size  # sets zip64 where a file needs it
            with handle, archive.open(info, "w") as member:
                while chunk := handle.read(CHUNK):
                    member.write(chunk)
                    if sink.written - sink.sent >= CHUNK:
                        yield sink.take()
        if left_out:
            archive.writestr(NOT_INCLUDED, "\n".join(left_out) + "\n")
    yield sink.take()


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a `Range: bytes=a-b` header, both included; None to send the
    whole file (no header, another unit, several ranges); `RangeNotSatisfiable` outside it."""
    match = RANGE.fullmatch((header or "").strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # bytes=-500: the last 500 bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(size - 1, int(last)) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(size)
    return start, end


def ranged_chunks(handle: Any, start: int, end: int) -> Iterator[bytes]:
    """Bytes `start`..`end` (included) of the open file, in pieces; closes it."""
    with handle:
        handle.seek(start)
        left = end - start + 1
        while left > 0 and (chunk := handle.read(min(CHUNK, left))):
            left -= len(chunk)
            yield chunk


class _Sink:
    """A write-only stream zipfile writes to (no seek: it then writes data descriptors)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.written = 0
        self.sent = 0  # bytes handed on by `take`

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        self.sent += len(data)
        return data


def _stored_size(collection: Collection, path: str, item: int) -> int:
    state = collection.reads.file_state(path)
    if state is None:
        raise ItemNotFound(f"item {item}: {path} is no longer indexed: search again")
    return state.size


def _names(paths: list[str]) -> dict[str, str]:
    """Each file's path below the selected files' common folder: unique, and as readable as
    the folders allow (`2024/a.jpg`, `2025/a.jpg`)."""
    files = [os.fspath(key_path(path)) for path in paths]
    common = os.path.dirname(files[0]) if len(files) == 1 else os.path.commonpath(files)
    return {path: os.path.relpath(file, common) for path, file in zip(paths, files, strict=True)}


def _modified(descriptor: int) -> tuple[int, int, int, int, int, int]:
    stamp = max(os.fstat(descriptor).st_mtime, 315532800)  # zip dates start in 1980
    return time.localtime(stamp)[:6]


def _mb(size: int) -> str:
    return f"{size / 2**20:.0f} MB"
