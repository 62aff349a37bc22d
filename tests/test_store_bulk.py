"""The store's bulk write path (`Store.write_files`: executemany on SQLite, binary COPY on
PostgreSQL, ids from the database's own counters): what a big batch writes reads back exactly,
its ids are those the database would have given, and a new SQLite store has big pages.
Tests taking `stores` run on SQLite and on PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from index.connection import SQLITE_PAGE_SIZE
from index.kinds import IMAGE, KINDS, TEXT, VIDEO
from index.records import FileRecord, ItemRecord, ItemView
from index.store import Store
from retriever.errors import DiskFull

DIM = 512
FILES = 2500  # one batch: past the 2,000 files of bench/scale.py's batches


def odd_vectors(n: int, seed: int) -> np.ndarray:
    """(n, DIM) float32 that a lossy path would change: -0.0, subnormals, the extremes."""
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    v[:, 0] = -0.0
    v[:, 1] = np.float32(1e-45)  # the smallest subnormal
    v[:, 2] = np.finfo(np.float32).max
    v[:, 3] = np.finfo(np.float32).tiny
    return v


def big_batch(seed: int = 0) -> list[tuple[FileRecord, list[ItemRecord]]]:
    """Images (one item), texts (three passages) and videos (two frames), metadata with NULLs,
    unicode and big numbers, every vector odd."""
    vectors = iter(odd_vectors(FILES * 2, seed))
    batch = []
    for i in range(FILES):
        kind = (IMAGE, TEXT, VIDEO)[i % 3]
        record = FileRecord(f"/m/ünïcode 'q' {i:05d}.x", kind, f"{i:064x}", 5 * 2**30 + i,
                            1_700_000_000.123456789 + i, 1024 if kind == IMAGE else None,
                            None if i % 2 else 768, f"caption {i}" if i % 5 == 0 else None,
                            None if i % 7 == 0 else 1.6e9 + i / 3)
        if kind == IMAGE:
            items = [ItemRecord(IMAGE, 0, None, next(vectors))]
        elif kind == TEXT:
            items = [ItemRecord(TEXT, p, f"passage {p} of {i} ✓", next(vectors))
                     for p in range(3)]
        else:
            items = [ItemRecord(VIDEO, p, None, next(vectors), time=p * 2.5) for p in range(2)]
        batch.append((record, items))
    return batch


@pytest.fixture
def store(stores):
    s = Store(stores.url())
    yield s
    s.close()


def test_a_big_batch_reads_back_bit_identical(store):
    batch = big_batch()
    written = store.write_files(batch)
    items = [(f, it) for f, its in batch for it in its]
    expected = {kind: [(f, it) for f, it in items if it.kind == kind] for kind in KINDS}
    for kind in (IMAGE, TEXT, VIDEO):
        ids, vectors = store.vectors(kind)
        assert ids.tolist() == written.added[kind][0].tolist()
        sent = np.stack([it.vector for _, it in expected[kind]])
        # bit for bit: -0.0, subnormals and the extremes as given
        np.testing.assert_array_equal(vectors.view(np.uint32), sent.view(np.uint32))
        np.testing.assert_array_equal(written.added[kind][1].view(np.uint32),
                                      sent.view(np.uint32))
        views = store.items(ids)
        assert [views[int(i)] for i in ids] == [
            ItemView(int(i), f.path, kind, it.position, it.passage, f.caption, it.time,
                     f.taken_at) for i, (f, it) in zip(ids, expected[kind], strict=True)]
    states = store.file_states()
    assert {p: (s.size, s.mtime, s.content_hash) for p, s in states.items()} == {
        f.path: (f.size, f.mtime, f.content_hash) for f, _ in batch}
    record, reused = store.items_with_hash(batch[1][0].content_hash)  # a text: 3 passages
    assert record == batch[1][0]
    assert [(it.kind, it.position, it.passage) for it in reused] == [
        (it.kind, it.position, it.passage) for it in batch[1][1]]
    np.testing.assert_array_equal(np.stack([it.vector for it in reused]).view(np.uint32),
                                  np.stack([it.vector for it in batch[1][1]]).view(np.uint32))


def test_a_big_batch_replacing_half_of_itself(store):
    """Files written again are replaced: their old items are reported removed, none remain."""
    first = store.write_files(big_batch())
    old = {kind: set(ids.tolist()) for kind, (ids, _) in first.added.items()}
    again = big_batch(seed=1)[::2]
    second = store.write_files(again)
    removed = set(second.removed)
    assert len(removed) == len(second.removed) == sum(len(its) for _, its in again)
    assert removed <= set().union(*old.values())
    counts = store.counts()
    assert (counts.files, counts.images + counts.texts + counts.videos) == (
        FILES, sum(len(ids) for ids in old.values()))
    ids, vectors = store.vectors(TEXT)
    fresh = second.added[TEXT]
    np.testing.assert_array_equal(vectors[-len(fresh[0]):], fresh[1])
    assert set(ids.tolist()).isdisjoint(removed)


def test_ids_are_the_databases_own(stores):
    """An item inserted by plain SQL (the database picks its id) and a batch after it: the
    batch's ids follow on, consecutive in batch order; the next plain insert follows the batch
    (the counter itself was advanced: a PostgreSQL sequence, SQLite's AUTOINCREMENT)."""
    url = stores.url()
    store = Store(url)
    engine = create_engine(url)

    def plain_insert(path: str) -> int:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO files (path, kind, content_hash, size, mtime, "
                              "indexed_at) VALUES (:p, 'image', 'h', 1, 1.0, 0)"), {"p": path})
            file_id = conn.scalar(text("SELECT id FROM files WHERE path = :p"), {"p": path})
            conn.execute(text("INSERT INTO items (file_id, kind, position) "
                              "VALUES (:f, 'image', 0)"), {"f": file_id})
            return int(conn.scalar(text("SELECT id FROM items WHERE file_id = :f"),
                                   {"f": file_id}))

    before = plain_insert("/m/plain-1")
    written = store.write_files(big_batch())
    ids = sorted(i for kind_ids, _ in written.added.values() for i in kind_ids.tolist())
    assert ids == list(range(before + 1, before + 1 + len(ids)))
    store.remove_files([f.path for f, _ in big_batch()[-10:]])  # the newest ids: never again
    assert plain_insert("/m/plain-2") == ids[-1] + 1
    engine.dispose()
    store.close()


# a column's declared type (index.migrations' words) -> the type binary COPY sends it as
COPY_TYPE = {"INTEGER": "int8", "BIGINT": "int8", "int8": "int8", "TEXT": "text",
             "text": "text", "FLOAT": "float8", "float8": "float8", "BLOB": "bytea",
             "bytea": "bytea"}


def test_the_bulk_columns_are_the_migrated_schemas(stores):
    """index.bulk's BULK_COLUMNS (the columns write_files fills and the type COPY sends each
    as) names columns of the migrated tables with their types, and every column it leaves out
    may be left out (nullable or with a default): the schema is stated by the migrations and
    this second statement is held to it, on both databases."""
    from index.bulk import BULK_COLUMNS

    url = stores.url()
    Store(url).close()  # migrated
    engine = create_engine(url)
    with engine.connect() as conn:
        for table, filled in BULK_COLUMNS.items():
            if engine.dialect.name == "sqlite":
                rows = conn.execute(text(f"PRAGMA table_info({table})")).all()
                declared = {r[1]: (r[2], not r[3] or r[4] is not None or r[5]) for r in rows}
            else:
                rows = conn.execute(text(
                    "SELECT column_name, udt_name, is_nullable, column_default FROM "
                    "information_schema.columns WHERE table_name = :t"), {"t": table}).all()
                declared = {r[0]: (r[1], r[2] == "YES" or r[3] is not None) for r in rows}
            assert {c: COPY_TYPE[declared[c][0]] for c, _ in filled} == dict(filled), table
            assert all(may_omit for c, (_, may_omit) in declared.items()
                       if c not in dict(filled)), table
    engine.dispose()


def test_a_batch_naming_a_path_twice_is_refused_whole(store):
    batch = big_batch()[:5]
    with pytest.raises(IntegrityError):
        store.write_files([*batch, batch[0]])
    assert store.counts().files == 0 and store.generation() == 0


def test_a_vector_overflowing_float32_is_refused(store):
    """Stored as float32, 1e300 would be inf: refused like NaN, before anything is written."""
    huge = np.full(DIM, 1e300)
    with pytest.raises(ValueError, match="NaN or inf"):
        store.write_files([(FileRecord("/m/a", IMAGE, "h", 1, 1.0),
                            [ItemRecord(IMAGE, 0, None, huge)])])
    assert store.counts().files == 0


def test_vectors_of_two_lengths_are_refused(store):
    with pytest.raises(ValueError, match="different lengths"):
        store.write_files([(FileRecord(f"/m/{d}", IMAGE, "h", 1, 1.0),
                            [ItemRecord(IMAGE, 0, None, np.ones(d, np.float32))])
                           for d in (4, 6)])
    assert store.counts().files == 0


@pytest.mark.postgres
def test_a_failing_copy_is_one_named_error_and_writes_nothing(postgres):
    """PostgreSQL's COPY runs on the driver's connection, past the engine's `handle_error`:
    its errors are named all the same. Here the server's disk fills up (SQLSTATE 53100,
    raised by a trigger) while the vectors are copied, after the files and items."""
    store = Store(postgres.create_database())
    with store.engine.begin() as conn:
        conn.execute(text("CREATE FUNCTION full_disk() RETURNS trigger LANGUAGE plpgsql AS $$ "
                          "BEGIN RAISE EXCEPTION 'no space' USING ERRCODE = 'disk_full'; "
                          "END $$"))
        conn.execute(text("CREATE TRIGGER full_disk BEFORE INSERT ON vectors "
                          "FOR EACH ROW EXECUTE FUNCTION full_disk()"))
    with pytest.raises(DiskFull, match="free space"):
        store.write_files(big_batch()[:10])
    assert store.counts().files == 0 and store.generation() == 0
    store.close()
    postgres.drop_databases()


def page_size(path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA page_size").fetchone()[0]


def test_a_new_sqlite_store_has_big_pages_and_an_old_one_keeps_its_own(tmp_path):
    """32 KiB pages hold 15 512-d vectors, 4 KiB pages one (each in an overflow page)."""
    Store(f"sqlite:///{tmp_path / 'new.db'}").close()
    assert page_size(tmp_path / "new.db") == SQLITE_PAGE_SIZE == 32_768
    with sqlite3.connect(tmp_path / "old.db") as conn:  # as SQLite made stores before
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (x)")
    old = Store(f"sqlite:///{tmp_path / 'old.db'}")
    old.write_files(big_batch()[:30])
    assert old.counts().files == 30
    old.close()
    assert page_size(tmp_path / "old.db") == 4096
