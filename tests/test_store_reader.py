"""A one-off search reads a current SQLite store through sqlite3 alone (`open_store(...,
reading=True)`: a `Store` whose executor is index.connection's `PlainExecutor`), and every
read the same `Store` makes through sqlite3 equals its answer through SQLAlchemy on the same
store, types and all: the statements are the same texts (index.sql)."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import make_url

from index.connection import CoreExecutor, PlainExecutor, open_plain, plain_sqlite_path
from index.kinds import IMAGE, IMAGE_TEXT, KINDS, TEXT, VIDEO
from index.migrations import LATEST
from index.records import FileRecord, ItemRecord, ModelRecord, TagRecord
from index.store import Store, open_store
from retriever.errors import IndexReadOnly, StoreDamaged
from retriever.library.collection import Collection

from .helpers import engine_at_version, vec

ROOT = "/m/Ph_tos 50%/ü"  # LIKE's wildcards and the escape character in a path


def records() -> list[tuple[FileRecord, list[ItemRecord]]]:
    """Images (one with OCR words), a two-passage text, a video's frames; integer-valued
    and fractional times, a missing date, captions and none."""
    image = FileRecord(f"{ROOT}/a_b.jpg", IMAGE, "h1", 10, 1.5, 4, 3, "a caption", 100.0)
    other = FileRecord(f"{ROOT}/axb.jpg", IMAGE, "h2", 11, 2.0, None, None, None, 200.25)
    text = FileRecord(f"{ROOT}/notes/trip.md", TEXT, "h3", 12, 3.0, taken_at=300.0)
    video = FileRecord("/m/other/clip.mp4", VIDEO, "h4", 13, 4.0, 64, 48, None, None)
    upper = FileRecord("/M/PH_TOS 50%/Ü/c.jpg", IMAGE, "h5", 14, 5.0, taken_at=100.0)
    return [
        (image, [ItemRecord(IMAGE, 0, None, vec(1)), ItemRecord(IMAGE_TEXT, 0, "words", vec(2))]),
        (other, [ItemRecord(IMAGE, 0, None, vec(3))]),
        (text, [ItemRecord(TEXT, 0, "first", vec(4)), ItemRecord(TEXT, 1, "second", vec(5))]),
        (video, [ItemRecord(VIDEO, i, None, vec(6 + i), time=t)
                 for i, t in enumerate((0.0, 2.5, 5))]),
        (upper, [ItemRecord(IMAGE, 0, None, vec(9))]),
    ]


@pytest.fixture
def url(tmp_path) -> str:
    """A current store with a gap in its ids (a file removed) and two tag sets."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.set_model(ModelRecord("m", "none", 8, "f" * 64))
    store.write_files([(FileRecord("/m/gone.jpg", IMAGE, "h0", 1, 1.0),
                        [ItemRecord(IMAGE, 0, None, vec(0))])])
    store.write_files(records())
    store.remove_files(["/m/gone.jpg"])
    images = store.item_ids_where(IMAGE).tolist()
    store.replace_tags('["cat", "dog"]', images, [TagRecord(images[0], "dog", 0.3),
                                                  TagRecord(images[1], "cat", 0.2)])
    store.replace_tags('["dog", "sky"]', images[:1], [TagRecord(images[0], "dog", 0.4),
                                                      TagRecord(images[0], "sky", 0.1)])
    store.close()
    return url


def plain(url: str, read_only: bool = False) -> Store | None:
    """The store at `url` read through sqlite3, or None where it cannot be."""
    executor = open_plain(url, read_only)
    return None if executor is None else Store.on(executor)


def same(a: object, b: object) -> bool:
    """Equal, with equal types: repr tells 1 from 1.0, and np arrays by dtype and order."""
    return repr(a) == repr(b)


def test_every_read_a_search_makes_equals_sqlalchemys(url):
    reader, store = plain(url), Store(url)
    assert reader is not None
    ids = sorted(int(i) for kind in KINDS for i in store.item_ids_where(kind))
    asked = [[], ids, ids[::-1] + [ids[0], 10_000], [np.int64(ids[2]), 0, -1]]
    assert same(reader.model(), store.model()) and reader.model() is not None
    assert same(reader.generation(), store.generation())
    for kind in (*KINDS, "nothing"):
        assert same(reader.count_items(kind), store.count_items(kind)), kind
        assert same(reader.has_items(kind), store.has_items(kind)), kind
    for some in asked:
        assert reader.items(some) == store.items(some) and same(
            sorted(reader.items(some).items()), sorted(store.items(some).items()))
        assert same(reader.tags(some), store.tags(some))
    for item_id in [*ids, 10_000, -1]:
        mine, theirs = reader.item_vector(item_id), store.item_vector(item_id)
        assert same(mine and (mine[0], mine[1].tobytes(), mine[1].dtype),
                    theirs and (theirs[0], theirs[1].tobytes(), theirs[1].dtype))
    for some in asked:  # vectors by id: ascending, unknown ids left out, bytes and dtype
        (mine_ids, mine_vecs), (their_ids, their_vecs) = (reader.vectors_of(some),
                                                          store.vectors_of(some))
        assert same(mine_ids, their_ids) and same(mine_vecs.shape, their_vecs.shape)
        assert mine_vecs.tobytes() == their_vecs.tobytes() and mine_vecs.dtype == np.float32
    found_ids, vectors = store.vectors_of(ids)  # every item's vector, images or not
    assert found_ids.tolist() == ids
    for item_id, vector in zip(ids, vectors, strict=True):
        assert vector.tobytes() == store.item_vector(item_id)[1].tobytes()  # type: ignore[index]
    paths = [f.path for f, _ in records()] + ["/m/none.jpg", f"{ROOT}/A_B.jpg"]
    for some_paths in ([], paths, paths[:1]):
        assert same(reader.image_items_at(some_paths), store.image_items_at(some_paths))
    reader.close()
    store.close()


def test_every_filter_of_ids_where_equals_sqlalchemys(url):
    """Folders with LIKE's wildcards, upper case, a string prefix that is no folder, a file,
    dates at the stored values' edges, tags of either set."""
    reader, store = plain(url), Store(url)
    assert reader is not None
    prefixes = [None, ROOT, f"{ROOT}/a_", f"{ROOT}/ax", "/m/Ph%", "/m/", "/M/PH_TOS", "/x",
                f"{ROOT}/a_b.jpg", f"{ROOT}/notes/", "/"]
    times = [None, 100.0, 200.25, 250]
    tags = [None, "dog", "cat", "sky", "none"]
    for kind, prefix, after, before, tag in itertools.product(
            KINDS, prefixes, times, times, tags):
        mine = reader.item_ids_where(kind, prefix, after, before, tag)
        theirs = store.item_ids_where(kind, prefix, after, before, tag)
        assert same(mine, theirs), (kind, prefix, after, before, tag)
    assert len(store.item_ids_where(IMAGE, f"{ROOT}/a_")) == 0  # a folder, not a string prefix
    assert len(store.item_ids_where(IMAGE, f"{ROOT}/a_b.jpg")) == 1  # a file: itself
    reader.close()
    store.close()


def test_its_other_reads_answer_alike_and_its_writes_are_refused(url):
    reader = plain(url)
    store = Store(url)
    assert reader is not None
    assert reader.counts() == store.counts() and reader.last_run() == store.last_run()
    with pytest.raises(IndexReadOnly):
        reader.set_model(ModelRecord("other", "none", 8))
    reader.close()
    store.close()


def test_a_search_in_a_writable_folder_leaves_no_wal_files(url, tmp_path):
    collection = Collection.open(tmp_path, reading=True)
    assert isinstance(collection.store.executor, PlainExecutor) and collection.read_only
    assert collection.reads.has_items(VIDEO) and collection.reads.generation() == 3
    collection.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.db"]


def test_a_read_only_folder_is_read_without_writing_anything(url, tmp_path):
    (tmp_path / "store.db").chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        collection = Collection.open(tmp_path, reading=True)
        assert isinstance(collection.store.executor, PlainExecutor) and collection.read_only
        assert collection.reads.model() == ModelRecord("m", "none", 8, "f" * 64)
        collection.close()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["store.db"]
    finally:
        tmp_path.chmod(0o755)


def test_only_a_current_sqlite_store_is_read_without_sqlalchemy(url, tmp_path):
    reading = open_store(url, reading=True)
    assert isinstance(reading.executor, PlainExecutor)
    reading.close()
    writing = open_store(url)  # a writer, or `info`, goes through SQLAlchemy
    assert isinstance(writing.executor, CoreExecutor)
    writing.close()
    old = f"sqlite:///{tmp_path / 'old.db'}"
    engine_at_version(old, LATEST - 1).dispose()
    assert plain(old) is None
    migrated = open_store(old, reading=True)  # migrated, as a search always did
    assert isinstance(migrated.executor, CoreExecutor) and plain(old) is not None
    migrated.close()
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreDamaged):  # said by Store, as before
        open_store(f"sqlite:///{tmp_path / 'junk.db'}", reading=True)
    for other in (f"{url}?timeout=5", url.replace("store.db", "st%6Fre.db"), "sqlite://",
                  "sqlite:///:memory:", "postgresql+psycopg://u@localhost/db"):
        assert plain(other) is None, other


@pytest.mark.parametrize("path", ["/tmp/a b/s.db", "/tmp/a@b:c/s#1.db", "rel/s.db",
                                  "/tmp/ü/s.db", "/tmp/a+b/s.db", "/t/%41.db", "/t/q?x.db"])
def test_a_plain_url_names_the_file_sqlalchemy_opens(path):
    url = f"sqlite:///{path}"
    path = plain_sqlite_path(url)
    assert path is None or str(path) == make_url(url).database


def test_the_reader_knows_the_latest_schema_without_sqlalchemy():
    """sqlite3 checks a store's version against the migrations' own LATEST, importable
    without SQLAlchemy (the schema is stated once)."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, index.connection, index.store; "
         "from index.migrations import LATEST; print(LATEST, 'sqlalchemy' in sys.modules)"],
        cwd=Path(__file__).parent.parent, capture_output=True, text=True, check=True)
    assert done.stdout.split() == [str(LATEST), "False"]


def test_a_damaged_table_read_by_the_reader_is_the_named_error(url, tmp_path):
    path = tmp_path / "store.db"
    with sqlite3.connect(path) as db:
        size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'files'").fetchone()[0]
    db.close()
    with open(path, "r+b") as f:  # the files table's first page: garbage
        f.seek((root - 1) * size)
        f.write(b"\xff" * size)
    reader = plain(url)
    assert reader is not None  # its schema is intact
    with pytest.raises(StoreDamaged, match="is damaged"):
        reader.items([1, 2, 3])
    reader.close()
