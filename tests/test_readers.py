"""The reader pool (`retriever.ingest.readers`) on its own, with stand-in reads: results come
back in the order the files were given; a read over its CPU-time limit, or past the wall-clock
backstop, is that file's failure of this run and the others are read; the thread stuck in it is
replaced; reads are noted in the crash journal while they run; the local engine reads at most
two chunks ahead. Limits are CPU time or generous wall times: a loaded machine changes no
result here (no assertion is about speed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from index.records import FailureRecord
from retriever.ingest.handlers import PreparedFile
from retriever.ingest.inflight import InFlight, died_reading
from retriever.ingest.readers import LocalEngine, read_files
from retriever.media.scan import IMAGE, MediaFile, path_key

WALL = 600.0  # the default backstop: never reached by these reads unless a test means it


def media_files(folder: Path, n: int) -> list[MediaFile]:
    """`n` files that exist (the journal stats nothing; `path_key` resolves the folder)."""
    files = []
    for i in range(n):
        path = folder / f"f{i}.jpg"
        path.write_bytes(b"x" * (i + 1))
        files.append(MediaFile(path, IMAGE, i + 1, float(i)))
    return files


def done(media: MediaFile, note: str = "read") -> PreparedFile:
    """A stand-in for a file read: a failure record carrying `note`, so it can be told apart."""
    return PreparedFile(media, failure=FailureRecord(path_key(media.path), note))


def spin(stop: threading.Event) -> None:
    """Busy on the CPU until `stop` (or two minutes): a decoder in a loop."""
    until = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < until:
        sum(range(10_000))


@pytest.fixture
def stop():
    event = threading.Event()
    yield event
    event.set()  # a spinning or blocked stand-in read ends with its test


def test_results_come_back_in_the_order_the_files_were_given(tmp_path):
    """Three threads; the first files take longest, so they end last."""
    files = media_files(tmp_path, 6)

    def read(media: MediaFile) -> PreparedFile:
        time.sleep(0.05 * (6 - int(media.path.stem[1:])))  # asleep: no CPU used
        return done(media, media.path.name)

    got = read_files(read, files, 0.5, 3, WALL)
    assert [r.media for r in got] == files
    assert [r.failure.reason for r in got if r.failure] == [f.path.name for f in files]


def test_a_read_over_the_cpu_limit_is_that_files_failure_and_the_rest_are_read(tmp_path, stop):
    files = media_files(tmp_path, 4)

    def read(media: MediaFile) -> PreparedFile:
        if media.path.name == "f1.jpg":
            spin(stop)
        return done(media)

    got = read_files(read, files, 0.3, 2, WALL)
    key = path_key(files[1].path)
    assert [r.failure for r in got] == [
        FailureRecord(path_key(files[0].path), "read"),
        # no size and mtime: a failure of this run, not of the file's bytes (read next run)
        FailureRecord(key, f"{key}: used 0.3 s of CPU reading it, given up (tried again "
                           "next run)"),
        FailureRecord(path_key(files[2].path), "read"),
        FailureRecord(path_key(files[3].path), "read"),
    ]


def test_a_thread_stuck_in_a_read_is_replaced(tmp_path, stop):
    """One thread: it spins on the first file for good, so a new thread reads the others."""
    files = media_files(tmp_path, 3)
    threads: dict[str, threading.Thread] = {}

    def read(media: MediaFile) -> PreparedFile:
        threads[media.path.name] = threading.current_thread()
        if media.path.name == "f0.jpg":
            spin(stop)
        return done(media)

    got = read_files(read, files, 0.3, 1, WALL)
    assert "given up" in got[0].failure.reason
    assert [r.failure.reason for r in got[1:]] == ["read", "read"]
    stuck = threads["f0.jpg"]
    assert stuck.is_alive()  # still spinning: Python cannot stop it, so it was left behind
    assert threads["f1.jpg"] is not stuck and threads["f2.jpg"] is threads["f1.jpg"]


def test_a_read_blocked_past_the_wall_clock_backstop_is_given_up(tmp_path, stop):
    """A read that uses no CPU and never ends (a hung mount) is given up after `wall` s."""
    files = media_files(tmp_path, 2)

    def read(media: MediaFile) -> PreparedFile:
        if media.path.name == "f0.jpg":
            stop.wait()
        return done(media)

    got = read_files(read, files, 60.0, 1, 2.0)
    key = path_key(files[0].path)
    assert got[0].failure == FailureRecord(
        key, f"{key}: still reading after 2 s, given up (tried again next run)")
    assert got[1].failure.reason == "read"


def test_an_error_that_is_no_files_own_reaches_the_caller(tmp_path):
    """`Reader` makes a file's errors its failure; anything else it lets through (an
    interrupt, a bug) is raised where the result is taken, not lost in a thread."""
    files = media_files(tmp_path, 2)

    def read(media: MediaFile) -> PreparedFile:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        read_files(read, files, 60.0, 1, WALL)


def test_a_file_is_in_the_journal_while_it_is_read_and_not_after(tmp_path):
    files = media_files(tmp_path, 2)
    journal = InFlight(tmp_path / "reading.journal")
    seen: dict[str, list[str]] = {}

    def read(media: MediaFile) -> PreparedFile:
        seen[media.path.name] = [f.path for f in died_reading(journal.path)]
        return done(media)

    with journal:
        read_files(read, files, 60.0, 1, WALL, journal)
        # the thread notes a read done just after handing its result over: give it that moment
        until = time.monotonic() + 60
        while (after := died_reading(journal.path)) and time.monotonic() < until:
            time.sleep(0.01)
    assert seen == {f.path.name: [path_key(f.path)] for f in files}
    assert after == []


def test_the_local_engine_yields_chunks_in_order_reading_at_most_two_ahead(tmp_path):
    files = media_files(tmp_path, 10)
    started: list[str] = []
    lock = threading.Lock()

    def read(media: MediaFile) -> PreparedFile:
        with lock:
            started.append(media.path.name)
        return done(media)

    chunks, yielded = [], 0
    with LocalEngine(60.0, WALL) as engine:
        for chunk in engine.chunks(files, read, 3):  # type: ignore[arg-type]
            yielded += len(chunk)
            with lock:
                assert len(started) <= yielded + 2 * 3  # never more than two chunks ahead
            chunks.append(chunk)
        again = engine.read_now(read, files[4])  # type: ignore[arg-type]
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [r.media for c in chunks for r in c] == files
    assert again.media == files[4] and again.failure.reason == "read"
