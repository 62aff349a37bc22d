"""`retriever watch` and `retriever serve --watch`: keep an index current while folders change.

    start       the folder watcher (`changes.FolderWatch`) is armed first, then one run catches
                up with what changed while nothing watched: the diff `retriever index` makes
    each run    once the folders were quiet `quiet` seconds (or `max_delay` into a burst), the
                same incremental run again (`pipeline.ingest_media`: unchanged files are only
                stat'ed, moved or copied bytes reuse their vectors by content hash, files gone
                lose their items); the encoder stays loaded between runs
    the lock    the one-writer lock is taken for each run and given back after it: `index` and
                `tag` get in between runs as they do today; while another process holds it,
                the run is tried again every `poll` seconds, and `waiting` is told once
    roots       a root deleted loses its items; made again, it is watched again and caught up
    stopping    `stop` set, or KeyboardInterrupt (the CLI turns SIGTERM into one): the store's
                transactions keep every committed batch and nothing half-written

The server notices each run's writes as it notices `index`'s: the store's generation moved.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from retriever.encoding.encoders import Encoder
from retriever.errors import (
    BadSetting,
    FolderNotFound,
    IndexBusy,
    IndexNotFound,
    RetrieverError,
)
from retriever.ingest.changes import FolderWatch, WatchSettings
from retriever.ingest.options import IngestReport
from retriever.ingest.pipeline import ingest_media
from retriever.ingest.run import (
    IngestOutcome,
    IngestRequest,
    check_ann,
    check_engine,
    run_encoder,
)
from retriever.library.collection import Collection
from retriever.library.locations import index_dir_for, register
from retriever.media.scan import check_roots, path_key
from retriever.progress import Progress

__all__ = ["WatchRun", "WatchListener", "WatchSettings", "watch_folders", "Watching"]


@dataclass(frozen=True)
class WatchRun:
    first: bool  # the catch-up run at start
    changed: int  # paths told changed since the run before (0 for the first)
    overflowed: bool  # more paths changed than WatchSettings.max_paths
    gone: tuple[Path, ...]  # roots not there during this run: their items were removed
    outcome: IngestOutcome  # the index's directory, what it holds now, what the run did


class WatchListener(Protocol):
    def ran(self, run: WatchRun) -> None: ...  # after each run

    def waiting(self, busy: IndexBusy) -> None: ...  # once while another process writes


def watch_folders(request: IngestRequest, listener: WatchListener,
                  settings: WatchSettings | None = None, stop: threading.Event | None = None,
                  encoder: Encoder | None = None, progress: Progress | None = None) -> None:
    """Keep the index of `request.options.roots` current until `stop` is set (or
    KeyboardInterrupt); see the module docstring. `encoder`: one already loaded with the
    index's model (the server's), else the run's own is loaded once."""
    settings, stop = settings or WatchSettings(), stop or threading.Event()
    roots = check_roots(request.options.roots)
    check_ann(request.ann)
    check_engine(request)
    if request.reindex or request.engine != "local":
        raise BadSetting("reindex" if request.reindex else "engine",
                         str(request.reindex if request.reindex else request.engine),
                         "`retriever watch` runs on the local engine without it: run "
                         "`retriever index` with it first")
    directory = index_dir_for(roots, request.index_dir)
    request = replace(request, options=replace(request.options, roots=tuple(roots)))
    lower_priority(settings.nice)
    writer = Writer(request, directory, encoder, progress)
    with FolderWatch(roots, directory, settings, stop) as watching:
        outcome = writer.run(stop, listener, settings.poll)
        if outcome is None:
            return
        register(directory, roots, request.settings.data_dir)
        listener.ran(WatchRun(True, 0, False, writer.gone, outcome))
        while (batch := watching.next_batch()) is not None:
            outcome = writer.run(stop, listener, settings.poll)
            if outcome is None:
                return
            listener.ran(WatchRun(False, batch.changed, batch.overflowed, writer.gone,
                                  outcome))


def lower_priority(nice: int) -> None:
    """Let everything else run first: this thread, and the threads it starts, `nice` lower
    (Linux: niceness is per thread). A system that refuses leaves it as it is."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(nice)


class Writer:
    """One incremental run at a time under the writer lock; the encoder is kept between runs."""

    def __init__(self, request: IngestRequest, directory: Path, encoder: Encoder | None,
                 progress: Progress | None) -> None:
        self.request, self.directory = request, directory
        self.encoder, self.progress = encoder, progress
        self.gone: tuple[Path, ...] = ()  # roots missing in the latest run

    def run(self, stop: threading.Event, listener: WatchListener,
            poll: float) -> IngestOutcome | None:
        """One run, tried again every `poll` seconds while another process writes (`listener`
        told once) or a root vanishes under the scan; None once `stop` is set."""
        told = False
        while not stop.is_set():
            try:
                return self._once()
            except IndexBusy as busy:
                if not told:
                    listener.waiting(busy)
                    told = True
            except FolderNotFound:  # a root deleted between its check and the scan
                pass
            stop.wait(poll)
        return None

    def _once(self) -> IngestOutcome:
        options = self.request.options
        if self.encoder is not None and not self.directory.is_dir():  # not made again here:
            raise IndexNotFound(  # it may have gone with its folder (<folder>/.retriever)
                f"the index folder {self.directory} was deleted: run `retriever watch` again "
                f"to index the folders afresh")
        present = tuple(r for r in options.roots if r.is_dir())
        self.gone = tuple(r for r in options.roots if r not in present)
        with self._opened() as collection, collection.writing():
            if self.encoder is None:
                self.encoder = run_encoder(collection, self.request, self.progress)
            report = IngestReport()
            report.removed = forget_roots(collection, self.gone)
            if present:
                report.add(ingest_media(collection, self.encoder,
                                        replace(options, roots=present), self.progress))
            elif report.removed:
                collection.save()
            self.progress = None  # bars for the first run (the model loading, catching up) only
            return IngestOutcome(collection.directory, collection.reads.counts(), report)

    @contextlib.contextmanager
    def _opened(self) -> Iterator[Collection]:
        """The collection opened afresh: another writer's runs since are in it."""
        collection = Collection.open(self.directory, self.request.ann, self.request.store_url)
        try:
            yield collection
        finally:
            collection.close()


def forget_roots(collection: Collection, roots: tuple[Path, ...]) -> int:
    """Remove the stored files under `roots` (deleted folders); how many were."""
    if not roots:
        return 0
    below = tuple(path_key(r).rstrip(os.sep) + os.sep for r in roots)
    paths = [p for p in collection.reads.file_states() if p.startswith(below)]
    if paths:
        collection.remove_files(paths)
        collection.runs.clear_failures(paths)
    return len(paths)


class Watching:
    """`watch_folders` on a thread of its own (`serve --watch`): `stop()` ends it; an error
    that ends it goes to `failed` (the server keeps answering with what is indexed)."""

    def __init__(self, request: IngestRequest, listener: WatchListener,
                 failed: ErrorListener, settings: WatchSettings | None = None,
                 encoder: Encoder | None = None) -> None:
        self.stopping = threading.Event()
        self.settings = settings or WatchSettings()

        def body() -> None:
            try:
                watch_folders(request, listener, self.settings, self.stopping, encoder)
            except RetrieverError as error:
                failed(error)

        self.thread = threading.Thread(target=body, name="retriever-watching", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=max(60.0, 20 * self.settings.poll))


class ErrorListener(Protocol):
    def __call__(self, error: RetrieverError) -> None: ...
