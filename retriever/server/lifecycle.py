"""The server process's life: the TCP socket it listens on, the Unix socket that announces it
to this user's CLI (retriever.server.discovery), and a shutdown that withdraws it.

    listen(host, port)              bind the TCP socket before the model loads (a port in use
                                    is one line, not uvicorn's log and exit code 3)
    serve_forever(app, sock, dir)   answer on it, and on a Unix socket for `dir`, until Ctrl-C
                                    or SIGTERM; the Unix socket is removed on the way out
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from retriever.errors import UsageError
from retriever.server.discovery import private_folder, runtime_folder, socket_paths

BACKLOG = 2048  # uvicorn's default: connections the kernel queues before the loop accepts


def check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port: pass 0-65535 (0: any free one)")


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port. Binding here, not in uvicorn, turns a port in use into
    one line (uvicorn logs it and exits with 3, which the CLI keeps for a busy index)."""
    check_port(port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio turns Nagle's algorithm off (TCP_NODELAY) only for
    # sockets whose proto says TCP; with proto 0 each keep-alive answer waited ~40 ms for an ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart without a wait
    try:
        sock.bind((host, port))
        # listening from here: the address `serve` prints next takes connections at once
        # (queued until uvicorn's loop accepts them), never refused while the model loads
        sock.listen(BACKLOG)
    except (OSError, ValueError, TypeError) as error:  # the last two: not a host name
        sock.close()
        reason = getattr(error, "strerror", None) or "not an address"
        raise UsageError(f"cannot listen on {host}:{port} ({reason}): pass another "
                         f"--port or --host") from None
    return sock


@dataclass(frozen=True)
class Announced:
    """A listening Unix socket at `path`; `inode` tells it from a later server's socket
    that replaced it (`withdraw` leaves that one)."""

    path: Path
    sock: socket.socket
    inode: tuple[int, int]  # (st_dev, st_ino)


def announce(index_dir: Path, runtime_dir: str = "") -> Announced | None:
    """Listen on the first of the index's socket paths (retriever.server.discovery; its
    `runtime_dir`: $XDG_RUNTIME_DIR) this process can bind; None where none can be (the
    index is still served over TCP)."""
    if not hasattr(socket, "AF_UNIX"):
        return None
    for path in socket_paths(index_dir, runtime_dir):
        if path.parent == runtime_folder(runtime_dir) and not _runtime_ready(path.parent):
            continue
        with suppress(OSError):
            return _bind(path)
    return None


def _runtime_ready(folder: Path) -> bool:
    """Make this user's runtime folder (0700) if needed; whether it is private."""
    with suppress(OSError):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return private_folder(folder)


def _bind(path: Path) -> Announced:
    """Bind a temporary name beside `path`, make it 0600, listen, then rename it over `path`:
    a client never finds a socket others may connect to, nor no socket while a newer server
    replaces an older one (the newest server of an index is the one asked)."""
    temporary = path.with_name(f".{secrets.token_hex(4)}.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(temporary))
        try:
            os.chmod(temporary, 0o600)
            sock.listen(BACKLOG)
            os.replace(temporary, path)
        except OSError:
            temporary.unlink(missing_ok=True)
            raise
        found = os.lstat(path)
    except OSError:
        sock.close()
        raise
    return Announced(path, sock, (found.st_dev, found.st_ino))


def withdraw(announced: Announced) -> None:
    """Remove the announced socket if it is still this server's (not a later server's)."""
    with suppress(OSError):
        found = os.lstat(announced.path)
        if (found.st_dev, found.st_ino) == announced.inode:
            announced.path.unlink()


def serve_forever(app: ASGIApp, sock: socket.socket, announce_in: Path | None = None,
                  runtime_dir: str = "") -> None:
    """Answer requests on `sock` until Ctrl-C or SIGTERM. With `announce_in` (the collection's
    directory), also on a Unix socket for it, where `retriever search` finds this server
    (`runtime_dir`: $XDG_RUNTIME_DIR, as `announce` takes it)."""
    server = Server(uvicorn.Config(app, log_level="warning"), announce_in, runtime_dir)
    try:
        server.run(sockets=[sock])
    finally:  # an exception out of startup or the loop; a signal was handled in shutdown
        server.withdraw()
        server.close_announced()


class Server(uvicorn.Server):
    """uvicorn's server, also answering on the Unix socket of `announce_in` while it runs.

    The socket goes in `shutdown`, not after `run`: uvicorn re-raises a caught SIGTERM once
    the loop ends, and its default action ends the process before any `finally` runs.
    """

    def __init__(self, config: uvicorn.Config, announce_in: Path | None = None,
                 runtime_dir: str = "") -> None:
        super().__init__(config)
        self.announce_in, self.runtime_dir = announce_in, runtime_dir
        self.announced_at: Announced | None = None
        self.announced = threading.Event()  # set once startup is over, announced or not

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.announce_in is not None and sockets is not None:
            self.announced_at = announce(self.announce_in, self.runtime_dir)
        if self.announced_at is not None and sockets is not None:
            sockets = [*sockets, self.announced_at.sock]
        await super().startup(sockets)
        if not self.started:
            self.withdraw()
        self.announced.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.withdraw()  # first: new searches go local while these finish
        await super().shutdown(sockets)
        self.close_announced()

    def withdraw(self) -> None:
        """Remove the Unix socket's file: no new connection finds this server."""
        if self.announced_at is not None:
            withdraw(self.announced_at)

    def close_announced(self) -> None:
        """Close the Unix socket (after uvicorn stopped serving on it; closing twice is a
        no-op)."""
        if self.announced_at is not None:
            self.announced_at.sock.close()
