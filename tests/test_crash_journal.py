"""A file that kills the run reading it (OOM-killed, a decoder's crash, SIGKILL) is recorded by
the next run, from the journal of reads in flight (`retriever.ingest.inflight`), and skipped
with a reason until it changes: one hostile file cannot kill every later run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from retriever.ingest import inflight
from retriever.ingest.inflight import DIED, InFlight, died_reading
from retriever.media.scan import IMAGE, TEXT, MediaFile, path_key

from .helpers import write_photo

ROOT = Path(__file__).resolve().parents[1]
# `retriever index` in a child process whose reading of a file that starts with b"HOSTILE"
# kills it (as the kernel's OOM killer would), one reader thread: the only file in flight
KILLER = textwrap.dedent("""
    import dataclasses, os, runpy, signal, sys
    from pathlib import Path
    from retriever.ingest import handlers, readers

    def killing(real):
        def read(fh, *args):
            with open(fh.name if hasattr(fh, "name") else fh, "rb") as f:
                if f.read(7) == b"HOSTILE":
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(fh, *args)
        return read

    handlers.load_pixels = killing(handlers.load_pixels)
    handlers.read_document = killing(handlers.read_document)
    real_plan = readers.plan
    readers.plan = lambda: dataclasses.replace(real_plan(), reader_threads=1)
    sys.argv = ["retriever", *sys.argv[1:]]
    runpy.run_path(sys.argv.pop(1), run_name="__main__")
""")


def index_in_child(root: Path, db: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", KILLER, str(ROOT / "cli.py"), "index", str(root), "--db",
           str(db), "--model", "retriever-tiny", "--pretrained", "none", "--batch-size", "2",
           "--json"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


def run_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["run"]


@pytest.mark.parametrize("hostile", ["c-hostile.jpg", "c-hostile.txt"])
def test_a_file_that_killed_a_run_is_recorded_and_skipped_until_it_changes(tmp_path, hostile):
    root, db = tmp_path / "lib", tmp_path / "index"
    for name in ("a", "b", "d", "e"):
        write_photo(root / f"{name}.jpg", (50 * len(name), 90, 140))
        (root / f"{name}-note.txt").write_text(f"note {name}")
    (root / hostile).write_bytes(b"HOSTILE" + os.urandom(64))

    died = index_in_child(root, db)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert (db / inflight.JOURNAL_FILE).exists()

    second = run_of(index_in_child(root, db))  # would die the same way without the journal
    assert [(f["path"], f["reason"]) for f in second["failures"]] == [
        (path_key(root / hostile), f"{path_key(root / hostile)}: {DIED}")]  # none but it
    assert not (db / inflight.JOURNAL_FILE).exists()
    stored = sqlite_paths(db)
    assert stored == sorted(path_key(p) for p in root.iterdir() if p.name != hostile)

    third = run_of(index_in_child(root, db))
    assert third["encoded"] == 0 and third["known_failures"] == 1 and third["failures"] == []

    if hostile.endswith(".jpg"):  # changed: read again
        write_photo(root / hostile, (1, 2, 3))
    else:
        (root / hostile).write_text("a note, harmless now")
    fourth = run_of(index_in_child(root, db))
    assert fourth["encoded"] == 1 and fourth["failures"] == []
    assert path_key(root / hostile) in sqlite_paths(db)


def sqlite_paths(db: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(db / "store.db") as conn:
        return sorted(p for (p,) in conn.execute("SELECT path FROM files"))


def media(tmp_path: Path, name: str, size: int = 10, mtime: float = 1.5) -> MediaFile:
    return MediaFile(tmp_path / name, IMAGE if name.endswith(".jpg") else TEXT, size, mtime)


def test_the_journal_names_the_files_in_flight_and_only_them(tmp_path):
    path = tmp_path / inflight.JOURNAL_FILE
    journal = InFlight(path).__enter__()  # never left: as in a process that died
    done = [journal.start(media(tmp_path, f"{i}.jpg")) for i in range(3)]
    journal.start(media(tmp_path, "reading.jpg", 7, 2.5))
    journal.start(media(tmp_path, "new\nline \\xff.txt", 8, 3.5))
    for token in done:
        journal.done(token)
    with open(path, "ab") as fh:
        fh.write(b'+ 99 ["torn')  # the tail of a journal cut by a power loss
    found = {f.path: (f.size, f.mtime, f.reason) for f in died_reading(path)}
    keys = [path_key(tmp_path / "reading.jpg"), path_key(tmp_path / "new\nline \\xff.txt")]
    assert found == {keys[0]: (7, 2.5, f"{keys[0]}: {DIED}"),
                     keys[1]: (8, 3.5, f"{keys[1]}: {DIED}")}


def test_a_run_that_ends_in_python_leaves_no_journal(tmp_path):
    path = tmp_path / inflight.JOURNAL_FILE
    with pytest.raises(KeyboardInterrupt), InFlight(path) as journal:
        journal.start(media(tmp_path, "a.jpg"))
        raise KeyboardInterrupt  # Ctrl-C mid-read: not a file that killed the run
    assert not path.exists() and died_reading(path) == []


def test_the_journal_stays_small_however_many_files_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(inflight, "COMPACT_EVERY", 10)
    path = tmp_path / inflight.JOURNAL_FILE
    journal = InFlight(path).__enter__()
    slow = journal.start(media(tmp_path, "slow.jpg"))
    for i in range(1000):
        journal.done(journal.start(media(tmp_path, f"{i}.jpg")))
    assert path.stat().st_size < 20 * 100  # ~10 lines, not 2000
    assert [f.path for f in died_reading(path)] == [path_key(tmp_path / "slow.jpg")]
    journal.done(slow)
    assert died_reading(path) == []
