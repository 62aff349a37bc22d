"""Indexing: scan folders, encode only what changed, write store and vectors in batches.

For each file found:
  same size and mtime as stored            -> unchanged, not read
  same bytes as stored (sha256)            -> touched: size/mtime/caption updated, not encoded
  same bytes as another stored file        -> reused: renamed, moved or duplicated; vectors copied
  failed before and unchanged since        -> skipped (retried once it changes)
  otherwise                                -> encoded
Files gone from disk are removed last, so a renamed file's vectors are still there to copy.
Files under a folder the scan could not list are unknown this run, not gone: kept as they are.

One file never stops the run: whatever reading it raises makes it a failure (path and reason)
and the run goes on. A failure of the file's bytes (a decoder's refusal) is remembered, and a
stored file whose current bytes fail loses its earlier vectors. A failure of the moment is
reported and the file read again next run: a read that used `read_timeout` seconds of its own
CPU, or ran `read_wall_timeout` seconds (a hung mount), an I/O error, a file that kept changing
while it was read (a file that changes once is read again at once, `Reader`). Only regular
files are read (see media). A run that dies while reading (a hostile file OOM-killed it) leaves
the files it was reading in a journal (`inflight`): the next run records them as failures.

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
from collections.abc import Callable, Container, Iterator
from concurrent.futures import Future, wait
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import BinaryIO, Protocol, cast

import numpy as np

from index.store import FailureRecord, FileRecord, FileState, ItemRecord, ModelRecord, Store
from retriever.encoding.cpu import plan
from retriever.encoding.encoders import Encoder, InputSpec
from retriever.encoding.pixels import Pixels, load_pixels
from retriever.errors import ImageError, NonFiniteVectors, UsageError, VideoError
from retriever.ingest.inflight import JOURNAL_FILE, InFlight, died_reading
from retriever.ingest.media_items import (
    Frames,
    read_image_words,
    read_video,
    video_items,
    word_items,
)
from retriever.library.collection import Collection
from retriever.media.images import DEFAULT_MAX_PIXELS, taken_at
from retriever.media.ocr import check_tesseract
from retriever.media.passages import DEFAULT_MAX_TEXT_BYTES, Passage, read_text, split_passages
from retriever.media.scan import (
    IMAGE,
    TEXT,
    TEXT_SUFFIXES,
    VIDEO,
    MediaFile,
    ScanResult,
    check_roots,
    open_regular,
    path_key,
    scan,
    shown,
)
from retriever.media.video import VideoOptions
from retriever.progress import NullProgress, Progress

FileItems = tuple[FileRecord, list[ItemRecord]]  # a file and its items, ready for the store
# Reading, hashing and decoding one file takes well under a second of CPU (a 100 MP photo:
# about 2 s); one that used this much is stuck (a decoder that never ends). CPU time of the
# reading thread, not time waited: a loaded machine slows a read, it does not fail it.
DEFAULT_READ_TIMEOUT = 60.0
# A read that blocks without using CPU (a hung network mount) is given up after this long
DEFAULT_READ_WALL_TIMEOUT = 600.0
READ_TRIES = 3  # a file that changes while it is read is read again, up to this many times


@dataclass(frozen=True)
class IngestOptions:
    roots: tuple[Path, ...]  # folders to index
    exclude: tuple[str, ...] = ()  # globs on paths relative to a root, or on bare names
    batch_size: int = 64  # files per store transaction (and per encoder batch of images)
    max_pixels: int = DEFAULT_MAX_PIXELS  # images larger than this are refused (bombs)
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES  # longer documents are read up to this
    follow_symlinks_outside: bool = False  # index symlinked files whose target is outside roots
    read_timeout: float = DEFAULT_READ_TIMEOUT  # CPU seconds one file's reading may use
    read_wall_timeout: float = DEFAULT_READ_WALL_TIMEOUT  # seconds, whatever CPU it used
    video: VideoOptions = VideoOptions()  # which frames of a video become items
    ocr: bool = False  # read words in images with Tesseract (items of kind image-text)

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_pixels", "max_text_bytes"):
            value = getattr(self, name)
            if value < 1:
                raise UsageError(f"--{name.replace('_', '-')} {value}: must be at least 1")
        for name in ("read_timeout", "read_wall_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} {getattr(self, name)}: must be more than 0 seconds")


@dataclass
class IngestReport:
    scanned: int = 0  # media files found
    unchanged: int = 0  # same size and mtime as stored: not read
    touched: int = 0  # mtime or size changed, bytes did not: not encoded
    reused: int = 0  # bytes already stored under another path: vectors copied
    encoded: int = 0  # files encoded in this run (images + text files)
    images: int = 0  # of which images
    texts: int = 0  # of which text files
    passages: int = 0  # text passages encoded
    videos: int = 0  # of the files encoded, videos
    frames: int = 0  # video frames encoded
    ocr_passages: int = 0  # passages of words read in images (--ocr)
    removed: int = 0  # files gone from disk, removed from the index
    known_failures: int = 0  # failed in an earlier run and unchanged since: skipped
    failures: list[FailureRecord] = field(default_factory=list)  # failed in this run

    def to_json(self) -> dict:
        return {**asdict(self), "failures": [asdict(f) for f in self.failures]}

    def add(self, other: IngestReport) -> None:
        """Count `other`'s files and failures in this report too."""
        for counter in fields(self):
            if counter.name != "failures":
                setattr(self, counter.name,
                        getattr(self, counter.name) + getattr(other, counter.name))
        self.failures += other.failures


def ingest_media(
    collection: Collection,
    encoder: Encoder,
    options: IngestOptions,
    progress: Progress | None = None,
    engine: Engine | None = None,
) -> IngestReport:
    """Bring the collection up to date with the folders; see the module docstring. `engine`
    reads (and may encode) the files to encode: None, threads here (`LocalEngine`)."""
    progress = progress or NullProgress()
    roots = check_roots(options.roots)
    store = collection.store
    if collection.model() is None:  # probed once, when an index first takes a model: later
        _check_output(encoder)  # runs are pinned to it by its fingerprint (bind_model)
    if options.ocr:
        check_tesseract()
    collection.bind_model(
        ModelRecord(encoder.model_id.name, encoder.model_id.pretrained, encoder.dim,
                    encoder.fingerprint)
    )
    run_id = store.start_run()
    with progress.task("scanning the folders", None):
        found = scan(roots, options.exclude, options.follow_symlinks_outside)
    report = IngestReport(scanned=len(found.files))
    report.failures = [FailureRecord(f.path, f.reason) for f in found.failures]
    stored = store.file_states()  # path -> size, mtime, hash as of the start of the run
    missing = _missing(roots, found, stored)
    journal = InFlight(collection.directory / JOURNAL_FILE)
    died = _died_reading(journal.path, found.files)
    store.record_failures(run_id, died)  # now: kept should this run die too
    todo = _to_read(found.files, stored, store.failures(), missing, report)
    report.known_failures -= len(died)  # skipped as known ones are, but reported by this run
    report.failures += died
    spec = encoder.input_spec()
    read, again = _reader(spec, stored, options), _reader(spec, {}, options)
    with progress.task("indexing", total=len(todo)) as task, journal, \
            (engine or LocalEngine(options.read_timeout, options.read_wall_timeout,
                                   journal)) as running:

        def reread(media: MediaFile) -> PreparedFile:
            return running.read_now(again, media)

        for chunk in running.chunks(todo, read, options.batch_size):
            _index_chunk(collection, encoder, chunk, stored, reread, report)
            task.advance(len(chunk))
    report.removed = _remove_missing(collection, missing)
    _drop_failed(collection, report.failures, stored)
    store.clear_failures(path_key(f.path) for f in todo)
    store.record_failures(run_id, report.failures)
    with progress.task("building and saving the vector index (FAISS)", None):
        collection.save()
    store.finish_run(run_id, report.to_json())
    return report


def _to_read(
    files: list[MediaFile],
    stored: dict[str, FileState],
    failed: dict[str, FailureRecord],
    missing: list[str],
    report: IngestReport,
) -> list[MediaFile]:
    """Files whose size or mtime differ from the store (or that are new), minus known failures
    (a failure without size and mtime is not one: tried again).

    An unchanged image whose sidecar caption is to be read, or whose stored sidecar is gone
    (`missing`: deleted, renamed, excluded), is read again too: its caption is set or cleared.
    """
    def same(a: FileState | FailureRecord | None, f: MediaFile) -> bool:
        return a is not None and a.size == f.size and a.mtime == f.mtime

    todo, unchanged, reading = [], [], set()
    for f in files:
        key = path_key(f.path)
        if same(failed.get(key), f):  # first: an unchanged stored file may have killed a run
            report.known_failures += 1
        elif same(stored.get(key), f):
            unchanged.append(f)
        else:
            todo.append(f)
            reading.add(f.path)
    gone = {os.path.splitext(p)[0] for p in missing
            if os.path.splitext(p)[1].lower() in TEXT_SUFFIXES}
    recaption = [f for f in unchanged if f.kind == IMAGE and (
        f.sidecar in reading or path_key(f.path.with_suffix("")) in gone)]
    report.unchanged = len(unchanged) - len(recaption)
    return todo + recaption


@dataclass
class PreparedFile:
    """One file as the reader threads leave it: everything but the encoding done."""

    media: MediaFile
    record: FileRecord | None = None  # None when reading failed
    pixels: Pixels | None = None  # images that need encoding
    passages: list[Passage] | None = None  # text files that need encoding
    frames: Frames | None = None  # videos that need encoding: sampled frames
    words: list[Passage] | None = None  # with --ocr, words read in an image
    failure: FailureRecord | None = None
    encoded: Encoded | None = None  # encoded where it was read (`encode_read`)


@dataclass
class Encoded:
    """A file encoded beside its reader (`encode_read`, in the Ray engine's actors): its items
    (none when the model gave it a vector with NaN or inf), and what encoding it counts."""

    items: list[FileItems]
    report: IngestReport


class Engine(Protocol):
    """Where the files to encode are read, and maybe encoded: `LocalEngine` (threads beside
    this process's encoder) or `retriever.ingest.ray_engine.RayEngine` (a Ray cluster)."""

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...

    def chunks(self, todo: list[MediaFile], read: Reader, size: int
               ) -> Iterator[list[PreparedFile]]:
        """Every file of `todo`, read by `read` (a failure, or its record and what the encoder
        takes, or `encoded` already), in chunks of about `size`, in any order."""
        ...

    def read_now(self, read: Reader, media: MediaFile) -> PreparedFile:
        """One file read in this process, under the same time limit."""
        ...


class LocalEngine:
    """Files read in threads here, up to two chunks ahead of the encoder (`_read_ahead`),
    each within `limit` CPU seconds and `wall` seconds (`_ReaderThreads`), noted in `journal`
    while they are read; the caller encodes them. As many threads as
    `retriever.encoding.cpu.plan` leaves beside the encoder."""

    def __init__(self, limit: float, wall: float = DEFAULT_READ_WALL_TIMEOUT,
                 journal: InFlight | None = None) -> None:
        self._limit, self._wall, self._journal = limit, wall, journal
        self._readers: _ReaderThreads | None = None

    def __enter__(self) -> LocalEngine:
        self._readers = _ReaderThreads(plan().reader_threads, self._limit, self._wall,
                                       self._journal)
        return self

    def __exit__(self, *exc: object) -> None:
        cast(_ReaderThreads, self._readers).__exit__()

    def chunks(self, todo: list[MediaFile], read: Reader, size: int
               ) -> Iterator[list[PreparedFile]]:
        return _read_ahead(cast(_ReaderThreads, self._readers), todo, read, size)

    def read_now(self, read: Reader, media: MediaFile) -> PreparedFile:
        readers = cast(_ReaderThreads, self._readers)
        return readers.result(readers.submit(read, media))


def read_files(read: Reader, files: list[MediaFile], limit: float, workers: int,
               wall: float = DEFAULT_READ_WALL_TIMEOUT, journal: InFlight | None = None,
               ) -> list[PreparedFile]:
    """`files` read by `workers` threads, each within `limit` CPU seconds and `wall` seconds,
    noted in `journal` while they are read (`_ReaderThreads`)."""
    with _ReaderThreads(workers, limit, wall, journal) as readers:
        jobs = [readers.submit(read, media) for media in files]
        return [readers.result(job) for job in jobs]


def encode_read(files: list[PreparedFile], encoder: Encoder) -> None:
    """Encode, where they were read, the files the reader decoded (their images in one batch):
    each one's items and counts go in its `encoded`, for `_index_chunk` to store, and what the
    encoder took is dropped. Files touched, reused or failed are left as they are."""
    images = [f for f in files if f.record is not None and f.pixels is not None]
    vectors = (encoder.encode_pixels(np.stack([cast(Pixels, f.pixels).data for f in images]))
               if images else np.empty((0, encoder.dim), np.float32))  # (n images, dim)
    image_vectors = {id(f): vector for f, vector in zip(images, vectors, strict=True)}
    for read in files:
        if read.record is not None and _decoded(read):
            report = IngestReport()
            items = _encode_file(encoder, read, report, image_vectors.get(id(read)))
            read.encoded = Encoded(items, report)
            read.pixels, read.passages, read.frames, read.words = None, None, None, None


def _decoded(read: PreparedFile) -> bool:
    return read.pixels is not None or read.passages is not None or read.frames is not None


@dataclass
class _Job:
    read: Callable[[MediaFile], PreparedFile]
    media: MediaFile
    future: Future[PreparedFile] = field(default_factory=Future)
    running: threading.Event = field(default_factory=threading.Event)
    since: float = 0.0  # time.monotonic() when a thread took it
    clock: int | None = None  # that thread's CPU-time clock (None: none on this platform)
    cpu_since: float = 0.0  # the clock's reading when the thread took it
    given_up: bool = False

    def cpu_used(self) -> float:
        """CPU seconds the reading thread has used on this job (wall seconds without a clock;
        0 once the thread has ended, its job then done)."""
        if self.clock is None:
            return time.monotonic() - self.since
        try:
            return time.clock_gettime(self.clock) - self.cpu_since
        except OSError:
            return 0.0


# Seconds between looks at a read's CPU time, at least: a read at a fraction of a core gets
# closer to its limit by ever smaller steps
_MIN_LOOK = 0.05


class _ReaderThreads:
    """Threads reading files, `workers` at a time. Decoding, resizing (PIL) and hashing release
    the GIL, so they overlap the encoder instead of waiting for it.

    A read is given up on once its thread has used `limit` seconds of CPU on it (its own work:
    time spent waiting for a core or the GIL on a loaded machine does not count), or once it
    has run `wall` seconds, CPU or not (a read blocked on a hung mount). Its file becomes a
    failure of this run, tried again next run, and a new thread takes the place of the stuck
    one, which Python cannot stop. The threads are daemons, so one stuck for good does not
    keep the process from exiting either. Each read is noted in `journal` while it runs.
    """

    def __init__(self, workers: int, limit: float, wall: float = DEFAULT_READ_WALL_TIMEOUT,
                 journal: InFlight | None = None) -> None:
        self._limit, self._wall, self._journal = limit, wall, journal
        self._spawned, self._closed = 0, False
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        for _ in range(workers):
            self._spawn()

    def __enter__(self) -> _ReaderThreads:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True  # files still queued are not read
        for _ in range(self._spawned):
            self._jobs.put(None)

    def submit(self, read: Callable[[MediaFile], PreparedFile], media: MediaFile) -> _Job:
        job = _Job(read, media)
        self._jobs.put(job)
        return job

    def result(self, job: _Job) -> PreparedFile:
        """The job's read, or a failure once it has used `limit` CPU or `wall` seconds."""
        while not job.running.wait(self._wall):  # every thread busy that long: stuck ones
            self._spawn()
        why = self._watch(job)
        with self._lock:
            job.given_up = not job.future.done()
        if not job.given_up:
            return job.future.result()
        self._spawn()
        key = path_key(job.media.path)  # no size and mtime: not remembered as a bad file
        return PreparedFile(job.media, failure=FailureRecord(
            key, f"{key}: {why}, given up (tried again next run)"))

    def _watch(self, job: _Job) -> str:
        """Wait for the job's read until it is done (returns "") or over a limit (returns
        which). CPU time grows no faster than the clock: no look is needed before the CPU
        seconds left have passed."""
        while True:
            used, waited = job.cpu_used(), time.monotonic() - job.since
            if used >= self._limit:
                return f"used {self._limit:g} s of CPU reading it"
            if waited >= self._wall:
                return f"still reading after {self._wall:g} s"
            look = max(min(self._limit - used, self._wall - waited), _MIN_LOOK)
            if wait([job.future], timeout=look).done:
                return ""

    def _spawn(self) -> None:
        self._spawned += 1
        threading.Thread(target=self._work, name="read", daemon=True).start()

    def _work(self) -> None:
        clock = _thread_clock()
        while (job := self._jobs.get()) is not None and not self._closed:
            job.clock, job.since = clock, time.monotonic()
            job.cpu_since = time.clock_gettime(clock) if clock is not None else 0.0
            job.running.set()
            token = self._journal.start(job.media) if self._journal is not None else None
            try:
                job.future.set_result(job.read(job.media))
            except BaseException as err:  # handed to the thread waiting for the result
                job.future.set_exception(err)
            if token is not None:
                cast(InFlight, self._journal).done(token)
            with self._lock:
                if job.given_up:  # another thread has taken this one's place
                    return


def _thread_clock() -> int | None:
    """The calling thread's CPU-time clock, where the platform has one (Linux does)."""
    try:
        return time.pthread_getcpuclockid(threading.get_ident())
    except (AttributeError, OSError):
        return None


def _read_ahead(readers: _ReaderThreads, todo: list[MediaFile],
                read: Callable[[MediaFile], PreparedFile],
                size: int) -> Iterator[list[PreparedFile]]:
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


def _reader(spec: InputSpec, stored: dict[str, FileState], options: IngestOptions) -> Reader:
    return Reader(spec, options, frozenset(state.content_hash for state in stored.values()))


@dataclass(frozen=True)
class Reader:
    """Reads one file (`__call__`): hashes it and, unless its bytes are `known`, decodes what
    the encoder takes. Holds only what reading needs, and pickles: the Ray engine ships one to
    its read tasks (with `known` and the token counter in forms cheaper to ship)."""

    spec: InputSpec  # the encoder's input: pixels, and how passages are cut
    options: IngestOptions
    # content hashes already stored: a file with such bytes is touched or reused, not decoded.
    # A hash found here that is not stored only costs a second read (`_index_chunk`)
    known: Container[str]

    def __call__(self, media: MediaFile) -> PreparedFile:
        """`media` read, or its failure. A file that changed while it was read (its bytes may
        be a mix) is read again as it is now, up to READ_TRIES times in all."""
        for _ in range(READ_TRIES):
            try:
                return self._read(media)
            except _Changed:
                try:
                    now = os.stat(media.path)
                except OSError as err:
                    return PreparedFile(media, failure=_failure(media, err))
                media = replace(media, size=now.st_size, mtime=now.st_mtime)
            except Exception as err:  # whatever one file raises is that file's failure alone
                return PreparedFile(media, failure=_failure(media, err))
        key = path_key(media.path)
        return PreparedFile(media, failure=FailureRecord(
            key, f"{key}: changed while it was being read, {READ_TRIES} times; "
            "tried again next run"))

    def _read(self, media: MediaFile) -> PreparedFile:
        """Raises `_Changed` unless the file stayed, from its opening to the end of its
        reading, the one the scan saw: its size and mtime, and the file its path names."""
        with open_regular(media.path) as fh:
            before = os.fstat(fh.fileno())
            if (before.st_size, before.st_mtime) != (media.size, media.mtime):
                raise _Changed
            try:
                prepared = self._prepare(media, fh)
            except Exception:
                _check_unchanged(media.path, fh, before)  # a failure of mixed bytes: _Changed
                raise
            _check_unchanged(media.path, fh, before)
        return prepared

    def _prepare(self, media: MediaFile, fh: BinaryIO) -> PreparedFile:
        spec, options = self.spec, self.options
        record = _file_record(media, fh, options)
        if record.content_hash in self.known:  # every stored file's hash is in it
            return PreparedFile(media, record)  # touched or reused: nothing to decode
        fh.seek(0)
        if media.kind == IMAGE:
            pixels = load_pixels(fh, spec.pixels, options.max_pixels)
            words = read_image_words(fh, spec, options.max_pixels) if options.ocr else None
            return PreparedFile(media, record, pixels=pixels, words=words)
        if media.kind == VIDEO:
            record, frames = read_video(fh, record, spec.pixels, options.video,
                                        options.max_pixels)
            return PreparedFile(media, record, frames=frames)
        text = read_text(fh, options.max_text_bytes)
        return PreparedFile(media, record, passages=split_passages(
            text, spec.count_tokens, spec.text_budget))


class _Changed(Exception):
    """The file being read was written to, truncated or replaced meanwhile."""


def _check_unchanged(path: Path, fh: BinaryIO, before: os.stat_result) -> None:
    """Raise `_Changed` if the open file `fh` is not as it was `before`, or `path` now names
    another file (one renamed over it)."""
    after, now = os.fstat(fh.fileno()), os.stat(path)
    if (_identity(after) != _identity(before)
            or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino)):
        raise _Changed


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _index_chunk(
    collection: Collection,
    encoder: Encoder,
    chunk: list[PreparedFile],
    stored: dict[str, FileState],
    reread: Callable[[MediaFile], PreparedFile],
    report: IngestReport,
) -> None:
    store = collection.store
    touched: list[FileRecord] = []
    ready: list[FileItems] = []  # reused vectors, then encoded texts and images
    images: list[tuple[FileRecord, Pixels]] = []
    words: dict[str, list[Passage]] = {}  # --ocr: image path -> words read in it
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
        elif read.encoded is not None:  # encoded where it was read (the Ray engine)
            ready += read.encoded.items
            report.add(read.encoded.report)
        elif read.pixels is not None:
            images.append((record, read.pixels))
            words[record.path] = read.words or []
        elif read.passages is not None:
            ready += _encode_text(record, read.passages, encoder, report)
        elif read.frames is not None:
            ready += _encode_video(record, read.frames, encoder, report)
        else:  # its bytes were stored when the reader looked, and replaced since: read again
            ready += _encode_file(encoder, reread(read.media), report)
    ready += _with_words(_encode_images(images, encoder, report), words, encoder, report)
    store.touch_files(touched)
    collection.write_files(ready)
    report.touched += len(touched)


def _encode_file(encoder: Encoder, read: PreparedFile, report: IngestReport,
                 vector: np.ndarray | None = None) -> list[FileItems]:
    """One file's items, encoded (an image's `vector` (dim,): already encoded)."""
    if read.record is None:
        report.failures.append(cast(FailureRecord, read.failure))
        return []
    if read.pixels is not None:
        encoded = _encode_images([(read.record, read.pixels)], encoder, report,
                                 None if vector is None else vector[None])
        return _with_words(encoded, {read.record.path: read.words or []}, encoder, report)
    if read.frames is not None:
        return _encode_video(read.record, read.frames, encoder, report)
    return _encode_text(read.record, read.passages or [], encoder, report)


def _file_record(media: MediaFile, fh: BinaryIO, options: IngestOptions) -> FileRecord:
    content_hash = _sha256(fh, media.size)
    taken = None
    if media.kind == IMAGE:
        fh.seek(0)
        taken = taken_at(fh)
    return FileRecord(path_key(media.path), media.kind, content_hash, media.size, media.mtime,
                      caption=_caption(media, options), taken_at=taken or media.mtime)


def _stored_copy(store: Store, record: FileRecord, pending: list[FileItems]) -> FileItems | None:
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
    images: list[tuple[FileRecord, Pixels]], encoder: Encoder, report: IngestReport,
    vectors: np.ndarray | None = None,
) -> list[FileItems]:
    """The images' items; `vectors` (n, dim): theirs, already encoded."""
    if not images:
        return []
    if vectors is None:
        vectors = encoder.encode_pixels(np.stack([p.data for _, p in images]))  # (n, dim)
    encoded: list[FileItems] = []
    for (record, p), vector in zip(images, vectors, strict=True):
        if _failed_to_encode(record, vector[None], report):
            continue
        encoded.append((replace(record, width=p.width, height=p.height),
                        [ItemRecord(IMAGE, 0, None, vector)]))
    report.images += len(encoded)
    report.encoded += len(encoded)
    return encoded


def _encode_text(
    record: FileRecord, passages: list[Passage], encoder: Encoder, report: IngestReport,
) -> list[FileItems]:
    vectors = encoder.encode_texts([p.text for p in passages])  # (len(passages), dim)
    if _failed_to_encode(record, vectors, report):
        return []
    report.texts += 1
    report.encoded += 1
    report.passages += len(passages)
    return [(record, [
        ItemRecord(TEXT, p.position, p.text, v) for p, v in zip(passages, vectors, strict=True)
    ])]


def _encode_video(record: FileRecord, frames: Frames, encoder: Encoder, report: IngestReport
                  ) -> list[FileItems]:
    items = video_items(frames, encoder)
    if _failed_to_encode(record, np.stack([it.vector for it in items]), report):
        return []
    report.videos += 1
    report.encoded += 1
    report.frames += len(items)
    return [(record, items)]


def _with_words(encoded: list[FileItems], words: dict[str, list[Passage]], encoder: Encoder,
                report: IngestReport) -> list[FileItems]:
    """Encoded images with the items of the words read in them (--ocr), when they are finite."""
    out: list[FileItems] = []
    for record, items in encoded:
        read = word_items(words.get(record.path, []), encoder)
        if read and not np.isfinite(np.stack([it.vector for it in read])).all():
            read = []  # the image itself is sound: keep it, without its words
        report.ocr_passages += len(read)
        out.append((record, items + read))
    return out


def _failed_to_encode(record: FileRecord, vectors: np.ndarray, report: IngestReport) -> bool:
    """A file whose vectors (n, dim) hold NaN or inf is reported and not stored."""
    if np.isfinite(vectors).all():
        return False
    report.failures.append(FailureRecord(
        record.path, f"{record.path}: the model gave it a vector with NaN or inf",
        record.size, record.mtime))
    return True


def _missing(roots: list[Path], found: ScanResult, stored: dict[str, FileState]) -> list[str]:
    """Stored files under `roots` that the scan did not find, and not below a folder it could
    not list (those are unknown this run, not gone). `stored` (the start of the run)
    suffices: every path this run writes was found by the scan."""
    present = {path_key(f.path) for f in found.files}
    inside, unknown = _below(roots), _below(found.unreadable)
    return [p for p in stored
            if p.startswith(inside) and not p.startswith(unknown) and p not in present]


def _below(folders: list[Path]) -> tuple[str, ...]:
    """Prefixes of the path keys below `folders`, for str.startswith."""
    return tuple(path_key(f).rstrip(os.sep) + os.sep for f in folders)


def _remove_missing(collection: Collection, missing: list[str]) -> int:
    if missing:
        collection.remove_files(missing)
        collection.store.clear_failures(missing)
    return len(missing)


def _drop_failed(collection: Collection, failures: list[FailureRecord],
                 stored: dict[str, FileState]) -> None:
    """Stored files whose current bytes failed (a failure with size and mtime: not one of the
    moment) lose their items: vectors of their earlier bytes are not theirs any more."""
    bad = [f.path for f in failures if f.size is not None and f.path in stored]
    if bad:
        collection.remove_files(bad)


def _died_reading(journal: Path, files: list[MediaFile]) -> list[FailureRecord]:
    """The files a run that died was reading (`inflight`), those unchanged since."""
    now = {path_key(f.path): (f.size, f.mtime) for f in files}
    return [f for f in died_reading(journal) if now.get(f.path) == (f.size, f.mtime)]


def _failure(media: MediaFile, err: Exception) -> FailureRecord:
    """What reading `media` raised, as its failure. An OSError comes from reading, not from a
    decoder (they raise ImageError, VideoError): a failure of the moment, tried next run."""
    if isinstance(err, (ImageError, VideoError)):
        reason = str(err)
    elif isinstance(err, OSError):
        return FailureRecord(path_key(media.path), shown(f"{media.path}: {err.strerror or err}"))
    else:  # a decoder's own error, MemoryError, ...: named, as nothing else says what it is
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = f"{media.path}: {type(err).__name__}" + (f": {detail}" if detail else "")
    return FailureRecord(path_key(media.path), shown(reason), media.size, media.mtime)


def _caption(media: MediaFile, options: IngestOptions) -> str | None:
    if media.sidecar is None:
        return None
    try:
        return read_text(media.sidecar, options.max_text_bytes).strip() or None
    except OSError:
        return None


def _sha256(fh: BinaryIO, size: int) -> str:
    """Of the first `size` bytes: the size the scan saw. Fewer bytes than that: the file was
    cut while it was read (`_Changed`); one that grew is caught by its stat after reading."""
    digest = hashlib.sha256()
    while size > 0 and (block := fh.read(min(size, 1 << 20))):
        digest.update(block)
        size -= len(block)
    if size > 0:
        raise _Changed
    return digest.hexdigest()
