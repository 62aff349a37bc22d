r"""Paths as the store keeps and shows them (keys), and back.

A POSIX file name is bytes; the store's TEXT must be valid UTF-8 (SQLite, PostgreSQL), without
NUL. `path_key` writes each path as one text, the path itself when its bytes are UTF-8, and
`key_path` gives the exact bytes back: a key names one file, and a file has one key.

    path (bytes)            key (text)
    b"/p/caf\xc3\xa9.jpg"   /p/café.jpg         UTF-8: unchanged
    b"/p/a\xffb.jpg"        /p/a\xffb.jpg       a byte that is not UTF-8: \xNN (lower-case hex)
    b"/p/a\\xffb.jpg"       /p/a\x5cxffb.jpg    a real backslash that would read as \xNN: \x5c

Keys of stores made before this scheme are the same, but for a name holding a real backslash
before "xNN" (one file then re-read under its new key). '/' is kept and no escape spans it, so
the key of a path below a folder is the folder's key, '/', and the rest's key: a folder filter
compares keys as text (index.sql.UNDER). Standard library only: a one-off search needs
these and nothing that decodes media.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def path_key(path: str | Path) -> str:
    """The text `path` is stored and shown as (see the module docstring)."""
    text = os.fsencode(path).decode("utf-8", "surrogateescape")  # bad byte 0xNN -> U+DCNN
    text = _LOOKS_ESCAPED.sub(r"\\x5c", text)
    return _SURROGATE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


def folder_key(folder: str | Path) -> str:
    """The key a folder filter (`--in`) compares: `folder` made absolute against the current
    folder, '..' and a trailing '/' resolved away. The store matches it and what lies below
    it (index.sql.UNDER); a file given as the folder matches itself."""
    return path_key(os.path.abspath(folder))


def shown(message: str) -> str:
    """A message that names raw paths (`f"{path}: not a readable image"`) with each of them
    as its key: valid UTF-8 to store and print, and naming the file as its record does."""
    return path_key(message)


def key_path(key: str) -> Path:
    """The path `path_key` made `key` from (the inverse of `path_key`)."""
    parts = _ESCAPE.split(key)  # text, hex, text, hex, ..., text
    raw = b"".join(bytes([int(part, 16)]) if i % 2 else part.encode("utf-8", "surrogateescape")
                   for i, part in enumerate(parts))
    return Path(os.fsdecode(raw))


_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")
_LOOKS_ESCAPED = re.compile(r"\\(?=x[0-9a-f]{2})")  # a real backslash that would read as one
_SURROGATE = re.compile("[\udc80-\udcff]")
