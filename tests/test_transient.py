"""What is true only for a moment is not taken for what the files are: a folder that cannot be
listed for one run keeps its files (their ids, their tags), and a file rewritten while it is
read is never stored with a mix of its bytes, nor kept with vectors of bytes it no longer has."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from index.kinds import IMAGE, TEXT
from index.records import TagRecord
from retriever.ingest import handlers
from retriever.ingest.pipeline import IngestOptions, IngestReport, ingest_media
from retriever.library.collection import Collection
from retriever.media.scan import path_key

from .helpers import write_photo


@pytest.fixture
def library(tmp_path) -> Path:
    """Photos and notes at the top and in two levels of subfolders."""
    root = tmp_path / "lib"
    for folder in (root, root / "trip", root / "trip" / "day2"):
        for i in range(2):
            write_photo(folder / f"p{i}.jpg", (90 * i, 60, 200 - 90 * i))
        (folder / "note.txt").write_text(f"notes written in {folder.name}")
    (root / "trip" / "p0.txt").write_text("a caption for the first trip photo")
    return root


@pytest.fixture
def index(tiny_encoder, tmp_path):
    collection = Collection.open(tmp_path / "index")

    def run(root: Path) -> IngestReport:
        with collection.writing():
            return ingest_media(collection, tiny_encoder, IngestOptions((root,), batch_size=3))

    run.collection = collection  # type: ignore[attr-defined]
    yield run
    collection.close()


def unlistable(monkeypatch, folder: Path) -> None:
    """`folder` cannot be listed, as a folder chmod 000 for a user who is not root."""
    real = os.scandir

    def scandir(path=".", *args):
        if os.path.abspath(path) == str(folder):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)


def ids(collection: Collection) -> dict[str, list[int]]:
    return {kind: sorted(int(i) for i in collection.reads.item_ids_where(kind))
            for kind in (IMAGE, TEXT)}


@pytest.mark.parametrize("hidden", ["trip", "trip/day2", "."])
def test_files_below_a_folder_that_cannot_be_listed_keep_their_ids_and_tags(
        index, library, monkeypatch, hidden):
    collection = index.collection
    index(library)
    before, files = ids(collection), collection.store.file_states()
    photo = path_key(library / "trip" / "day2" / "p1.jpg")
    item = collection.store.image_items_at([photo])[photo]
    with collection.writing():
        collection.replace_tags('["cat"]', [item], [TagRecord(item, "cat", 0.9)])

    with monkeypatch.context() as m:
        unlistable(m, (library / hidden).resolve())
        report = index(library)
    assert report.removed == 0 and report.encoded == 0
    assert [f.path for f in report.failures] == [path_key((library / hidden).resolve())]
    assert "cannot read folder" in report.failures[0].reason
    assert collection.store.file_states() == files  # nothing removed, no caption cleared
    assert ids(collection) == before

    again = index(library)  # readable again: nothing new, nothing lost
    assert (again.encoded, again.removed, again.failures) == (0, 0, [])
    assert ids(collection) == before
    assert collection.reads.tags([item]) == {item: ["cat"]}


def rewrite(path: Path, how: str, other: Path) -> None:
    """Change `path` the way an editor, a sync client or a camera app does."""
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 3])
    elif how == "append":
        with open(path, "ab") as fh:
            fh.write(b"\n and appended lines" if path.suffix == ".txt" else b"\0" * 999)
    else:  # swap: another file renamed over it
        swapped = path.with_name("swap.tmp")
        swapped.write_bytes(other.read_bytes())
        os.replace(swapped, path)


def changed_while_read(monkeypatch, target: Path, how: str, other: Path, times: int = 1):
    """The first `times` reads of `target` see it rewritten (`how`) between its hash and its
    decoding: the bytes hashed and the bytes decoded are not the same."""
    left = {"n": times}
    for name in ("load_pixels", "read_document"):
        real = getattr(handlers, name)

        def decode(fh, *args, real=real):
            if Path(fh.name) == target and left["n"] > 0:
                left["n"] -= 1
                rewrite(target, how, other)
            return real(fh, *args)

        monkeypatch.setattr(handlers, name, decode)


def stored_hash(collection: Collection, path: Path) -> str | None:
    state = collection.store.file_states().get(path_key(path))
    return None if state is None else state.content_hash


@pytest.mark.parametrize("how", ["truncate", "swap", "append"])
@pytest.mark.parametrize("name", ["trip/p1.jpg", "trip/note.txt"])
@pytest.mark.parametrize("stored_before", [False, True])
def test_a_file_rewritten_while_read_is_stored_as_it_is_now_or_not_at_all(
        index, library, monkeypatch, how, name, stored_before):
    collection = index.collection
    target = library / name
    other = library / ("p0.jpg" if target.suffix == ".jpg" else "note.txt")  # other bytes
    if stored_before:  # an earlier run stored it; now it is edited, and again while it is read
        index(library)
        write_photo(target, (1, 2, 3)) if target.suffix == ".jpg" else target.write_text("new")
    with monkeypatch.context() as m:
        changed_while_read(m, target, how, other)
        report = index(library)
    now = target.read_bytes()
    readable = not (how == "truncate" and target.suffix == ".jpg")  # a third of a JPEG
    if readable:
        assert stored_hash(collection, target) == hashlib.sha256(now).hexdigest()
        assert report.failures == []
    else:  # neither the bytes it had nor a mix: gone from the index, a failure remembered
        assert stored_hash(collection, target) is None
        assert [f.path for f in report.failures] == [path_key(target)]
        assert index(library).known_failures == 1
    counts = collection.reads.counts()
    assert counts.images == 6 - (not readable)  # `info` counts what can be read
    if target.suffix == ".txt":  # its passages are its text now
        items = collection.reads.items(
            [int(i) for i in collection.reads.item_ids_where(TEXT, path_key(target))])
        passages = " ".join(v.passage or "" for v in items.values())
        assert passages.split() == str(now, "utf-8").split()


@pytest.mark.parametrize("name", ["trip/p1.jpg", "trip/note.txt"])
def test_a_file_that_keeps_changing_while_read_is_a_failure_of_this_run_only(
        index, library, monkeypatch, name):
    collection = index.collection
    target = library / name
    with monkeypatch.context() as m:
        changed_while_read(m, target, "append", target, times=100)  # a log being written
        report = index(library)
    assert [f.path for f in report.failures] == [path_key(target)]
    assert "changed while it was being read" in report.failures[0].reason
    assert stored_hash(collection, target) is None  # no mix of its bytes stored

    again = index(library)  # quiet now: read, not skipped as a known bad file
    assert again.known_failures == 0 and again.failures == [] and again.encoded == 1
    assert stored_hash(collection, target) == hashlib.sha256(target.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["trip/p1.jpg", "trip/day2/p0.jpg", "p1.jpg"])
def test_a_stored_file_whose_bytes_now_fail_loses_its_earlier_vectors(index, library, name):
    collection = index.collection
    index(library)
    target = library / name
    target.write_bytes(b"\xff\xd8\xff\xe0 not a picture any more")
    before = collection.reads.counts()
    report = index(library)
    assert [f.path for f in report.failures] == [path_key(target)]
    assert stored_hash(collection, target) is None
    after = collection.reads.counts()
    assert (after.images, after.files) == (before.images - 1, before.files - 1)
    assert not collection.reads.item_ids_where(IMAGE, path_key(target)).size
    assert index(library).known_failures == 1  # and skipped until it changes
