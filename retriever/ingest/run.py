"""`retriever index` as one call: where the index lives, its vector-index settings, the one-writer
lock, a reset on request, the encoder (asked for a new index, recorded for an existing one),
then `pipeline.ingest_media`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from index.ann import TYPES, AnnConfig
from index.records import Counts
from retriever.encoding.backends import open_encoder, user_exports
from retriever.encoding.encoders import Encoder
from retriever.encoding.specs import ModelSpec
from retriever.errors import BadSetting, IndexBusy, RetrieverError, UsageError
from retriever.ingest.options import IngestOptions, IngestReport
from retriever.ingest.pipeline import ingest_media
from retriever.ingest.readers import Engine
from retriever.library.collection import Collection
from retriever.library.locations import index_dir_for, register
from retriever.library.pinned_encoder import pinned_encoder
from retriever.media.scan import check_roots
from retriever.progress import Progress
from retriever.settings import Settings

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class IngestRequest:
    options: IngestOptions  # the folders, and how their files are read
    index_dir: Path | None = None  # --db or $RETRIEVER_DB; None: <first folder>/.retriever
    model: ModelSpec = ModelSpec()  # a new index's model; else must agree
    backend: str = "auto"  # see retriever.encoding.backends
    ann: AnnConfig = AnnConfig()  # which FAISS index the vectors get
    reindex: bool = False  # drop everything indexed first and re-encode with `model`
    wait: bool = False  # another run is writing: wait for it instead of raising IndexBusy
    store_url: str | None = None  # --store or $RETRIEVER_STORE_URL; None: <index_dir>/store.db
    engine: str = "local"  # where files are read and encoded: ENGINES (see ray_engine)
    ray_address: str | None = None  # engine "ray": the cluster; None: a local Ray for the run
    # build `model`'s vectors beside the index's, then swap them in (retriever.ingest.switch)
    switch: bool = False
    switch_cancel: bool = False  # drop a pending switch first (its staged folder)
    # the user's folders (registry, export cache) and GPU: the CLI's, read once
    settings: Settings = field(kw_only=True)


@dataclass(frozen=True)
class IngestOutcome:
    directory: Path  # where the index is
    counts: Counts  # what it holds now
    report: IngestReport  # what this run did


def ingest_folders(request: IngestRequest, progress: Progress | None = None) -> IngestOutcome:
    """Bring the index of `request.options.roots` up to date (see `pipeline`)."""
    roots = check_roots(request.options.roots)
    check_ann(request.ann)
    check_engine(request)
    directory = index_dir_for(roots, request.index_dir)
    with _left_as_found(directory) as opened:
        collection = Collection.open(directory, request.ann, request.store_url)
        opened.append(collection)
        with collection.writing(request.wait):
            if request.switch or request.switch_cancel:
                return _switched(collection, request, replace(request.options,
                                                              roots=tuple(roots)), progress)
            encoder = run_encoder(collection, request, progress)  # fails: no reset
            # --reindex keeps the tags: each goes back on the item re-made at its place
            tags = collection.reads.placed_tags() if request.reindex else []
            if request.reindex:
                collection.reset()
            report = ingest_media(collection, encoder,
                                 replace(request.options, roots=tuple(roots)), progress,
                                 engine_for(request, encoder))
            if tags:
                collection.place_tags(tags)
    # `search` from inside any of the roots finds it
    register(collection.directory, roots, request.settings.data_dir)
    return IngestOutcome(collection.directory, collection.reads.counts(), report)


@contextmanager
def _left_as_found(directory: Path) -> Iterator[list[Collection]]:
    """A run that fails before its store holds any file (a model that will not load, a store
    refused, Ctrl-C) leaves `directory` as it found it: what it made there (the folder itself
    on a first run, store.db, write.lock) is removed. The caller appends the collection it
    opens. Kept: whatever was there before, a store holding files (what was committed stays
    for the next run), and everything when another run is writing (IndexBusy)."""
    before = set(os.listdir(directory)) if directory.is_dir() else None
    opened: list[Collection] = []
    try:
        yield opened
    except BaseException as error:
        if not isinstance(error, IndexBusy) and all(_holds_nothing(c) for c in opened):
            for collection in opened:
                collection.close()
            _remove_new(directory, before)
        raise


def _holds_nothing(collection: Collection) -> bool:
    try:
        return collection.reads.counts().files == 0
    except RetrieverError:  # cannot tell (a store out of reach): keep it
        return False


def _remove_new(directory: Path, before: set[str] | None) -> None:
    """Remove `directory` (None: it did not exist before), or the entries not in `before`."""
    if before is None:
        shutil.rmtree(directory, ignore_errors=True)
        return
    with suppress(OSError):
        for name in set(os.listdir(directory)) - before:
            path = directory / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def check_ann(ann: AnnConfig) -> None:
    if ann.kind not in TYPES:
        raise BadSetting("index_type", repr(ann.kind), f"use one of {', '.join(TYPES)}")
    if not 0 < ann.recall_target <= 1:  # NaN fails this too
        raise BadSetting("recall_target", str(ann.recall_target),
                         "pass a recall in (0, 1]")


def check_engine(request: IngestRequest) -> None:
    if request.engine not in ENGINES:
        raise BadSetting("engine", repr(request.engine), f"use one of {', '.join(ENGINES)}")
    if request.engine == "ray":
        from retriever.ingest.ray_engine import check_ray

        check_ray()  # before the model loads: one line saying how to install it
    elif request.ray_address is not None:
        raise BadSetting("ray_address", request.ray_address, "it needs --engine ray")


def engine_for(request: IngestRequest, encoder: Encoder) -> Engine | None:
    if request.engine == "local":
        return None  # readers.LocalEngine
    from retriever.ingest.ray_engine import RayEngine

    return RayEngine(encoder, request.backend, request.ray_address,
                     request.options.read_timeout, request.options.read_wall_timeout)


def _switched(collection: Collection, request: IngestRequest, options: IngestOptions,
              progress: Progress | None) -> IngestOutcome:
    """`--switch-cancel`, then `--switch` (retriever.ingest.switch); the index is registered
    already (it holds a model)."""
    from retriever.ingest.switch import cancel_switch, switch_model

    if request.reindex:
        raise UsageError("--switch and --reindex: pass one (--reindex starts over at once)")
    report = IngestReport()
    if request.switch_cancel:
        cancelled = cancel_switch(collection)
        report.notes.append(f"switch to {cancelled} cancelled" if cancelled
                            else "no switch was pending")
    if request.switch:
        report = switch_model(collection, request, options, progress,
                              lambda encoder: engine_for(request, encoder))
    return IngestOutcome(collection.directory, collection.reads.counts(), report)


def run_encoder(collection: Collection, request: IngestRequest,
                progress: Progress | None) -> Encoder:
    """The encoder a run of `request` on `collection` uses (retriever watch keeps it)."""
    batch_size = None  # the encoder's own, from the CPU plan; options.batch_size: files a commit
    if request.reindex or collection.reads.model() is None:
        return open_encoder(request.model, request.backend, user_exports(request.settings),
                            batch_size, progress=progress, gpu=request.settings.gpu)
    # an existing index keeps its model; another one asked for is refused before loading
    return pinned_encoder(collection, request.model, request.backend, batch_size,
                         purpose="index", progress=progress, settings=request.settings)
