"""`retriever serve`: a local web page and a JSON API over one collection.

    GET  /, /app.js, /style.css      the page (retriever/server/web/)
    GET  /api/info                   what the index holds and which model made it
    GET  /api/search?text=..|item=..  search by words or by an indexed item, with filters
    POST /api/search                 a JSON body (adds `add`/`sub` terms), or multipart with an
                                     `image` file to search by
    GET  /api/items/{id}/thumbnail   JPEG thumbnail of an image item
    GET  /api/items/{id}/file        the indexed file itself

While it accepts connections on a loopback address, the server names itself in
`<index>/serve.json` (`announce`), so `retriever search` there asks it (retriever.server.remote).

The app keeps the model and the FAISS indexes loaded and answers every search with
`retriever.search.query.search`, the function the CLI uses. Files are served by item id,
looked up in
the store: no request value is ever made into a filesystem path. Library errors become
`{"error": "one line", "type": "UsageError"}` with a 4xx status (`STATUS`); `type` names the
nearest class in retriever.errors, so a client can raise the same error.
"""

from __future__ import annotations

import ipaddress
import json
import math
import mimetypes
import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message

from retriever.atomic import replacing
from retriever.encoding.encoders import Encoder
from retriever.errors import (
    ImageError,
    IndexNotFound,
    ItemNotFound,
    ModelMismatch,
    RetrieverError,
    SmallFileError,
    UsageError,
)
from retriever.jsonfile import read_json
from retriever.library.collection import Collection
from retriever.library.thumbnails import (
    CHUNK,
    DEFAULT_SIZE,
    THUMBNAILED,
    open_indexed,
    thumbnail,
)
from retriever.media.paths import key_path
from retriever.search.query import (
    Query,
    Result,
    Term,
    parse_date,
    recent_images,
    resolve_target,
    search,
)
from retriever.server.remote import SERVE_FILE, SERVE_MAX_BYTES

WEB = Path(__file__).parent / "web"
ASSETS = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
          "/style.css": ("style.css", "text/css")}
# The page loads nothing from elsewhere (it works offline); blob: shows a dropped image.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"}
# Indexed files are images, .txt and .md: never let a browser sniff one into HTML.
FILE_HEADERS = {"X-Content-Type-Options": "nosniff"}
# A thumbnail URL names an item id, and ids are never reused: its bytes never change.
THUMB_HEADERS = {**FILE_HEADERS, "Cache-Control": "private, max-age=31536000, immutable"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
FIELDS = ("text", "item", "target", "k", "in", "after", "before", "min_score", "tag",
          "video_frames")
JSON_FIELDS = (*FIELDS, "add", "sub")
UNIX_TIME = re.compile(r"-?[0-9]+(\.[0-9]*)?")  # after/before: else a date, as the CLI takes


class UploadTooLarge(UsageError):
    """An uploaded query image (the whole request) is over `ServerSettings.max_upload_bytes`."""


# First match wins: subclasses before their bases.
STATUS: tuple[tuple[type[RetrieverError], int], ...] = (
    (UploadTooLarge, 413),
    (ItemNotFound, 404),
    (IndexNotFound, 404),
    (UsageError, 400),
    (ImageError, 400),  # an upload that is not an image, or one over the pixel cap
    (RetrieverError, 409),  # the index's state (another model, a writer) refuses the request
)


@dataclass(frozen=True)
class ServerSettings:
    max_upload_bytes: int = 20 * 1024 * 1024  # a phone photo is 2-10 MB; larger gets 413
    max_json_bytes: int = 1024 * 1024  # a JSON search: words and terms; larger gets 413
    max_k: int = 1000  # FAISS allocates k slots per query up front: cap what a URL can ask for
    thumbnail_size: int = DEFAULT_SIZE  # longest side of grid thumbnails, in pixels
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host headers answered (DNS rebinding)

    @classmethod
    def for_host(cls, host: str) -> ServerSettings:
        """Bound to loopback: answer loopback names only. An explicit --host: any name."""
        return cls() if host in LOOPBACK_HOSTS else cls(allowed_hosts=("*",))


class LiveCollection:
    """The collection and encoder requests use; one search at a time.

    A local page has one user, and the model and FAISS indexes are shared state: a lock is
    simpler than proving them thread-safe. When `retriever index` has written to the store
    since (its generation moved), the collection is reopened so searches see the new files;
    re-indexed with another model (`--reindex`), it refuses to search with the loaded one.
    """

    def __init__(self, collection: Collection, encoder: Encoder) -> None:
        self.lock = threading.Lock()
        self.collection = collection
        self.encoder = encoder
        self.generation = collection.generation()
        self.model = collection.model()  # what `encoder` was loaded from

    @contextmanager
    def current(self) -> Iterator[Collection]:
        with self.lock:
            now = self.collection.generation()
            if now != self.generation:
                old = self.collection
                self.collection, self.generation = old.reopen(), now
            model = self.collection.model()
            if model is not None and self.model is not None and (
                    (model.name, model.pretrained) != (self.model.name, self.model.pretrained)):
                raise ModelMismatch(
                    f"{self.collection.directory} was re-indexed with {model.name} "
                    f"({model.pretrained}): restart `retriever serve` to load that model")
            yield self.collection


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
    except (OSError, ValueError, TypeError) as error:  # the last two: not a host name
        sock.close()
        reason = getattr(error, "strerror", None) or "not an address"
        raise UsageError(f"cannot listen on {host}:{port} ({reason}): pass another "
                         f"--port or --host") from None
    return sock


def serve_forever(app: Starlette, sock: socket.socket, announce_in: Path | None = None) -> None:
    """Answer requests on `sock` until Ctrl-C or SIGTERM. With `announce_in` (the collection's
    directory) and a loopback `sock`, `<announce_in>/serve.json` names this server meanwhile."""
    server = Server(uvicorn.Config(app, log_level="warning"), announce_in)
    try:
        server.run(sockets=[sock])
    finally:  # an exception out of startup or the loop; a signal was handled in shutdown
        if announce_in is not None:
            withdraw(announce_in)


class Server(uvicorn.Server):
    """uvicorn's server, announced in `<announce_in>/serve.json` while it accepts connections.

    The file goes in `shutdown`, not after `run`: uvicorn re-raises a caught SIGTERM once the
    loop ends, and its default action ends the process before any `finally` runs.
    """

    def __init__(self, config: uvicorn.Config, announce_in: Path | None = None) -> None:
        super().__init__(config)
        self.announce_in = announce_in
        self.announced = threading.Event()  # set once startup is over, file written or not

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        url = local_url(sockets[0]) if sockets else None
        if self.started and self.announce_in is not None and url is not None:
            # a read-only index is still served: the CLI just searches locally
            with suppress(OSError):
                announce(self.announce_in, url)
        self.announced.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.announce_in is not None:
            withdraw(self.announce_in)  # first: new searches go local while these finish
        await super().shutdown(sockets)


def local_url(sock: socket.socket) -> str | None:
    """`http://127.0.0.1:PORT` (the port bound, so port 0 gives the real one) for a socket on
    a loopback address; None for any other, which is never announced."""
    host, port = sock.getsockname()[:2]
    if not ipaddress.ip_address(host).is_loopback:
        return None
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def announce(directory: Path, url: str) -> Path:
    """Write `<directory>/serve.json`: {"url", "pid", "directory"} (atomically: a reader never
    sees half). A client checks the pid lives and the url answers, so a killed server's file
    is harmless; `directory` (resolved) tells a copied folder's file from its own."""
    path = directory / SERVE_FILE
    with replacing(path) as temporary:
        Path(temporary).write_text(json.dumps(
            {"url": url, "pid": os.getpid(), "directory": str(directory.resolve())}))
    return path


def withdraw(directory: Path) -> None:
    """Remove `<directory>/serve.json` if this process wrote it (not a later server's)."""
    path = directory / SERVE_FILE
    with suppress(OSError, SmallFileError, AttributeError):  # none, damaged, or read-only
        if read_json(path, SERVE_MAX_BYTES).get("pid") == os.getpid():
            path.unlink(missing_ok=True)


def create_app(
    collection: Collection, encoder: Encoder, settings: ServerSettings | None = None
) -> Starlette:
    """The ASGI app serving `collection`, searched with `encoder` (the index's model)."""
    api = Api(LiveCollection(collection, encoder), settings or ServerSettings())
    routes = [Route(url, _asset(name, media)) for url, (name, media) in ASSETS.items()]
    routes += [
        Route("/api/info", api.info),
        Route("/api/recent", api.recent),
        Route("/api/search", api.search_get, methods=["GET"]),
        Route("/api/search", api.search_post, methods=["POST"]),
        Route("/api/items/{item}/thumbnail", api.thumbnail),
        Route("/api/items/{item}/file", api.file),
    ]
    hosts = Middleware(TrustedHostMiddleware, allowed_hosts=list(api.settings.allowed_hosts),
                       www_redirect=False)
    return Starlette(routes=routes, middleware=[hosts], exception_handlers={
        RetrieverError: _library_error, HTTPException: _http_error})


class Api:
    """The routes. Plain `def` ones run in Starlette's thread pool, off the event loop."""

    def __init__(self, live: LiveCollection, settings: ServerSettings) -> None:
        self.live = live
        self.settings = settings

    def info(self, request: Request) -> JSONResponse:
        with self.live.current() as collection:
            summary = collection.summary().to_json()
            return JSONResponse({**summary, "directory": str(collection.directory.resolve())})

    def recent(self, request: Request) -> JSONResponse:
        """The newest photos (EXIF date, else mtime): what the page shows before a search."""
        k = _whole_number(request.query_params.get("k", 24), "k")
        if not 1 <= k <= self.settings.max_k:
            raise UsageError(f"k must be from 1 to {self.settings.max_k}, not {k}")
        with self.live.current() as collection:
            rows = [_row(r) for r in recent_images(collection, k)]
        return JSONResponse({"results": [{**row, "score": None} for row in rows]})

    def search_get(self, request: Request) -> JSONResponse:
        return self._search(self._query(request.query_params, FIELDS))

    async def search_post(self, request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            request = _capped(request, self.settings.max_upload_bytes, "send a smaller image")
            return await self._search_upload(request)
        if content_type.startswith("application/json"):
            request = _capped(request, self.settings.max_json_bytes, "send a shorter query")
            query = self._query(await _json_object(request), JSON_FIELDS)
            return await run_in_threadpool(self._search, query)
        raise UsageError("POST a JSON object (Content-Type: application/json), or "
                         "multipart/form-data with an image file in the 'image' field")

    def thumbnail(self, request: Request) -> Response:
        # No lock: reading the store is thread-safe, and a collection being replaced by a
        # newer one (LiveCollection.current) stays usable.
        item = _whole_number(request.path_params["item"], "item")
        # bytes, never a cache path reopened: retriever.library.thumbnails checked both
        made = thumbnail(self.live.collection, item, self.settings.thumbnail_size)
        return Response(made, media_type="image/jpeg", headers=THUMB_HEADERS)

    def file(self, request: Request) -> StreamingResponse:
        """The checked, open file (retriever.library.thumbnails.open_indexed), not its path
        reopened."""
        view, handle = open_indexed(self.live.collection,
                                    _whole_number(request.path_params["item"], "item"))
        size = os.fstat(handle.fileno()).st_size
        media_type = mimetypes.guess_type(view.path)[0] or "application/octet-stream"
        return StreamingResponse(_chunks(handle), media_type=media_type,
                                 headers={**FILE_HEADERS, "Content-Length": str(size)})

    async def _search_upload(self, request: Request) -> JSONResponse:
        async with request.form(max_files=1, max_fields=len(FIELDS)) as form:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise UsageError("a multipart search needs an image file in the 'image' field")
            values = {key: value for key, value in form.items() if key != "image"}
            with tempfile.TemporaryDirectory(prefix="retriever-upload-") as folder:
                path = Path(folder) / "upload"
                path.write_bytes(await upload.read())
                try:
                    return await run_in_threadpool(
                        self._search, self._query(values, FIELDS, path))
                except ImageError as error:  # name the upload, not the temporary file
                    reason = str(error).replace(f"{path}: ", "", 1).replace(str(path), "upload")
                    raise ImageError(f"uploaded file {upload.filename!r}: {reason}") from None

    def _search(self, query: Query) -> JSONResponse:
        query.check()  # before taking the lock: a bad request never waits for a search
        with self.live.current() as collection:
            results = search(collection, self.live.encoder, query)
        return JSONResponse({"results": [_row(r) for r in results]})

    def _query(self, values: Mapping[str, Any], allowed: tuple[str, ...],
               image: Path | None = None) -> Query:
        """A Query from request values (query string, form fields or JSON) and an upload."""
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise UsageError(f"unknown parameter {unknown[0]!r}: use {', '.join(allowed)}")
        k = _whole_number(values.get("k", 10), "k")
        if k > self.settings.max_k:
            raise UsageError(f"k must be at most {self.settings.max_k}, not {k}")
        return Query(
            text=_text(values.get("text")), image=image,
            item=_optional_whole_number(values, "item"),
            target=resolve_target(str(values.get("target") or "") or None), k=k,
            path_prefix=_folder(values.get("in")),
            add=_terms(values.get("add"), "add"), sub=_terms(values.get("sub"), "sub"),
            after=_time(values, "after"), before=_time(values, "before"),
            min_score=_optional_number(values, "min_score"), tag=_tag(values.get("tag")),
            video_frames=str(values.get("video_frames", "")).lower() in ("1", "true"))


def _tag(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise UsageError(f"tag must be a label (text), not {value!r}")
    return value


def _row(result: Result) -> dict:
    # a video frame's thumbnail is that frame; its file URL plays the video from that moment
    moment = f"#t={result.time:g}" if result.time is not None else ""
    urls = {"thumbnail": f"/api/items/{result.id}/thumbnail" if result.kind in THUMBNAILED
            else None, "file": f"/api/items/{result.id}/file{moment}"}
    return {**result.to_json(), **urls}


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def _asset(name: str, media_type: str) -> Any:
    async def endpoint(request: Request) -> Response:
        return FileResponse(WEB / name, media_type=media_type, headers=PAGE_HEADERS)

    return endpoint


def _capped(request: Request, limit: int, fix: str) -> Request:
    """The same request, refusing (413) a body over `limit` bytes, declared or streamed."""
    shown = f"{limit // 2**20} MB" if limit >= 2**20 else f"{limit // 1024} kB"
    too_large = f"the upload is over the {shown} limit: {fix}"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(too_large)
    seen = 0

    async def receive() -> Message:
        nonlocal seen
        message = await request.receive()
        seen += len(message.get("body", b""))
        if seen > limit:  # a chunked body declares no length: count what arrives
            raise UploadTooLarge(too_large)
        return message

    return Request(request.scope, receive)


async def _json_object(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"the request body is not valid JSON: {error}") from None
    except RecursionError:  # [[[[...]]]] nested deeper than the parser recurses
        raise UsageError("the request body nests too deeply: send a flat JSON object of "
                         "search parameters") from None
    if not isinstance(body, dict):
        raise UsageError("the request body must be a JSON object of search parameters")
    return body


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise UsageError(f"text must be a string, not {value!r}")


def _whole_number(value: Any, name: str) -> int:
    """An int from a JSON number or a string of digits; SQLite's 64-bit range."""
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value.strip()):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
        return value
    raise UsageError(f"{name} must be a whole number, not {value!r}")


def _optional_whole_number(values: Mapping[str, Any], name: str) -> int | None:
    return None if values.get(name) in (None, "") else _whole_number(values[name], name)


def _optional_number(values: Mapping[str, Any], name: str) -> float | None:
    value = values.get(name)
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise UsageError(f"{name} must be a number, not {value!r}")
    return number


def _time(values: Mapping[str, Any], name: str) -> float | None:
    """Unix seconds, or a date as the CLI takes it (YYYY-MM-DD, ISO date-time; local time)."""
    value = values.get(name)
    if isinstance(value, str) and value.strip() and not UNIX_TIME.fullmatch(value.strip()):
        return parse_date(value.strip(), name)
    return _optional_number(values, name)


def _folder(value: Any) -> str | None:
    """The `in` filter: a folder (or file) as result paths show it (a key, retriever.media.
    paths), as the path `Query` takes. It is compared with stored paths in SQL, never opened;
    a relative one would mean the server's cwd."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not os.path.isabs(value):
        raise UsageError(f"in must be an absolute folder as result paths show it, not {value!r}")
    if ".." in PurePosixPath(value).parts:
        raise UsageError(f"in must not contain '..': pass the folder itself, not {value!r}")
    return str(key_path(value))


def _terms(value: Any, name: str) -> tuple[Term, ...]:
    """`add`/`sub` terms: words or item ids. Never an image path: the server reads none."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise UsageError(f"{name} must be a list of objects like {{\"text\": \"sunset\", "
                         f"\"weight\": 0.5}} or {{\"item\": 12}}")
    for term in value:
        extra = sorted(set(term) - {"weight", "text", "item"})
        if extra:
            raise UsageError(f"{name} terms take weight, text or item, not {extra[0]!r}")
    return tuple(Term(_weight(t), _text(t.get("text")), item=_optional_whole_number(t, "item"))
                 for t in value)


def _weight(term: Mapping[str, Any]) -> float:
    weight = _optional_number(term, "weight")
    return 1.0 if weight is None else weight


async def _library_error(request: Request, error: Exception) -> Response:
    status = next(code for kind, code in STATUS if isinstance(error, kind))
    public = next(k for k in type(error).__mro__ if k.__module__ == RetrieverError.__module__)
    return JSONResponse({"error": str(error), "type": public.__name__}, status_code=status)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    message = error.detail
    if error.status_code == 404:
        message = f"nothing at {request.url.path}: the routes are listed in README.md, Web UI"
    return JSONResponse({"error": message}, status_code=error.status_code, headers=error.headers)
