"""Reading the small files retriever keeps, whoever may have put something else there.

One reader for all of them (the user registry, an index's roots.json and <kind>.faiss.json, an
export's meta.json, and cached thumbnails): it opens without waiting on a FIFO
(O_NONBLOCK), refuses anything but a regular file, reads at most `max_bytes`, and turns JSON
nested past Python's recursion limit into an error instead of a RecursionError. A cache file
(`inside=` its cache folder) is also refused when any name below that folder is a symlink
(O_NOFOLLOW): whatever is linked there was never made by retriever. Every problem is one
`SmallFileError(path, problem)`; a file that does not exist is `FileNotFoundError`, as open()'s.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from retriever.errors import SmallFileError

MAX_BYTES = 1 << 20  # the largest of these files (a registry of thousands of indexes) is far less
FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def read_json(path: Path, max_bytes: int = MAX_BYTES) -> Any:
    """The JSON value in `path`. Raises FileNotFoundError when it is absent, SmallFileError when
    it is not a regular file, is over `max_bytes`, is not UTF-8 JSON, or is nested too deeply."""
    return parse_json(path, read_small(path, max_bytes))


def read_small(path: Path, max_bytes: int = MAX_BYTES, *, inside: Path | None = None) -> bytes:
    """The bytes of the regular file `path`, at most `max_bytes` of them (see read_json).
    With `inside` (a cache's folder), no name below it may be a symlink (see open_regular)."""
    with open_regular(path, inside=inside) as handle:
        return read_open(handle, path, max_bytes)


def open_regular(path: Path, *, inside: Path | None = None) -> BinaryIO:
    """`path` opened for reading, blocking reads, checked to be a regular file (fstat: what was
    opened, not what the name pointed to a moment before). With `inside`, a folder above
    `path`, each name below it is opened without following a symlink (O_NOFOLLOW, one folder
    at a time): a link planted anywhere in a cache is refused. The caller closes it."""
    try:
        fd = _open_below(inside, path.relative_to(inside)) if inside else os.open(path, FLAGS)
    except FileNotFoundError:
        raise
    except OSError as err:
        symlink = inside is not None and err.errno in (errno.ELOOP, errno.ENOTDIR)
        raise SmallFileError(path, "a symlink, not a file retriever made" if symlink
                             else err.strerror or type(err).__name__) from err
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SmallFileError(path, "not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _open_below(folder: Path, relative: Path) -> int:
    """A descriptor for folder/relative, no name in `relative` followed if it is a symlink."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for name in relative.parts[:-1]:
            below = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                            | getattr(os, "O_CLOEXEC", 0), dir_fd=fd)
            os.close(fd)
            fd = below
        return os.open(relative.name, FLAGS | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)


def read_open(handle: BinaryIO, path: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """The rest of `handle` (opened from `path` by open_regular), at most `max_bytes`."""
    try:
        data = handle.read(max_bytes + 1)
    except OSError as err:  # EISDIR cannot happen here; EIO, a file on a failing disk
        raise SmallFileError(path, err.strerror or type(err).__name__) from err
    if len(data) > max_bytes:
        raise SmallFileError(path, f"larger than {max_bytes} bytes")
    return data


def parse_json(path: Path, data: bytes) -> Any:
    """`data` (read from `path`) as JSON, or SmallFileError naming what is wrong."""
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError as err:
        raise SmallFileError(path, "JSON nested too deeply") from err
    except (UnicodeDecodeError, ValueError) as err:
        raise SmallFileError(path, f"not valid JSON ({err})") from err
