"""A file's stat as reached from / without following any symlink on the way.

The server sends an indexed file without hashing it first when the open file is the one at its
stored path and still has its stored size and mtime (retriever.library.thumbnails): that path
must lead to it through real folders only, or a folder swapped for a symlink could lead outside
the indexed folders to another file that merely looks the same. Each folder is opened from the
one before with O_NOFOLLOW | O_DIRECTORY, and the file's stat is taken in the last one without
following it: no component can be swapped for a symlink between the walk and the stat.
"""

from __future__ import annotations

import os
from contextlib import ExitStack

FOLDER_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)


def linkless_stat(path: str) -> os.stat_result | None:
    """The stat of the file at the absolute `path` (not followed if a symlink), reached from /
    through real folders only; None where a folder on the way is a symlink, missing or not a
    folder, or `path` is not absolute and plain (no '.' or '..')."""
    parts = path.split("/")
    if not path.startswith("/") or any(p in (".", "..") for p in parts) or not parts[-1]:
        return None
    with ExitStack() as folders:
        try:
            folder = os.open("/", FOLDER_FLAGS)
            folders.callback(os.close, folder)
            for name in (p for p in parts[1:-1] if p):
                folder = os.open(name, FOLDER_FLAGS, dir_fd=folder)
                folders.callback(os.close, folder)
            return os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
        except OSError:  # ELOOP / ENOTDIR: a symlink or a file on the way; ENOENT: gone
            return None
