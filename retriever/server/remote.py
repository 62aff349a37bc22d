"""A running `retriever serve`, seen from the CLI: find it, and search through it.

While a server runs it also listens on a Unix socket for its index folder (where:
retriever.server.discovery), and `retriever search` asks it there over HTTP. Its model and
FAISS indexes are loaded, so a search it answers takes milliseconds where a cold CLI spends
seconds importing torch and loading them.

Anyone who can write into the index folder can plant a file there, so a socket is trusted only
when it is a socket file of this user and the process that holds it is this user's (the
kernel's SO_PEERCRED). A killed server's socket refuses connections: it is removed. A stopped
one (Ctrl-Z) accepts and never answers: `find_server` asks it to answer `GET /api/ping` within
CONNECT_TIMEOUT. Anything else is ignored and the search runs here.

Anything short of an answer (refused, no reply, not JSON, a 5xx, a query the API cannot carry)
raises `ServerUnavailable`, and the CLI searches locally. An error the server gives
({"error": "one line", "type": "ItemNotFound"}, a 4xx) is raised as that library error.

Stdlib, retriever.errors and retriever.media.paths only: this module is on the cold path of
every `retriever search`.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retriever import errors
from retriever.errors import RetrieverError, UsageError
from retriever.media.paths import folder_key
from retriever.server.discovery import own_socket, socket_paths

if TYPE_CHECKING:  # only for types: retriever.search.query imports SQLAlchemy and numpy
    from http.client import HTTPConnection

    from retriever.search.query import Query, Result, Term

RESULT_FIELDS = ("id", "path", "score", "kind", "position", "passage", "caption", "time",
                 "tags", "found_in", "taken_at", "page", "section", "snippet", "marks")
CONNECT_TIMEOUT = 2.0  # seconds; a live server accepts at once and answers a ping in ~1 ms
PING = "/api/ping"


class ServerUnavailable(RetrieverError):
    """No server can answer this search (none running, a stale or foreign socket, no reply,
    or a query the API cannot carry): search locally instead."""


def find_server(index_dir: Path, runtime_dir: str = "") -> Path | None:
    """The socket of this user's live server for `index_dir`, which just answered a ping;
    None when there is none (a killed server's socket is removed on the way). `runtime_dir`:
    $XDG_RUNTIME_DIR (retriever.server.discovery)."""
    for path in socket_paths(index_dir, runtime_dir):
        if own_socket(path) is None:  # the usual case: no server, and no http.client import
            continue
        try:
            status, answer = _request(path, "GET", PING, timeout=CONNECT_TIMEOUT)
        except ServerUnavailable:
            continue
        if status == 200 and isinstance(answer, dict) and answer.get("retriever") is True:
            return path
    return None


def connect(path: Path, timeout: float) -> socket.socket:
    """A connection to the server socket at `path`, checked: this user's socket file, held by
    a process of this user. A refused connection to this user's socket (its server was
    killed) removes the socket. Raises `ServerUnavailable`."""
    found = own_socket(path)
    if found is None:
        raise ServerUnavailable(f"{path} is not a socket of this user")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(os.fspath(path))
        uid = _peer_uid(sock)
    except OSError as error:
        sock.close()
        if isinstance(error, ConnectionRefusedError):
            _remove_stale(path, found)
        raise ServerUnavailable(f"no answer from {path}: {error}") from None
    if uid is not None and uid != os.geteuid():
        sock.close()
        raise ServerUnavailable(f"{path} is held by another user's process (uid {uid})")
    return sock


def _peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process holding the other end (Linux's SO_PEERCRED: pid, uid, gid);
    None where the kernel does not tell (there, the socket file's owner was checked)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    size = struct.calcsize("3i")
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, size))
    return int(uid)


def _remove_stale(path: Path, found: os.stat_result) -> None:
    """Remove the socket a killed server left, unless a new server replaced it meanwhile."""
    try:
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) == (found.st_dev, found.st_ino):
            path.unlink()
    except OSError:
        pass


def search_server(index_dir: Path, query: Query, runtime_dir: str = "") -> list[Result] | None:
    """Results from the server announced for `index_dir`, or None when none answers."""
    address = find_server(index_dir, runtime_dir)
    if address is None:
        return None
    from retriever.search.query import Result

    try:
        fields, upload = request_for(query)
        return [Result(**{**row, "tags": tuple(row["tags"]),
                          "marks": tuple((int(a), int(b)) for a, b in row["marks"])})
                for row in remote_search(address, fields, upload)]
    except (ServerUnavailable, TypeError, ValueError):  # no answer, or rows of another shape
        return None
    except errors.ImageError as error:
        raise _named(error, query.image) from None


def _named(error: errors.ImageError, image: Path | None) -> errors.ImageError:
    """The server's error about "uploaded file 'notes.md'" naming the file as given here, as a
    local search would: "notes.md: not a readable image ..."."""
    sent = f"uploaded file {image.name!r}: " if image is not None else None
    message = str(error)
    if sent is None or not message.startswith(sent):
        return error
    # the server calls its temporary copy 'upload' (app.py's _search_upload)
    reason = message[len(sent):].replace(repr("upload"), repr(str(image)))
    return errors.ImageError(f"{image}: {reason}")


def request_for(query: Query) -> tuple[dict[str, Any], Path | None]:
    """The /api/search fields for a checked `query`, and the image file to upload, if any.

    Raises `ServerUnavailable` for an image among `add`/`sub` (the server opens no paths)."""
    if any(term.image is not None for term in (*query.add, *query.sub)):
        raise ServerUnavailable("the server takes no image files in --add/--sub")
    fields = {
        "text": query.text, "item": query.item, "target": query.target, "k": query.k,
        # as the local search does: `in` is a folder relative to this process's cwd
        "in": folder_key(query.path_prefix) if query.path_prefix else None,
        "after": query.after, "before": query.before, "min_score": query.min_score,
        "tag": query.tag, "video_frames": query.video_frames or None, "match": query.match,
        "add": [_term(t) for t in query.add] or None, "sub": [_term(t) for t in query.sub] or None,
    }
    return {name: value for name, value in fields.items() if value is not None}, query.image


def remote_search(
    address: Path, request: dict[str, Any], image: Path | None = None, timeout: float = 30
) -> list[dict[str, Any]]:
    """POST `request` (the /api/search fields) to the server at the socket `address`, as
    JSON, or as multipart with `image` uploaded. Returns rows with `Result.to_json()`'s
    fields, best first."""
    if image is None:
        body, content_type = json.dumps(request).encode(), "application/json"
    elif "add" in request or "sub" in request:
        raise ServerUnavailable("an image search with --add/--sub has no multipart form")
    else:
        body, content_type = _multipart(request, image)
    status, answer = _request(address, "POST", "/api/search", body, content_type, timeout)
    if status != 200:
        raise _error(address, status, answer)
    try:
        return [{name: row[name] for name in RESULT_FIELDS} for row in answer["results"]]
    except (KeyError, TypeError):
        raise ServerUnavailable(f"{address} answered rows without {RESULT_FIELDS}") from None


def _term(term: Term) -> dict[str, Any]:
    part = {"text": term.text} if term.text is not None else {"item": term.item}
    return {"weight": term.weight, **part}


def _multipart(fields: dict[str, Any], image: Path) -> tuple[bytes, str]:
    """multipart/form-data: each field as text, then the image file in the `image` field."""
    import secrets  # only for an upload: it loads hashlib (OpenSSL), ms of every cold start

    try:
        data = image.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read query image {image} ({error.strerror}): pass an image "
                         f"file") from None
    boundary = secrets.token_hex(16)
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(_part(boundary, f'name="{name}"', str(value).encode()))
    filename = json.dumps(image.name)  # quoted, with any quote inside escaped
    parts.append(_part(boundary, f"name=\"image\"; filename={filename}", data,
                       "Content-Type: application/octet-stream\r\n"))
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _part(boundary: str, disposition: str, data: bytes, headers: str = "") -> bytes:
    head = f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n{headers}\r\n"
    return head.encode() + data + b"\r\n"


def _request(path: Path, method: str, route: str, body: bytes | None = None,
             content_type: str | None = None, timeout: float = 30) -> tuple[int, Any]:
    """(status, parsed JSON) of one request over the socket at `path`. http.client over the
    checked connection (`connect`), with the Host a loopback server answers."""
    import http.client  # only when a server answers: a one-off search does without it

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = connect(path, min(timeout, CONNECT_TIMEOUT))
            self.sock.settimeout(timeout)  # connected: now wait as long as a search takes

    connection: HTTPConnection = Connection("localhost", timeout=timeout)
    headers = {"Content-Type": content_type} if content_type else {}
    try:
        connection.request(method, route, body, headers)
        response = connection.getresponse()
        status, data = response.status, response.read()
    except (OSError, http.client.HTTPException) as error:
        raise ServerUnavailable(f"no answer from {path}: {error}") from None
    finally:
        connection.close()
    try:
        return status, json.loads(data)
    except ValueError:
        raise ServerUnavailable(f"{path} answered {status} without JSON: not a retriever "
                                f"server") from None


def _error(address: Path, status: int, answer: Any) -> RetrieverError:
    """The library error the server named, with its one line; `ServerUnavailable` where a
    local search may still answer: an untyped answer (a fault, a route it lacks), an upload
    over its cap (413), an index re-indexed with a model it has not loaded."""
    answer = answer if isinstance(answer, dict) else {}
    message, kind = answer.get("error"), _library_error(answer.get("type"))
    if kind is None or not isinstance(message, str) or status == 413 or issubclass(
            kind, errors.ModelMismatch):
        return ServerUnavailable(f"{address} answered {status}: {message or answer}")
    return kind(message)


def _library_error(name: Any) -> type[RetrieverError] | None:
    kind = getattr(errors, name, None) if isinstance(name, str) else None
    return kind if isinstance(kind, type) and issubclass(kind, RetrieverError) else None
