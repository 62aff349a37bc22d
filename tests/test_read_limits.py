"""The per-file read limit measures the file's own work (its reading thread's CPU time), not
the time it waited (for a core, the GIL, a queue): no result depends on the machine's load. A
read given up on is a failure of its run only: the next run reads the file again."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from index.records import FailureRecord
from retriever.ingest import handlers, readers
from retriever.ingest.handlers import PreparedFile
from retriever.ingest.pipeline import IngestOptions, IngestReport, ingest_media
from retriever.library.collection import Collection
from retriever.media.scan import IMAGE, MediaFile, path_key

from .helpers import write_photo

SLOW = {"image": ("load_pixels", "slow.jpg"), "text": ("read_document", "slow-note.txt")}


@pytest.fixture
def library(tmp_path) -> Path:
    root = tmp_path / "lib"
    for i in range(3):
        write_photo(root / f"p{i}.jpg", (80 * i, 90, 40))
    write_photo(root / "slow.jpg", (10, 200, 10))
    (root / "slow-note.txt").write_text("a note that takes its time")
    (root / "quick.txt").write_text("a note read at once")
    return root


@pytest.fixture
def index(tiny_encoder, tmp_path):
    collection = Collection.open(tmp_path / "index")

    def run(root: Path, **options) -> IngestReport:
        with collection.writing():
            return ingest_media(collection, tiny_encoder, IngestOptions((root,), **options))

    yield run
    collection.close()


def slowed(monkeypatch, kind: str, work) -> None:
    """Reading the `kind` file named slow.* runs `work` first."""
    name, file = SLOW[kind]
    real = getattr(handlers, name)

    def read(fh, *args):
        if Path(fh.name).name == file:
            work()
        return real(fh, *args)

    monkeypatch.setattr(handlers, name, read)


def spin(stop: threading.Event) -> None:
    """Busy on the CPU until `stop` (or two minutes): a decoder in a loop."""
    until = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < until:
        sum(range(10_000))


@pytest.mark.parametrize("kind", SLOW)
def test_a_read_that_waits_is_not_given_up_however_long_it_waits(
        index, library, monkeypatch, kind):
    # 3 s asleep (no CPU: as a read waits for a core on a loaded machine, or in a queue) is 6
    # times the CPU limit, and far inside the wall-clock backstop (600 s by default)
    slowed(monkeypatch, kind, lambda: time.sleep(3))
    report = index(library, read_timeout=0.5)
    assert report.failures == []
    assert (report.images, report.texts) == (4, 2)


@pytest.mark.parametrize("kind", SLOW)
def test_a_read_that_spins_the_cpu_is_given_up_and_read_again_next_run(
        index, library, monkeypatch, kind):
    stop = threading.Event()
    with monkeypatch.context() as m:
        slowed(m, kind, lambda: spin(stop))
        try:
            report = index(library, read_timeout=0.5)
        finally:
            stop.set()
    slow = library / SLOW[kind][1]
    assert [f.path for f in report.failures] == [path_key(slow)]
    assert "used 0.5 s of CPU reading it, given up" in report.failures[0].reason
    assert (report.images, report.texts) == ((4, 1) if kind == "text" else (3, 2))

    again = index(library, read_timeout=0.5)  # not remembered as a bad file: read again
    assert again.known_failures == 0 and again.failures == []
    assert again.encoded == 1


def test_a_read_blocked_past_the_wall_clock_backstop_is_given_up_and_read_again(
        index, library, monkeypatch):
    release = threading.Event()
    with monkeypatch.context() as m:
        slowed(m, "image", release.wait)  # a hung mount: no CPU, no end
        try:
            report = index(library, read_timeout=60, read_wall_timeout=1)
        finally:
            release.set()
    assert [f.path for f in report.failures] == [path_key(library / "slow.jpg")]
    assert "still reading after 1 s, given up" in report.failures[0].reason
    assert index(library).encoded == 1  # the mount answers again: read


def test_reads_waiting_in_a_queue_are_not_given_up(tmp_path):
    """`read_files` (the Ray engine's read tasks read with it): one thread, six files that each
    take a second asleep; the last waits five seconds before its thread takes it."""
    files = [MediaFile(tmp_path / f"{i}.jpg", IMAGE, 1, 0.0) for i in range(6)]

    def read(media: MediaFile) -> PreparedFile:
        time.sleep(1)
        return PreparedFile(media, failure=FailureRecord(str(media.path), "read"))

    done = readers.read_files(read, files, 0.2, 1)  # type: ignore[arg-type]
    assert [f.failure.reason for f in done if f.failure] == ["read"] * 6
