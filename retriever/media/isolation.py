"""Native decoders (LibRaw via rawpy, libheif via pillow-heif, FFmpeg via PyAV) run in worker
processes, so that a hostile file that crashes one or eats memory is that file's failure alone.

`isolated(function, source, *args, memory=bytes, failure=ImageError)` runs `function(file,
*args)` in a worker and returns its (pickled) result. `file` is a binary file object over the
same bytes as `source`: a path is opened by the worker; an open file is handed over as its file
descriptor (read with pread from its current position: the caller's offset is not moved, and a
4 GB video is never copied); a file object without one (io.BytesIO) is sent as its bytes.

A worker is `python -m retriever.media.isolation FD`, talking over a socketpair. Before each
call it limits its own address space (RLIMIT_AS) to what it uses idle plus `memory`, so a
decoder that asks for more gets MemoryError / std::bad_alloc, not the machine's memory. An
error the function raises comes back as `failure(one line)`; a worker that dies (a segfault, the
kernel's OOM killer) becomes `failure("<file>: the decoder died (SIGSEGV)")` and is replaced.
Idle workers wait for the next call (one per reader thread at most); a worker whose parent is
gone exits. Measured on 2 loaded cores (load 8-10), medians, isolated vs in-process: starting a
worker 0.3-0.6 s, once per process; a DNG's small JPEG preview 1.0 vs 0.4 ms; a 12 MP HEIC 447
vs 443 ms; a 12 MP DNG demosaic 402 vs 338 ms; 30 video frames 18 vs 18 ms: about a
millisecond a call, within the noise of any real decode.
"""

from __future__ import annotations

import atexit
import io
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any, BinaryIO

from retriever.errors import ImageError, RetrieverError

LENGTH = struct.Struct("!Q")  # every message: its length, then its pickle
MAX_IDLE = 8  # idle workers kept for the next call (the indexer reads with a few threads)
# a worker left holding more than this after a call (a 100 MP demosaic: ~1.2 GB that malloc
# keeps) is ended rather than kept idle: idle workers hold little memory
MAX_IDLE_RESIDENT = 256 << 20
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# malloc's per-thread arenas reserve 64 MB of address space each: with FFmpeg's threads that
# alone would eat the RLIMIT_AS budget
CHILD_ENV = {"MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

_idle: list[_Worker] = []
_lock = threading.Lock()


def isolated(function: Callable[..., Any], source: Path | BinaryIO, *args: Any, memory: int,
             failure: Callable[[str], Exception] = ImageError) -> Any:
    """`function(file over source, *args)` in a worker process limited to `memory` more bytes.
    `function` is a module-level function; raises `failure(line)` for whatever goes wrong."""
    name = str(source) if isinstance(source, Path) else str(getattr(source, "name", "upload"))
    request = {"function": f"{function.__module__}:{function.__qualname__}", "args": args,
               "memory": memory, "name": name}
    fds: list[int] = []
    if isinstance(source, Path):
        request["path"] = str(source)
    elif _fileno(source) is not None:
        fds, request["offset"] = [_fileno(source)], source.tell()  # type: ignore[list-item]
    else:
        request["data"] = source.read()
    worker = _take()
    try:
        reply = worker.call(request, fds)
    except (OSError, EOFError):  # the worker died mid-call: that file's failure
        raise failure(f"{name}: the decoder died ({worker.death()})") from None
    with _lock:
        keep = len(_idle) < MAX_IDLE and worker.resident() < MAX_IDLE_RESIDENT
        if keep:
            _idle.append(worker)
    if not keep:
        worker.close()
    if "error" in reply:
        raise failure(reply["error"])
    return reply["result"]


def _take() -> _Worker:
    """An idle worker still alive, else a new one."""
    while True:
        with _lock:
            worker = _idle.pop() if _idle else None
        if worker is None:
            return _Worker()
        if worker.process.poll() is None:
            return worker
        worker.close()


def _fileno(source: BinaryIO) -> int | None:
    try:
        return source.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


class _Worker:
    """One worker process and its end of the socketpair."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair()
        path = os.pathsep.join(p for p in sys.path if p)  # the same modules as this process
        # this process's environment handed on whole, no variable read from it (so not a read
        # of configuration: tests/check_layout.py rule 4), with CHILD_ENV over it
        env = {**os.environ, **CHILD_ENV, "PYTHONPATH": path}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "retriever.media.isolation", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            env=env, close_fds=True)
        theirs.close()
        self.socket = mine

    def call(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        socket.send_fds(self.socket, [LENGTH.pack(len(payload))], fds)
        self.socket.sendall(payload)
        return pickle.loads(_receive(self.socket, _receive_length(self.socket)))

    def resident(self) -> int:
        """The worker's resident memory in bytes (Linux; 0 where unknown)."""
        try:
            with open(f"/proc/{self.process.pid}/statm") as fh:
                return int(fh.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            return 0

    def death(self) -> str:
        """Why the process ended: 'SIGKILL', 'exit status 1'."""
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.close()
            return "no answer"
        finally:
            self.socket.close()
        return signal.Signals(-code).name if code < 0 else f"exit status {code}"

    def close(self) -> None:
        self.socket.close()  # the worker reads end-of-file and exits
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _receive_length(sock: socket.socket) -> int:
    return int(LENGTH.unpack(_receive(sock, LENGTH.size))[0])


def _receive(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other process is gone")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


@atexit.register
def _close_idle() -> None:
    with _lock:
        workers = list(_idle)
        _idle.clear()
    for worker in workers:
        worker.close()


# ---- the worker's side ----------------------------------------------------------------------

class _PreadFile(io.RawIOBase):
    """The parent's open file, read at our own offset (pread): the parent's is not moved."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd, self.offset, self.end = fd, offset, os.fstat(fd).st_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = os.pread(self.fd, len(buffer), self.offset)
        buffer[: len(data)] = data
        self.offset += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.offset, io.SEEK_END: self.end}[whence]
        self.offset = base + offset
        return self.offset

    def tell(self) -> int:
        return self.offset

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


def _serve(fd: int) -> None:
    """Answer requests on socket `fd` until the parent closes it or goes away."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # this process's edge: every caller checks from the header
    sock = socket.socket(fileno=fd)
    parent = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    while True:
        try:
            head, fds, _, _ = socket.recv_fds(sock, LENGTH.size, 1)
            if not head:
                return
            request = pickle.loads(_receive(sock, _receive_length_from(head, sock)))
        except (OSError, EOFError):
            return
        reply = _answer(request, fds)
        sock.sendall(_framed(reply))


def _receive_length_from(head: bytes, sock: socket.socket) -> int:
    if len(head) < LENGTH.size:
        head += _receive(sock, LENGTH.size - len(head))
    return int(LENGTH.unpack(head)[0])


def _framed(reply: dict[str, Any]) -> bytes:
    try:
        payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
    except MemoryError:
        payload = pickle.dumps({"error": f"{reply.get('name')}: the result is too large"})
    return LENGTH.pack(len(payload)) + payload


def _answer(request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    name = request["name"]
    module, _, qualname = request["function"].partition(":")
    try:
        function = getattr(import_module(module), qualname)
        _limit_memory(request["memory"])
        with _open(request, fds) as source:
            return {"result": function(source, *request["args"])}
    except RetrieverError as err:
        return {"error": str(err)}
    except MemoryError:
        megabytes = request["memory"] >> 20
        return {"error": f"{name}: the decoder needed more than its {megabytes} MB"}
    except Exception as err:  # a decoder's own error on this file: the file's failure
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return {"error": f"{name}: not readable ({reason})"}
    finally:
        for fd in fds[1:]:
            os.close(fd)


def _open(request: dict[str, Any], fds: list[int]) -> Any:
    """A binary file over the request's bytes, named as the caller names it (messages and
    suffix checks see that name)."""
    if "path" in request:
        return open(request["path"], "rb")  # noqa: SIM115 (closed by _answer)
    if fds:
        raw = _PreadFile(fds[0], request["offset"])
        raw.name = request["name"]  # type: ignore[attr-defined]
        return io.BufferedReader(raw, 1 << 16)
    source = io.BytesIO(request["data"])
    source.name = request["name"]  # type: ignore[attr-defined]
    return source


def _limit_memory(memory: int) -> None:
    """RLIMIT_AS (soft) = what this process uses now + `memory`; the hard limit is kept, so
    the next call may raise it again. (A decoder imported in the call takes its share.)"""
    try:
        import resource
    except ImportError:  # not a Unix
        return
    size = _address_space()
    if size is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = size + memory
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _address_space() -> int | None:
    """This process's virtual size in bytes (Linux; None elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


def _watch_parent(parent: int) -> None:
    """Exit once the parent is gone (killed), even in the middle of a decode."""
    import time

    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
