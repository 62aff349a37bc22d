"""A running `retriever serve`, seen from the CLI: find it, and search through it.

While a server accepts connections on a loopback address it names itself in
`<index>/serve.json`: {"url": "http://127.0.0.1:8765", "pid": 4242, "directory": "/abs/index"}
(retriever.server.app.announce). Its model and FAISS indexes are loaded, so a search it answers
takes milliseconds where a cold CLI spends seconds importing torch and loading them.

serve.json is a file anyone who can write into the index folder can plant, so it is trusted only
when it is this user's file and names a loopback address (an IP, not a name) on which the live,
running process it names, also this user's, holds the listening socket (read from /proc on
Linux). Anything else is ignored and the search runs here: no query leaves for another address.

Anything short of an answer (refused, no reply, not JSON, a 5xx, a query the API cannot carry)
raises `ServerUnavailable`, and the CLI searches locally. An error the server gives
({"error": "one line", "type": "ItemNotFound"}, a 4xx) is raised as that library error.

Stdlib, retriever.errors, retriever.jsonfile and retriever.media.paths only: this module is on
the cold path of every `retriever search`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from retriever import errors
from retriever.errors import RetrieverError, SmallFileError, UsageError
from retriever.jsonfile import open_regular, parse_json, read_open
from retriever.media.paths import folder_key

if TYPE_CHECKING:  # only for types: retriever.search.query imports SQLAlchemy and numpy
    from retriever.search.query import Query, Result, Term

SERVE_FILE = "serve.json"
SERVE_MAX_BYTES = 64 * 1024  # {"url", "pid", "directory"}: a path is at most a few kB
RESULT_FIELDS = ("id", "path", "score", "kind", "position", "passage", "caption", "time",
                 "tags", "section", "taken_at")
CONNECT_TIMEOUT = 2.0  # seconds; a loopback connect is accepted or refused at once


class ServerUnavailable(RetrieverError):
    """No server can answer this search (none running, a stale serve.json, no reply, or a
    query the API cannot carry): search locally instead."""


def find_server(index_dir: Path) -> str | None:
    """The url in `<index_dir>/serve.json` if the process that wrote it still runs; else None.

    Whether it answers is found by asking (`remote_search` raises `ServerUnavailable`)."""
    path = index_dir / SERVE_FILE
    try:
        with open_regular(path) as file:  # not a FIFO that never answers, nor /dev/zero
            if os.fstat(file.fileno()).st_uid != os.geteuid():  # planted by another user
                return None
            found = parse_json(path, read_open(file, path, SERVE_MAX_BYTES))
        url, pid, directory = found["url"], found["pid"], found["directory"]
    except (OSError, SmallFileError, KeyError, TypeError):
        return None
    if directory != str(index_dir.resolve()):  # a copied index folder took the file along
        return None
    address = _loopback(url)
    if address is None or not _running(pid) or not _listens(pid, *address):
        return None
    return str(url)


def _loopback(url: object) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """(ip, port) of `http://IP:PORT` with a loopback IP; None for anything else."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        ip, port = ipaddress.ip_address(parts.hostname or ""), parts.port
    except ValueError:  # a host name, or a port that is not one
        return None
    if parts.scheme != "http" or parts.username or parts.path not in ("", "/") or port is None:
        return None
    return (ip, port) if ip.is_loopback else None


def _listens(pid: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
    """Whether process `pid` holds the socket listening on ip:port (Linux: /proc/PID/net/tcp
    lists the listening sockets' inodes, /proc/PID/fd the process's). Elsewhere: True."""
    if not Path("/proc/self/net/tcp").exists():
        return True
    table = Path(f"/proc/{pid}/net/tcp6" if ip.version == 6 else f"/proc/{pid}/net/tcp")
    try:
        rows = [line.split() for line in table.read_text().splitlines()[1:]]
        inodes = {f"socket:[{row[9]}]" for row in rows
                  if row[3] == "0A" and _address(row[1]) == (ip, port)}  # 0A: LISTEN
        return bool(inodes) and any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
                                    for fd in os.listdir(f"/proc/{pid}/fd"))
    except (OSError, IndexError, ValueError):
        return False


def _address(field: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """/proc/net/tcp's "0100007F:1F90": 32-bit words in host order (little-endian), hex port."""
    hex_ip, hex_port = field.split(":")
    raw = bytes.fromhex(hex_ip)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words), int(hex_port, 16)


def search_server(index_dir: Path, query: Query) -> list[Result] | None:
    """Results from the server announced in `index_dir`, or None when none answers."""
    url = find_server(index_dir)
    if url is None:
        return None
    from retriever.search.query import Result

    try:
        fields, upload = request_for(query)
        return [Result(**row) for row in remote_search(url, fields, upload)]
    except ServerUnavailable:
        return None


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
        "tag": query.tag, "video_frames": query.video_frames or None,
        "add": [_term(t) for t in query.add] or None, "sub": [_term(t) for t in query.sub] or None,
    }
    return {name: value for name, value in fields.items() if value is not None}, query.image


def remote_search(
    url: str, request: dict[str, Any], image: Path | None = None, timeout: float = 30
) -> list[dict[str, Any]]:
    """POST `request` (the /api/search fields) to the server at `url`, as JSON, or as multipart
    with `image` uploaded. Returns rows with `Result.to_json()`'s fields, best first."""
    if image is None:
        body, content_type = json.dumps(request).encode(), "application/json"
    elif "add" in request or "sub" in request:
        raise ServerUnavailable("an image search with --add/--sub has no multipart form")
    else:
        body, content_type = _multipart(request, image)
    status, answer = _post(url, "/api/search", body, content_type, timeout)
    if status != 200:
        raise _error(url, status, answer)
    try:
        return [{name: row[name] for name in RESULT_FIELDS} for row in answer["results"]]
    except (KeyError, TypeError):
        raise ServerUnavailable(f"{url} answered rows without {RESULT_FIELDS}") from None


def _running(pid: Any) -> bool:
    """A process of this user with this id exists and is not stopped (Ctrl-Z: it would accept
    connections into the kernel's backlog and never answer them)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (OSError, OverflowError):  # gone; PermissionError: another user's, not ours
        return False
    try:  # root may signal anyone: the owner must be this user still
        if os.stat(f"/proc/{pid}").st_uid != os.geteuid():
            return False
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return False
    except OSError:
        return False
    try:  # Linux: "pid (name) S ..." where T / t is stopped; elsewhere assume running
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("T", "t")


def _term(term: Term) -> dict[str, Any]:
    part = {"text": term.text} if term.text is not None else {"item": term.item}
    return {"weight": term.weight, **part}


def _multipart(fields: dict[str, Any], image: Path) -> tuple[bytes, str]:
    """multipart/form-data: each field as text, then the image file in the `image` field."""
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


def _post(url: str, path: str, body: bytes, content_type: str, timeout: float
          ) -> tuple[int, Any]:
    """(status, parsed JSON) of one POST. http.client, not urllib: no proxy from the
    environment may see a request for a loopback address."""
    import http.client  # only when a server answers: a one-off search does without it

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port,
                                            timeout=min(timeout, CONNECT_TIMEOUT))
    try:
        connection.connect()
        assert connection.sock is not None
        connection.sock.settimeout(timeout)  # connected: now wait as long as a search takes
        connection.request("POST", path, body, {"Content-Type": content_type})
        response = connection.getresponse()
        status, data = response.status, response.read()
    except (OSError, http.client.HTTPException) as error:
        raise ServerUnavailable(f"no answer from {url}: {error}") from None
    finally:
        connection.close()
    try:
        return status, json.loads(data)
    except ValueError:
        raise ServerUnavailable(f"{url} answered {status} without JSON: not a retriever "
                                f"server") from None


def _error(url: str, status: int, answer: Any) -> RetrieverError:
    """The library error the server named, with its one line; `ServerUnavailable` where a
    local search may still answer: an untyped answer (a fault, a route it lacks), an upload
    over its cap (413), an index re-indexed with a model it has not loaded."""
    answer = answer if isinstance(answer, dict) else {}
    message, kind = answer.get("error"), _library_error(answer.get("type"))
    if kind is None or not isinstance(message, str) or status == 413 or issubclass(
            kind, errors.ModelMismatch):
        return ServerUnavailable(f"{url} answered {status}: {message or answer}")
    return kind(message)


def _library_error(name: Any) -> type[RetrieverError] | None:
    kind = getattr(errors, name, None) if isinstance(name, str) else None
    return kind if isinstance(kind, type) and issubclass(kind, RetrieverError) else None
