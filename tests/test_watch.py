"""`retriever watch`: a real process watching a folder keeps its index (and searches) current
through copies, renames, deletions, a kill while files change, a burst of 2,000 files, and its
folder deleted and made again. Every wait polls the store with a generous deadline."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.request import urlopen

import pytest

from retriever.ingest.changes import Changes
from retriever.library.collection import Collection
from retriever.search.query import Query, search

from .helpers import COLOURS, TINY_ARGS, index, write_photo, write_video

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 240.0  # seconds: torch importing and a run finishing on a loaded 2-core machine


def wait_until(check: Callable[[], bool], what: str, log: Path | None = None,
               seconds: float = DEADLINE) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, (
            f"not within {seconds:.0f} s: {what}\n" + (log.read_text() if log else ""))
        time.sleep(0.2)


@contextmanager
def watching(media: Path, db: Path | None, log: Path,
             nice: int = 0) -> Iterator[subprocess.Popen]:
    """`retriever watch MEDIA --db DB` running, its stderr in `log`, once it caught up. Not
    niced by default: the tests' machine is loaded, and a niced watcher waits for the load."""
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), "watch", str(media),
             *(("--db", str(db)) if db else ()), *TINY_ARGS, "--nice", str(nice)], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=sink)
    try:
        runs = log.read_text().count("caught up")
        wait_until(lambda: process.poll() is not None or log.read_text().count("caught up") > runs,
                   "the watcher's first run", log)
        assert process.poll() is None, log.read_text()
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def stored(db: Path) -> set[str]:
    collection = Collection.open(db)
    try:
        return set(collection.reads.file_states())
    finally:
        collection.close()


def found(db: Path, encoder) -> set[str]:
    """Every file a search finds: images and video frames, then text passages."""
    collection = Collection.open(db)
    try:
        return {r.path for target in ("images", "texts")
                for r in search(collection, encoder, Query(text="anything", target=target,
                                                           k=1000, video_frames=True,
                                                           match="semantic"))}
    finally:
        collection.close()


def keys(*paths: Path) -> set[str]:
    return {str(p) for p in paths}


def encoded(log: Path) -> int:
    """Files encoded over all the watcher's runs, from its lines."""
    return sum(int(n) for n in re.findall(r"encoded (\d+),", log.read_text()))


def told(log: Path, files: int) -> bool:
    """The watcher's last run line says `files` files are indexed: the store commits before the
    line is printed, so a count read before it misses the run that stored them."""
    runs = re.findall(r"; (\d+) files indexed", log.read_text())
    return bool(runs) and int(runs[-1]) == files


@pytest.mark.slow
def test_copies_renames_and_deletions_show_in_searches(tmp_path, tiny_encoder):
    media, db, log = tmp_path / "media", tmp_path / "db", tmp_path / "watch.log"
    first = write_photo(media / "first.jpg", COLOURS["blue"])
    with watching(media, db, log) as process:
        assert stored(db) == keys(first)
        red = write_photo(media / "red.jpg", COLOURS["red"])
        green = write_photo(media / "trip" / "green.jpg", COLOURS["green"])
        note = media / "note.md"
        note.write_text("# Groceries\n\nbread, red apples and green tea\n")
        video = write_video(media / "clip.mp4")
        everything = keys(first, red, green, note, video)
        wait_until(lambda: stored(db) == everything, "the copied files indexed", log)
        wait_until(lambda: found(db, tiny_encoder) == everything, "searches find them", log)
        wait_until(lambda: told(log, len(everything)), "the run's line", log)
        before = encoded(log)

        moved = media / "kept" / "green-renamed.jpg"
        moved.parent.mkdir()
        green.rename(moved)
        note.unlink()
        after = keys(first, red, moved, video)
        wait_until(lambda: stored(db) == after, "the rename and the deletion", log)
        wait_until(lambda: found(db, tiny_encoder) == after, "searches show them", log)
        wait_until(lambda: told(log, len(after)), "the run's line", log)
        assert encoded(log) == before  # the renamed photo's vectors were reused, not re-made
        assert process.poll() is None


@pytest.mark.slow
def test_a_killed_watcher_catches_up_when_started_again(tmp_path):
    media, db, log = tmp_path / "media", tmp_path / "db", tmp_path / "watch.log"
    kept = write_photo(media / "kept.jpg", COLOURS["blue"])
    doomed = write_photo(media / "doomed.jpg", COLOURS["red"])
    with watching(media, db, log) as process:
        assert stored(db) == keys(kept, doomed)
        process.send_signal(signal.SIGKILL)
        process.wait()
    doomed.unlink()
    added = write_photo(media / "while-down" / "added.jpg", COLOURS["green"])
    (media / "notes.txt").write_text("written while nothing watched")
    with watching(media, db, log):  # caught up before it is handed over
        assert stored(db) == keys(kept, added, media / "notes.txt")


@pytest.mark.slow
def test_a_burst_of_2000_files_is_indexed_once_while_searches_answer(tmp_path):
    media, db, log = tmp_path / "media", tmp_path / "db", tmp_path / "watch.log"
    (media / "burst").mkdir(parents=True)
    seed = write_photo(media / "seed.jpg", COLOURS["blue"])
    with watching(media, db, log) as process:
        staging = tmp_path / "staging"  # made aside, then moved in at once
        staging.mkdir()
        for n in range(2000):
            (staging / f"note-{n:04d}.txt").write_text(f"note number {n} about item {n * 7}")
        for name in sorted(os.listdir(staging)):
            os.rename(staging / name, media / "burst" / name)
        answered = subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), "search", "note number", "--db", str(db),
             "--no-server", "--to", "texts", "-k", "3"],
            cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE)
        assert answered.returncode == 0, answered.stderr
        wait_until(lambda: len(stored(db)) == 2001, "all 2,000 notes indexed", log,
                   seconds=3 * DEADLINE)
        assert stored(db) == keys(seed, *(media / "burst").iterdir())
        wait_until(lambda: encoded(log) == 2001, "every note encoded", log)
        collection = Collection.open(db)
        counts = collection.reads.counts()
        collection.close()
        assert (counts.files, counts.texts, counts.images) == (2001, 2000, 1)
        assert process.poll() is None


@pytest.mark.slow
def test_a_deleted_folder_loses_its_files_and_is_followed_when_made_again(tmp_path):
    media, db, log = tmp_path / "media", tmp_path / "db", tmp_path / "watch.log"
    old = write_photo(media / "old.jpg", COLOURS["blue"])
    with watching(media, db, log, nice=10) as process:
        assert stored(db) == keys(old)
        assert os.getpriority(os.PRIO_PROCESS, process.pid) == min(19, os.nice(0) + 10)
        shutil.rmtree(media)
        wait_until(lambda: stored(db) == set(), "the deleted folder's files removed", log)
        new = write_photo(media / "new.jpg", COLOURS["red"])
        wait_until(lambda: stored(db) == keys(new), "the folder made again, indexed", log)
        later = write_photo(media / "sub" / "later.jpg", COLOURS["green"])
        wait_until(lambda: stored(db) == keys(new, later), "changes in it followed", log)
        assert process.poll() is None


@pytest.mark.slow
def test_an_index_deleted_with_its_folder_ends_the_watch_in_one_line(tmp_path):
    media, log = tmp_path / "media", tmp_path / "watch.log"
    write_photo(media / "photo.jpg", COLOURS["blue"])
    with watching(media, None, log) as process:  # the index in media/.retriever
        assert stored(media / ".retriever") == keys(media / "photo.jpg")
        shutil.rmtree(media)
        assert process.wait(timeout=DEADLINE) == 1
    assert log.read_text().splitlines()[-1] == (
        f"error: the index folder {media / '.retriever'} was deleted: run `retriever watch` "
        f"again to index the folders afresh")
    assert not media.exists()  # neither the folder nor its index made again


@pytest.mark.slow
def test_a_busy_index_is_waited_for_said_once_and_sigterm_ends_it(tmp_path):
    media, db, log = tmp_path / "media", tmp_path / "db", tmp_path / "watch.log"
    first = write_photo(media / "first.jpg", COLOURS["blue"])
    with watching(media, db, log) as process:
        holder = Collection.open(db)  # another writer, as `retriever index` would be
        with holder.writing():
            added = write_photo(media / "added.jpg", COLOURS["red"])
            wait_until(lambda: "waiting:" in log.read_text(), "the watcher says it waits", log)
            assert stored(db) == keys(first)
        wait_until(lambda: stored(db) == keys(first, added), "the run after the lock", log)
        assert log.read_text().count("waiting:") == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE) == 0, log.read_text()
    assert "stopped watching" in log.read_text()
    assert not holder.being_written()  # its lock went with it
    holder.close()


@pytest.mark.slow
def test_serve_watch_answers_searches_with_files_added_since_it_started(tmp_path):
    media, db, log = tmp_path / "media", tmp_path / "db", tmp_path / "serve.log"
    write_photo(media / "first.jpg", COLOURS["blue"])
    index(media, db, "local")
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), "serve", "--port", "0", "--db", str(db),
             "--watch"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sink)
    try:
        wait_until(lambda: "caught up" in log.read_text() or process.poll() is not None,
                   "the server's watcher caught up", log)
        url = re.search(r"at (http://\S+) ", log.read_text())
        assert url is not None and process.poll() is None, log.read_text()
        added = write_photo(media / "later" / "added.jpg", COLOURS["red"])

        def served() -> set[str]:
            with urlopen(f"{url[1]}/api/search?text=disc&k=50&match=semantic") as answer:
                return {row["path"] for row in json.load(answer)["results"]}

        wait_until(lambda: served() == keys(media / "first.jpg", added),
                   "the server finds the photo added", log)
    finally:
        process.terminate()
        process.wait(timeout=DEADLINE)


def test_a_missing_folder_is_one_line(cli, tmp_path):
    result = cli("watch", tmp_path / "nowhere", "--db", tmp_path / "db", *TINY_ARGS)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere'} does not exist: pass a folder of images and text "
        f"documents"]
    assert not (tmp_path / "db").exists()


def test_changes_are_a_bounded_set_and_wait_for_quiet():
    changes = Changes(max_paths=10)
    stop = threading.Event()
    changes.add(f"/m/{n}.jpg" for n in range(50))
    changes.add(["/m/0.jpg"])  # one already kept is no overflow by itself
    assert len(changes.paths) == 10
    batch = changes.take(stop, quiet=0.0, max_delay=60.0)
    assert batch is not None and (batch.changed, batch.overflowed) == (10, True)
    changes.add(["/m/a.jpg", "/m/a.jpg"])
    again = changes.take(stop, quiet=0.0, max_delay=60.0)
    assert again is not None and (again.changed, again.overflowed) == (1, False)
    stop.set()
    assert changes.take(stop, quiet=0.0, max_delay=60.0) is None  # stopped: nothing waits


def test_an_empty_report_is_no_change():
    """watchfiles yields an empty set on each timeout: no run may follow from it."""
    changes, stop = Changes(max_paths=10), threading.Event()
    changes.add(())
    assert changes.first is None
    changes.add((), roots_changed=True)  # a root deleted or made again is one
    batch = changes.take(stop, quiet=0.0, max_delay=60.0)
    assert batch is not None and (batch.changed, batch.roots_changed) == (0, True)
