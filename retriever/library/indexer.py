"""Indexing: scan folders, encode only what changed, write store and vectors in batches.

For each file found:
  same size and mtime as stored            -> unchanged, not read
  same bytes as stored (sha256)            -> touched: size/mtime/caption updated, not encoded
  same bytes as another stored file        -> reused: renamed, moved or duplicated; vectors copied
  failed before and unchanged since        -> skipped (retried once it changes)
  otherwise                                -> encoded
Files gone from disk are removed last, so a renamed file's vectors are still there to copy.

One file never stops the run: whatever reading it raises, or a read still running after
`read_timeout` seconds, makes it a failure (path and reason) and the run goes on. Only regular
files are read (see media), each up to the size the scan saw.

Each batch is one store transaction followed by the matching vector-index update; the FAISS files
are saved at the end, stamped with the store generation. A run killed at any point keeps every
batch it committed, and the next open rebuilds the stale FAISS files from the store.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np

from index.store import FailureRecord, FileRecord, FileState, ItemRecord, ModelRecord, Store
from retriever.encoding.encoders import Encoder
from retriever.encoding.pixels import Pixels, load_pixels
from retriever.errors import ImageError, NonFiniteVectors, UsageError
from retriever.library.collection import Collection
from retriever.media.images import DEFAULT_MAX_PIXELS, taken_at
from retriever.media.passages import DEFAULT_MAX_TEXT_BYTES, Passage, read_text, split_passages
from retriever.media.scan import (
    IMAGE,
    TEXT,
    TEXT_SUFFIXES,
    MediaFile,
    check_roots,
    open_regular,
    path_key,
    scan,
)
from retriever.progress import NullProgress, Progress

Entry = tuple[FileRecord, list[ItemRecord]]  # a file and its items, ready for the store
Batch = list[Entry]
# Reading, hashing and decoding one file takes well under a second (a 100 MP photo: about 2 s);
# one still running after this is stuck (a hung network mount, a decoder that never ends).
DEFAULT_READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class IndexOptions:
    roots: tuple[Path, ...]  # folders to index
    exclude: tuple[str, ...] = ()  # globs on paths relative to a root, or on bare names
    batch_size: int = 64  # files per store transaction (and per encoder batch of images)
    max_pixels: int = DEFAULT_MAX_PIXELS  # images larger than this are refused (bombs)
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES  # longer documents are read up to this
    follow_symlinks_outside: bool = False  # index symlinked files whose target is outside roots
    read_timeout: float = DEFAULT_READ_TIMEOUT  # seconds one file may take to read and decode

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_pixels", "max_text_bytes"):
            value = getattr(self, name)
            if value < 1:
                raise UsageError(f"--{name.replace('_', '-')} {value}: must be at least 1")
        if not self.read_timeout > 0:
            raise UsageError(f"read_timeout {self.read_timeout}: must be more than 0 seconds")


@dataclass
class IndexReport:
    scanned: int = 0  # media files found
    unchanged: int = 0  # same size and mtime as stored: not read
    touched: int = 0  # mtime or size changed, bytes did not: not encoded
    reused: int = 0  # bytes already stored under another path: vectors copied
    encoded: int = 0  # files encoded in this run (images + text files)
    images: int = 0  # of which images
    texts: int = 0  # of which text files
    passages: int = 0  # text passages encoded
    removed: int = 0  # files gone from disk, removed from the index
    known_failures: int = 0  # failed in an earlier run and unchanged since: skipped
    failures: list[FailureRecord] = field(default_factory=list)  # failed in this run

    def to_json(self) -> dict:
        return {**asdict(self), "failures": [asdict(f) for f in self.failures]}


def index_media(
    collection: Collection,
    encoder: Encoder,
    options: IndexOptions,
    progress: Progress | None = None,
) -> IndexReport:
    """Bring the collection up to date with the folders; see the module docstring."""
    progress = progress or NullProgress()
    roots = check_roots(options.roots)
    store = collection.store
    _check_output(encoder)
    collection.bind_model(
        ModelRecord(encoder.model_id.name, encoder.model_id.pretrained, encoder.dim,
                    encoder.fingerprint)
    )
    run_id = store.start_run()
    found = scan(roots, options.exclude, options.follow_symlinks_outside)
    report = IndexReport(scanned=len(found.files))
    report.failures = [FailureRecord(f.path, f.reason) for f in found.failures]
    stored = store.file_states()  # path -> size, mtime, hash as of the start of the run
    todo = _to_read(found.files, stored, store.failures(), report)
    workers = max(1, min(8, len(os.sched_getaffinity(0))))
    with progress.task("indexing", total=len(todo)) as task, \
            _Readers(workers, options.read_timeout) as readers:
        read, again = _reader(encoder, stored, options), _reader(encoder, {}, options)

        def reread(media: MediaFile) -> _Read:
            return readers.result(readers.submit(again, media))

        for chunk in _read_ahead(readers, todo, read, options.batch_size):
            _index_chunk(collection, encoder, chunk, stored, reread, report)
            task.advance(len(chunk))
    report.removed = _remove_missing(collection, roots, found.files, stored)
    store.clear_failures(path_key(f.path) for f in todo)
    store.record_failures(run_id, report.failures)
    collection.save()
    store.finish_run(run_id, report.to_json())
    return report


def _to_read(
    files: list[MediaFile],
    stored: dict[str, FileState],
    failed: dict[str, FailureRecord],
    report: IndexReport,
) -> list[MediaFile]:
    """Files whose size or mtime differ from the store (or that are new), minus known failures.

    An unchanged image whose sidecar caption is to be read, or whose stored sidecar is gone
    (deleted, renamed, excluded), is read again too: its caption is set or cleared.
    """
    def same(a: FileState | FailureRecord | None, f: MediaFile) -> bool:
        return a is not None and a.size == f.size and a.mtime == f.mtime

    todo, unchanged, reading = [], [], set()
    for f in files:
        key = path_key(f.path)
        if same(stored.get(key), f):
            unchanged.append(f)
        elif same(failed.get(key), f):
            report.known_failures += 1
        else:
            todo.append(f)
            reading.add(f.path)
    found = {path_key(f.path) for f in files}
    gone = {os.path.splitext(p)[0] for p in stored
            if p not in found and os.path.splitext(p)[1].lower() in TEXT_SUFFIXES}
    recaption = [f for f in unchanged if f.kind == IMAGE and (
        f.sidecar in reading or path_key(f.path.with_suffix("")) in gone)]
    report.unchanged = len(unchanged) - len(recaption)
    return todo + recaption


@dataclass
class _Read:
    """One file as the reader threads leave it: everything but the encoding done."""

    media: MediaFile
    record: FileRecord | None = None  # None when reading failed
    pixels: Pixels | None = None  # images that need encoding
    passages: list[Passage] | None = None  # text files that need encoding
    failure: FailureRecord | None = None


@dataclass
class _Job:
    read: Callable[[MediaFile], _Read]
    media: MediaFile
    future: Future[_Read] = field(default_factory=Future)
    running: threading.Event = field(default_factory=threading.Event)
    since: float = 0.0  # time.monotonic() when a thread took it
    given_up: bool = False


class _Readers:
    """Threads reading files, `workers` at a time. Decoding, resizing (PIL) and hashing release
    the GIL, so they overlap the encoder instead of waiting for it.

    A read still running `limit` seconds after it started is given up on: its file becomes a
    failure and a new thread takes the place of the stuck one, which Python cannot stop. The
    threads are daemons, so one stuck for good does not keep the process from exiting either.
    """

    def __init__(self, workers: int, limit: float) -> None:
        self._limit, self._spawned, self._closed = limit, 0, False
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        for _ in range(workers):
            self._spawn()

    def __enter__(self) -> _Readers:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True  # files still queued are not read
        for _ in range(self._spawned):
            self._jobs.put(None)

    def submit(self, read: Callable[[MediaFile], _Read], media: MediaFile) -> _Job:
        job = _Job(read, media)
        self._jobs.put(job)
        return job

    def result(self, job: _Job) -> _Read:
        """The job's read, or a failure once it has run for `limit` seconds."""
        while not job.running.wait(self._limit):  # every thread busy that long: stuck ones
            self._spawn()
        wait([job.future], timeout=max(0.0, job.since + self._limit - time.monotonic()))
        with self._lock:
            job.given_up = not job.future.done()
        if not job.given_up:
            return job.future.result()
        self._spawn()
        media = job.media
        return _Read(media, failure=FailureRecord(
            path_key(media.path), f"{media.path}: still reading after {self._limit:g} s, "
            "given up", media.size, media.mtime))

    def _spawn(self) -> None:
        self._spawned += 1
        threading.Thread(target=self._work, name="read", daemon=True).start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None and not self._closed:
            job.since = time.monotonic()
            job.running.set()
            try:
                job.future.set_result(job.read(job.media))
            except BaseException as err:  # handed to the thread waiting for the result
                job.future.set_exception(err)
            with self._lock:
                if job.given_up:  # another thread has taken this one's place
                    return


def _read_ahead(readers: _Readers, todo: list[MediaFile], read: Callable[[MediaFile], _Read],
                size: int) -> Iterator[list[_Read]]:
    """Chunks of `size` read files, in order, read by `readers` while the caller encodes the
    previous chunk: up to two chunks ahead."""
    pending: deque[_Job] = deque()
    files = iter(todo)
    for media in itertools.islice(files, 2 * size):
        pending.append(readers.submit(read, media))
    while pending:
        chunk = [readers.result(pending.popleft()) for _ in range(min(size, len(pending)))]
        for media in itertools.islice(files, len(chunk)):
            pending.append(readers.submit(read, media))
        yield chunk


def _reader(encoder: Encoder, stored: dict[str, FileState], options: IndexOptions
            ) -> Callable[[MediaFile], _Read]:
    known = {state.content_hash for state in stored.values()}  # bytes already in the store

    def read(media: MediaFile) -> _Read:
        try:
            with open_regular(media.path) as fh:
                record = _file_record(media, fh, options)
                previous = stored.get(record.path)
                if record.content_hash in known or (
                        previous is not None and previous.content_hash == record.content_hash):
                    return _Read(media, record)  # touched or reused: nothing to decode
                fh.seek(0)
                if media.kind == IMAGE:
                    return _Read(media, record, pixels=load_pixels(fh, encoder.pixels,
                                                                   options.max_pixels))
                text = read_text(fh, options.max_text_bytes)
            return _Read(media, record, passages=split_passages(
                text, encoder.count_tokens, encoder.text_budget))
        except Exception as err:  # whatever one file raises is that file's failure alone
            return _Read(media, failure=_failure(media, err))

    return read


def _index_chunk(
    collection: Collection,
    encoder: Encoder,
    chunk: list[_Read],
    stored: dict[str, FileState],
    reread: Callable[[MediaFile], _Read],
    report: IndexReport,
) -> None:
    store = collection.store
    touched: list[FileRecord] = []
    ready: Batch = []  # reused vectors, then encoded texts and images
    images: list[tuple[FileRecord, Pixels]] = []
    for read in chunk:
        record = read.record
        if record is None:
            report.failures.append(cast(FailureRecord, read.failure))
            continue
        previous = stored.get(record.path)
        if previous is not None and previous.content_hash == record.content_hash:
            touched.append(record)
        elif (copy := _stored_copy(store, record, ready)) is not None:
            ready.append(copy)
            report.reused += 1
        elif read.pixels is not None:
            images.append((record, read.pixels))
        elif read.passages is not None:
            ready += _encode_text(record, read.passages, encoder, report)
        else:  # its bytes were stored when the reader looked, and replaced since: read again
            ready += _index_again(encoder, reread(read.media), report)
    ready += _encode_images(images, encoder, report)
    store.touch_files(touched)
    collection.write_files(ready)
    report.touched += len(touched)


def _index_again(encoder: Encoder, read: _Read, report: IndexReport) -> Batch:
    if read.record is None:
        report.failures.append(cast(FailureRecord, read.failure))
        return []
    if read.pixels is not None:
        return _encode_images([(read.record, read.pixels)], encoder, report)
    return _encode_text(read.record, read.passages or [], encoder, report)


def _file_record(media: MediaFile, fh: BinaryIO, options: IndexOptions) -> FileRecord:
    content_hash = _sha256(fh, media.size)
    taken = None
    if media.kind == IMAGE:
        fh.seek(0)
        taken = taken_at(fh)
    return FileRecord(path_key(media.path), media.kind, content_hash, media.size, media.mtime,
                      caption=_caption(media, options), taken_at=taken or media.mtime)


def _stored_copy(store: Store, record: FileRecord, pending: Batch) -> Entry | None:
    """`record` with the items of a file holding the same bytes (stored or in this batch)."""
    hit = next(((f, items) for f, items in pending if f.content_hash == record.content_hash),
               None) or store.items_with_hash(record.content_hash)
    if hit is None:
        return None
    source, items = hit
    return replace(record, width=source.width, height=source.height), items


def _check_output(encoder: Encoder) -> None:
    """Refuse, before anything is written, a model whose vectors are not finite: one image
    (mid-grey) and one text encoded show it for a diverged or damaged model."""
    size = encoder.pixels.size
    probe = np.zeros((1, 3, size, size), np.float32)  # (1, 3, S, S)
    if not (np.isfinite(encoder.encode_pixels(probe)).all()
            and np.isfinite(encoder.encode_texts(["a photo"])).all()):
        raise NonFiniteVectors(f"{encoder.model_id.name} ({encoder.model_id.pretrained})")


def _encode_images(
    images: list[tuple[FileRecord, Pixels]], encoder: Encoder, report: IndexReport
) -> Batch:
    if not images:
        return []
    vectors = encoder.encode_pixels(np.stack([p.data for _, p in images]))  # (n, dim)
    encoded: Batch = []
    for (record, p), vector in zip(images, vectors, strict=True):
        if _failed_to_encode(record, vector[None], report):
            continue
        encoded.append((replace(record, width=p.width, height=p.height),
                        [ItemRecord(IMAGE, 0, None, vector)]))
    report.images += len(encoded)
    report.encoded += len(encoded)
    return encoded


def _encode_text(
    record: FileRecord, passages: list[Passage], encoder: Encoder, report: IndexReport,
) -> Batch:
    vectors = encoder.encode_texts([p.text for p in passages])  # (len(passages), dim)
    if _failed_to_encode(record, vectors, report):
        return []
    report.texts += 1
    report.encoded += 1
    report.passages += len(passages)
    return [(record, [
        ItemRecord(TEXT, p.position, p.text, v) for p, v in zip(passages, vectors, strict=True)
    ])]


def _failed_to_encode(record: FileRecord, vectors: np.ndarray, report: IndexReport) -> bool:
    """A file whose vectors (n, dim) hold NaN or inf is reported and not stored."""
    if np.isfinite(vectors).all():
        return False
    report.failures.append(FailureRecord(
        record.path, f"{record.path}: the model gave it a vector with NaN or inf",
        record.size, record.mtime))
    return True


def _remove_missing(
    collection: Collection, roots: list[Path], files: list[MediaFile],
    stored: dict[str, FileState],
) -> int:
    """Remove stored files under `roots` that the scan did not find. `stored` (the start of the
    run) suffices: every path this run wrote was found by the scan."""
    present = {path_key(f.path) for f in files}
    prefixes = tuple(path_key(r).rstrip(os.sep) + os.sep for r in roots)
    gone = [p for p in stored if p.startswith(prefixes) and p not in present]
    if gone:
        collection.remove_files(gone)
        collection.store.clear_failures(gone)
    return len(gone)


def _failure(media: MediaFile, err: Exception) -> FailureRecord:
    if isinstance(err, ImageError):
        reason = str(err)
    elif isinstance(err, OSError):
        reason = f"{media.path}: {err.strerror or err}"
    else:  # a decoder's own error, MemoryError, ...: named, as nothing else says what it is
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = f"{media.path}: {type(err).__name__}" + (f": {detail}" if detail else "")
    return FailureRecord(path_key(media.path), reason, media.size, media.mtime)


def _caption(media: MediaFile, options: IndexOptions) -> str | None:
    if media.sidecar is None:
        return None
    try:
        return read_text(media.sidecar, options.max_text_bytes).strip() or None
    except OSError:
        return None


def _sha256(fh: BinaryIO, size: int) -> str:
    """Of the first `size` bytes: the size the scan saw. A file that grows while it is read is
    cut there (its new size is read next run)."""
    digest = hashlib.sha256()
    while size > 0 and (block := fh.read(min(size, 1 << 20))):
        digest.update(block)
        size -= len(block)
    return digest.hexdigest()
