"""Where a running `retriever serve` can be reached by this user's CLI: a Unix socket.

While it runs, the server also listens on a Unix socket for its index folder (mode 0600, this
user's), and `retriever search` asks it there (retriever.server.remote). The socket's place:

    <index>/serve.sock                            the index folder, when the server may write
                                                  there and the path fits AF_UNIX's limit
    <runtime>/<crc32, adler32 of index, hex>.sock  else: a per-user folder keyed by the
                                                  index folder's resolved path

`<runtime>` is `$XDG_RUNTIME_DIR/retriever` (the value read once, retriever.settings, and
passed in as `runtime_dir`), else `/tmp/retriever-<uid>`; made 0700 and only used while it is
this user's folder, closed to others. A client tries both places in that
order. Nothing here is read as data: the socket file's owner and the process holding it
(SO_PEERCRED) are what the client checks, so no file in the index folder can send a query
elsewhere.

Stdlib only: this module is on the cold path of every `retriever search`.
"""

from __future__ import annotations

import os
import stat
import sys
import zlib
from pathlib import Path

SOCKET_FILE = "serve.sock"
# sun_path holds 108 bytes on Linux (104 on macOS and the BSDs), the last one a NUL; the
# server binds a temporary name up to TEMP_EXTRA bytes longer before renaming it into place.
MAX_SOCKET_PATH = (108 if sys.platform.startswith("linux") else 104) - 1
TEMP_EXTRA = 12


def socket_paths(index_dir: Path, runtime_dir: str = "") -> list[Path]:
    """Where the server of `index_dir` listens, most likely first: the index folder's socket
    (when its path is short enough), then the runtime folder's (`runtime_folder`)."""
    resolved = index_dir.resolve()
    places = [resolved / SOCKET_FILE]
    # zlib, loaded already, not hashlib (OpenSSL: ms on every search's cold path); 64 bits
    # tell one user's index folders apart
    raw = os.fsencode(resolved)
    key = f"{zlib.crc32(raw):08x}{zlib.adler32(raw):08x}"
    places.append(runtime_folder(runtime_dir) / f"{key}.sock")
    return [path for path in places if fits(path)]


def fits(path: Path) -> bool:
    """Whether `path` and the temporary name bound before it fit in a sockaddr_un."""
    return len(os.fsencode(path)) + TEMP_EXTRA <= MAX_SOCKET_PATH


def runtime_folder(runtime_dir: str = "") -> Path:
    """This user's folder for sockets under `runtime_dir` ($XDG_RUNTIME_DIR; "" = unset), see
    the module docstring; it may not exist yet."""
    if os.path.isabs(runtime_dir):  # the XDG spec: a relative value is ignored
        return Path(runtime_dir) / "retriever"
    # /tmp, not $TMPDIR: a server and a CLI started with different ones still meet
    return Path("/tmp") / f"retriever-{os.geteuid()}"


def private_folder(folder: Path) -> bool:
    """Whether `folder` is a real folder (not a link) of this user that no one else can
    enter or write: only then is a socket in it this user's to trust or to replace."""
    try:
        found = os.lstat(folder)
    except OSError:
        return False
    return (stat.S_ISDIR(found.st_mode) and found.st_uid == os.geteuid()
            and not found.st_mode & 0o077)


def own_socket(path: Path) -> os.stat_result | None:
    """`path`'s lstat when it is a socket file of this user (not a link, a FIFO, a file, or
    another user's socket); else None."""
    try:
        found = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(found.st_mode) or found.st_uid != os.geteuid():
        return None
    return found
