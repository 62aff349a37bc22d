"""`retriever serve`: a local web page and a JSON API over one collection.

    GET  /, /app.js, /style.css      the page (retriever/server/web/)
    GET  /api/info                   what the index holds and which model made it
    GET  /api/recent?k=24            the newest photos (EXIF date, else mtime): the page before
                                     a search
    GET  /api/search?text=..|item=..  search by words or by an indexed item, with filters
    POST /api/search                 a JSON body (adds `add`/`sub` terms), or multipart with an
                                     `image` file to search by
    GET  /api/items/{id}/thumbnail   JPEG thumbnail of an image item
    GET  /api/items/{id}/file        the indexed file itself (one `Range: bytes=a-b` answered 206:
                                     a video plays from a moment)
    GET  /api/tags                   {"tags": [{"label": "cat", "count": 12}, ...]}, by label
    POST /api/download               {"ids": [12, 40]}: those items' files as one zip
                                     (retriever.server.download)
    GET  /api/ping                   {"retriever": true}: a live server (retriever.server.remote)

The request fields are typed in retriever.server.requests; the process's life (its sockets,
and the Unix socket `retriever search` finds it by) is retriever.server.lifecycle.

The app keeps the model and the FAISS indexes loaded and answers every search with
`retriever.search.query.search`, the function the CLI uses. Files are served by item id,
looked up in
the store: no request value is ever made into a filesystem path. Library errors become
`{"error": "one line", "type": "UsageError"}` with a 4xx status (`STATUS`); `type` names the
nearest class in retriever.errors, so a client can raise the same error.
"""

from __future__ import annotations

import mimetypes
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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

from retriever.encoding.encoders import Encoder
from retriever.errors import (
    ImageError,
    IndexNotFound,
    ItemNotFound,
    ModelMismatch,
    RetrieverError,
    UsageError,
)
from retriever.library.collection import Collection
from retriever.library.thumbnails import (
    CHUNK,
    DEFAULT_SIZE,
    THUMBNAILED,
    open_indexed,
    thumbnail,
)
from retriever.search.query import Query, Result, recent_images, search
from retriever.server.download import (
    DownloadTooLarge,
    RangeNotSatisfiable,
    byte_range,
    item_ids,
    plan,
    ranged_chunks,
    zip_chunks,
)
from retriever.server.requests import JsonSearch, SearchFields, json_object, whole_number

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


class UploadTooLarge(UsageError):
    """An uploaded query image (the whole request) is over `ServerSettings.max_upload_bytes`."""


# First match wins: subclasses before their bases.
STATUS: tuple[tuple[type[RetrieverError], int], ...] = (
    (UploadTooLarge, 413),
    (DownloadTooLarge, 413),
    (RangeNotSatisfiable, 416),
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
    max_download_items: int = 1000  # ids one zip download may name (a page of results is k)
    max_download_bytes: int = 4 * 2**30  # stored size of one zip's files: a few videos

    @classmethod
    def for_host(cls, host: str) -> ServerSettings:
        """Bound to loopback: answer loopback names only. An explicit --host: any name."""
        return cls() if host in LOOPBACK_HOSTS else cls(allowed_hosts=("*",))


class LiveCollection:
    """The collection and encoder requests use; one search at a time.

    A local page has one user, and the model and FAISS indexes are shared state: a lock is
    simpler than proving them thread-safe. When `retriever index` has written to the store
    since (its generation moved), the collection is reopened so searches see the new files;
    re-indexed with another model (`--reindex`, or a `--switch` completed), the index's new
    model is loaded by `reload` (the searches meanwhile wait on the lock, then answer with it),
    or, with no `reload`, searches are refused rather than answered with the loaded one.
    """

    def __init__(self, collection: Collection, encoder: Encoder,
                 reload: Callable[[Collection], Encoder] | None = None) -> None:
        self.lock = threading.Lock()
        self.collection = collection
        self.encoder = encoder
        self.reload = reload
        self.generation = collection.reads.generation()
        self.model = collection.reads.model()  # what `encoder` was loaded from

    @contextmanager
    def current(self) -> Iterator[Collection]:
        with self.lock:
            now = self.collection.reads.generation()
            if now != self.generation:
                old = self.collection
                self.collection, self.generation = old.reopen(), now
            model = self.collection.reads.model()
            if model is not None and self.model is not None and model != self.model:
                if self.reload is not None:
                    self.encoder, self.model = self.reload(self.collection), model
                elif (model.name, model.pretrained) != (self.model.name, self.model.pretrained):
                    raise ModelMismatch(
                        f"{self.collection.directory} was re-indexed with {model.name} "
                        f"({model.pretrained}): restart `retriever serve` to load that model")
            yield self.collection


def create_app(
    collection: Collection, encoder: Encoder, settings: ServerSettings | None = None,
    reload: Callable[[Collection], Encoder] | None = None,
) -> Starlette:
    """The ASGI app serving `collection`, searched with `encoder` (the index's model); `reload`
    loads the index's model again once it changed (see LiveCollection)."""
    api = Api(LiveCollection(collection, encoder, reload), settings or ServerSettings())
    routes = [Route(url, _asset(name, media)) for url, (name, media) in ASSETS.items()]
    routes += [
        Route("/api/ping", ping),
        Route("/api/info", api.info),
        Route("/api/recent", api.recent),
        Route("/api/search", api.search_get, methods=["GET"]),
        Route("/api/search", api.search_post, methods=["POST"]),
        Route("/api/items/{item}/thumbnail", api.thumbnail),
        Route("/api/items/{item}/file", api.file),
        Route("/api/tags", api.tags),
        Route("/api/download", api.download, methods=["POST"]),
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
        self.hashed: set[tuple] = set()  # files the file and zip routes checked (open_indexed)

    def info(self, request: Request) -> JSONResponse:
        with self.live.current() as collection:
            summary = collection.summary().to_json()
            return JSONResponse({**summary, "directory": str(collection.directory.resolve())})

    def recent(self, request: Request) -> JSONResponse:
        """The newest photos (EXIF date, else mtime): what the page shows before a search."""
        k = whole_number(request.query_params.get("k", 24), "k")
        if not 1 <= k <= self.settings.max_k:
            raise UsageError(f"k must be from 1 to {self.settings.max_k}, not {k}")
        with self.live.current() as collection:
            rows = [_row(r) for r in recent_images(collection, k)]
        return JSONResponse({"results": [{**row, "score": None} for row in rows]})

    def search_get(self, request: Request) -> JSONResponse:
        fields = SearchFields.parse(request.query_params, self.settings.max_k)
        return self._search(fields.query())

    async def search_post(self, request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            request = _capped(request, self.settings.max_upload_bytes, "send a smaller image")
            return await self._search_upload(request)
        if content_type.startswith("application/json"):
            request = _capped(request, self.settings.max_json_bytes, "send a shorter query")
            fields = JsonSearch.parse(await json_object(request), self.settings.max_k)
            return await run_in_threadpool(self._search, fields.query())
        raise UsageError("POST a JSON object (Content-Type: application/json), or "
                         "multipart/form-data with an image file in the 'image' field")

    def thumbnail(self, request: Request) -> Response:
        # No lock: reading the store is thread-safe, and a collection being replaced by a
        # newer one (LiveCollection.current) stays usable.
        item = whole_number(request.path_params["item"], "item")
        # bytes, never a cache path reopened: retriever.library.thumbnails checked both
        made = thumbnail(self.live.collection, item, self.settings.thumbnail_size)
        return Response(made, media_type="image/jpeg", headers=THUMB_HEADERS)

    def file(self, request: Request) -> StreamingResponse:
        """The checked, open file (retriever.library.thumbnails.open_indexed), not its path
        reopened; one byte range of it when asked (a <video> seeking)."""
        view, handle = open_indexed(self.live.collection,
                                    whole_number(request.path_params["item"], "item"),
                                    self.hashed)
        size = os.fstat(handle.fileno()).st_size
        media_type = mimetypes.guess_type(view.path)[0] or "application/octet-stream"
        headers = {**FILE_HEADERS, "Accept-Ranges": "bytes"}
        try:
            part = byte_range(request.headers.get("range"), size)
        except RangeNotSatisfiable:
            handle.close()
            raise
        if part is None:
            return StreamingResponse(_chunks(handle), media_type=media_type,
                                     headers={**headers, "Content-Length": str(size)})
        start, end = part
        return StreamingResponse(
            ranged_chunks(handle, start, end), status_code=206, media_type=media_type,
            headers={**headers, "Content-Length": str(end - start + 1),
                     "Content-Range": f"bytes {start}-{end}/{size}"})

    def tags(self, request: Request) -> JSONResponse:
        """Every tag in the index with how many items carry it: the page's tag menu."""
        counts = self.live.collection.reads.tag_counts()
        return JSONResponse({"tags": [{"label": label, "count": count}
                                      for label, count in counts.items()]})

    async def download(self, request: Request) -> StreamingResponse:
        """The files of the items a JSON body names, as one zip streamed as it is made."""
        request = _capped(request, self.settings.max_json_bytes, "select fewer results")
        ids = item_ids(await json_object(request, 'item ids: {"ids": [12, 40]}'),
                       self.settings.max_download_items)
        collection = self.live.collection
        entries = await run_in_threadpool(plan, collection, ids,
                                          self.settings.max_download_bytes)
        name = "retriever-files.zip"
        headers = {**FILE_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'}
        return StreamingResponse(zip_chunks(collection, entries, self.hashed),
                                 media_type="application/zip", headers=headers)

    async def _search_upload(self, request: Request) -> JSONResponse:
        async with request.form(max_files=1, max_fields=len(SearchFields.ALLOWED)) as form:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise UsageError("a multipart search needs an image file in the 'image' field")
            values = {key: value for key, value in form.items() if key != "image"}
            with tempfile.TemporaryDirectory(prefix="retriever-upload-") as folder:
                path = Path(folder) / "upload"
                path.write_bytes(await upload.read())
                fields = SearchFields.parse(values, self.settings.max_k)
                try:
                    return await run_in_threadpool(self._search, fields.query(path))
                except ImageError as error:  # name the upload, not the temporary file
                    reason = str(error).replace(f"{path}: ", "", 1).replace(str(path), "upload")
                    raise ImageError(f"uploaded file {upload.filename!r}: {reason}") from None

    def _search(self, query: Query) -> JSONResponse:
        query.check()  # before taking the lock: a bad request never waits for a search
        with self.live.current() as collection:
            results = search(collection, self.live.encoder, query)
        return JSONResponse({"results": [_row(r) for r in results]})


async def ping(request: Request) -> JSONResponse:
    """Answered on the event loop, never waiting for a search: the CLI's liveness check."""
    return JSONResponse({"retriever": True})


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


async def _library_error(request: Request, error: Exception) -> Response:
    status = next(code for kind, code in STATUS if isinstance(error, kind))
    public = next(k for k in type(error).__mro__ if k.__module__ == RetrieverError.__module__)
    headers = ({"Content-Range": f"bytes */{error.size}"}
               if isinstance(error, RangeNotSatisfiable) else None)
    return JSONResponse({"error": str(error), "type": public.__name__}, status_code=status,
                        headers=headers)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    message = error.detail
    if error.status_code == 404:
        message = f"nothing at {request.url.path}: the routes are listed in README.md, Web UI"
    return JSONResponse({"error": message}, status_code=error.status_code, headers=error.headers)
