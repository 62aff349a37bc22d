"""The reader pool: threads that read files (`Reader`), each read within a per-file limit of
its own CPU time and a wall-clock backstop, noted in the crash journal while it runs; and the
engine that reads in them here (`LocalEngine`), as the Ray engine reads in its read tasks.

    submit(read, media) -> a job --a reader thread--> result(job): the file read, or, once the
    read used `limit` CPU seconds or ran `wall` seconds, that file's failure of this run

A thread stuck in a read cannot be stopped by Python: it is left behind (a daemon) and a new
thread takes its place, so one hostile file costs one file, never the run.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Protocol, cast

from index.records import FailureRecord
from retriever.encoding.cpu import plan
from retriever.ingest.handlers import PreparedFile
from retriever.ingest.inflight import InFlight
from retriever.ingest.options import DEFAULT_READ_WALL_TIMEOUT
from retriever.ingest.reader import Reader
from retriever.media.scan import MediaFile, path_key

ReadOne = Callable[[MediaFile], PreparedFile]  # a `Reader`, or a stand-in for one
# Seconds between looks at a read's CPU time, at least: a read at a fraction of a core gets
# closer to its limit by ever smaller steps
_MIN_LOOK = 0.05


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
    `retriever.encoding.cpu.plan` gives (`workers`: another count, for bench/pipeline.py)."""

    def __init__(self, limit: float, wall: float = DEFAULT_READ_WALL_TIMEOUT,
                 journal: InFlight | None = None, workers: int | None = None) -> None:
        self._limit, self._wall, self._journal = limit, wall, journal
        self._workers = workers
        self._readers: _ReaderThreads | None = None

    def __enter__(self) -> LocalEngine:
        self._readers = _ReaderThreads(self._workers or plan().reader_threads, self._limit,
                                       self._wall, self._journal)
        return self

    def __exit__(self, *exc: object) -> None:
        cast(_ReaderThreads, self._readers).__exit__()

    def chunks(self, todo: list[MediaFile], read: Reader, size: int
               ) -> Iterator[list[PreparedFile]]:
        return _read_ahead(cast(_ReaderThreads, self._readers), todo, read, size)

    def read_now(self, read: Reader, media: MediaFile) -> PreparedFile:
        readers = cast(_ReaderThreads, self._readers)
        return readers.result(readers.submit(read, media))


def read_files(read: ReadOne, files: list[MediaFile], limit: float, workers: int,
               wall: float = DEFAULT_READ_WALL_TIMEOUT, journal: InFlight | None = None,
               ) -> list[PreparedFile]:
    """`files` read by `workers` threads, in order, each within `limit` CPU seconds and `wall`
    seconds, noted in `journal` while they are read (`_ReaderThreads`)."""
    with _ReaderThreads(workers, limit, wall, journal) as readers:
        jobs = [readers.submit(read, media) for media in files]
        return [readers.result(job) for job in jobs]


@dataclass
class _Job:
    read: ReadOne
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

    def submit(self, read: ReadOne, media: MediaFile) -> _Job:
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


def _read_ahead(readers: _ReaderThreads, todo: list[MediaFile], read: ReadOne,
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
