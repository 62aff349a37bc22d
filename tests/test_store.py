"""The metadata store: migrations, replace-by-path writes, vectors as the source of truth.
Tests taking `stores` run on SQLite and on PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from sqlalchemy import create_engine, inspect, text

from index.kinds import IMAGE, TEXT
from index.migrations import LATEST, MIGRATIONS, migrate
from index.records import FailureRecord, FileRecord, ItemRecord, ModelRecord
from index.store import Store
from retriever.errors import BadStoreUrl, IndexReadOnly, StoreError

from .helpers import engine_at_version, vec


def image_file(path, h="h"):
    return FileRecord(path, IMAGE, h, 10, 1.0, 4, 3, "a caption")


@pytest.fixture
def store(stores):
    s = Store(stores.url())
    yield s
    s.close()


def test_fresh_store_is_at_latest_version_with_its_tables(stores):
    url = stores.url("s")
    Store(url).close()
    engine = create_engine(url)
    with engine.connect() as conn:
        versions = [r[0] for r in conn.execute(
            text("SELECT version FROM schema_migrations ORDER BY version"))]
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert versions == [v for v, _, _ in MIGRATIONS] and versions[-1] == LATEST
    assert {"collection_model", "files", "items", "vectors"} <= tables


def test_migrations_run_once(stores):
    engine = create_engine(stores.url("s"))
    assert migrate(engine.begin) == [v for v, _, _ in MIGRATIONS]
    assert migrate(engine.begin) == []
    engine.dispose()


def test_upgrade_from_an_unversioned_store_keeps_nothing_half_done(stores):
    """A store whose bookkeeping table exists but records nothing (the shape before v1) gets
    every migration, each with its record."""
    engine = engine_at_version(stores.url("s"), 0)
    assert migrate(engine.begin) == [v for v, _, _ in MIGRATIONS]
    engine.dispose()


def test_model_record_roundtrip(store):
    assert store.model() is None
    store.set_model(ModelRecord("ViT-B-32", "laion2b_s34b_b79k", 512))
    assert store.model() == ModelRecord("ViT-B-32", "laion2b_s34b_b79k", 512)


def test_write_returns_ids_and_vectors_for_the_index(store):
    result = store.write_files([
        (image_file("/m/a.jpg"), [ItemRecord(IMAGE, 0, None, vec(1))]),
        (FileRecord("/m/n.txt", TEXT, "t", 5, 2.0),
         [ItemRecord(TEXT, 0, "one", vec(2)), ItemRecord(TEXT, 1, "two", vec(3))]),
    ])
    image_ids, image_vecs = result.added[IMAGE]
    text_ids, text_vecs = result.added[TEXT]
    assert len(image_ids) == 1 and len(text_ids) == 2 and result.removed == []
    np.testing.assert_array_equal(text_vecs, np.stack([vec(2), vec(3)]))
    views = store.items([*image_ids, *text_ids])
    assert views[int(image_ids[0])].caption == "a caption"
    assert [views[int(i)].passage for i in text_ids] == ["one", "two"]
    assert store.counts().__dict__ == {"images": 1, "texts": 2, "files": 2, "videos": 0,
                                       "image_texts": 0}


def test_rewriting_a_path_replaces_its_items_and_never_reuses_ids(store):
    first = store.write_files([(image_file("/m/a.jpg"), [ItemRecord(IMAGE, 0, None, vec(1))])])
    old_id = int(first.added[IMAGE][0][0])
    second = store.write_files([(image_file("/m/a.jpg", "h2"),
                                 [ItemRecord(IMAGE, 0, None, vec(2))])])
    assert second.removed == [old_id]
    new_id = int(second.added[IMAGE][0][0])
    assert new_id != old_id
    ids, vectors = store.vectors(IMAGE)
    assert ids.tolist() == [new_id]
    np.testing.assert_array_equal(vectors[0], vec(2))


def test_remove_files_cascades_to_items_and_vectors(store):
    store.write_files([(image_file(f"/m/{i}.jpg"), [ItemRecord(IMAGE, 0, None, vec(i))])
                       for i in range(3)])
    removed = store.remove_files(["/m/0.jpg", "/m/2.jpg"])
    assert len(removed) == 2
    assert store.vectors(IMAGE)[0].tolist() == sorted(set(range(1, 4)) - set(removed))
    assert store.counts().files == 1


def test_prefix_filter_is_literal(store):
    """`%` and `_` in a folder name match themselves, not SQL wildcards."""
    store.write_files([
        (image_file("/m/100%_sure/a.jpg"), [ItemRecord(IMAGE, 0, None, vec(1))]),
        (image_file("/m/100xxsure/b.jpg"), [ItemRecord(IMAGE, 0, None, vec(2))]),
    ])
    ids = store.item_ids_where(IMAGE, "/m/100%_sure/")
    assert [store.items(ids)[int(i)].path for i in ids] == ["/m/100%_sure/a.jpg"]


def test_vectors_are_little_endian_float32_blobs(store):
    store.write_files([(image_file("/m/a.jpg"), [ItemRecord(IMAGE, 0, None, vec(5))])])
    with store.engine.connect() as conn:
        blob = conn.execute(text("SELECT data FROM vectors")).scalar_one()
    np.testing.assert_array_equal(np.frombuffer(blob, "<f4"), vec(5))


def test_any_sqlalchemy_url(tmp_path):
    """The store takes a URL, not a path: here SQLite with an explicit absolute URL."""
    store = Store(f"sqlite+pysqlite:///{tmp_path / 'elsewhere.sqlite'}")
    store.set_model(ModelRecord("m", "none", 8))
    assert (tmp_path / "elsewhere.sqlite").is_file() and store.model().dim == 8


def test_upgrade_from_version_1_keeps_data_and_adds_runs(stores):
    """A store written by the first release (migration 1 only) opens under the current code."""
    url = stores.url("s")
    engine = engine_at_version(url, 1)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO files VALUES (1, '/m/a.jpg', 'image', 'h', 1, 1.0, "
                          "2, 2, NULL, 0)"))
        conn.execute(text("INSERT INTO items VALUES (1, 1, 'image', 0, NULL)"))
        conn.execute(text("INSERT INTO vectors VALUES (1, :b)"), {"b": vec(1).tobytes()})
    engine.dispose()
    store = Store(url)
    assert store.counts().images == 1
    np.testing.assert_array_equal(store.vectors(IMAGE)[1][0], vec(1))
    assert store.generation() == 0 and store.last_run() is None and store.failures() == {}
    run_id = store.start_run()
    store.finish_run(run_id, {"encoded": 0})
    assert store.last_run().status == "completed"


def test_every_write_bumps_the_generation(store):
    before = store.generation()
    store.write_files([(image_file("/m/a.jpg"), [ItemRecord(IMAGE, 0, None, vec(1))])])
    store.remove_files(["/m/a.jpg"])
    assert store.generation() == before + 2


def test_upgrade_to_version_3_backfills_taken_at_from_mtime(stores):
    url = stores.url("s")
    engine = engine_at_version(url, 2)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO files VALUES (1, '/m/a.jpg', 'image', 'h', 1, 1234.5, "
                          "2, 2, NULL, 0)"))
        conn.execute(text("INSERT INTO items VALUES (1, 1, 'image', 0, NULL)"))
    engine.dispose()
    store = Store(url)
    assert store.item_ids_where(IMAGE, after=1234.0, before=1235.0).tolist() == [1]
    assert store.item_ids_where(IMAGE, after=1235.0).tolist() == []


def test_ids_are_never_reused_even_after_the_newest_is_deleted(store):
    """A FAISS file saved before a delete must never find its old id naming a new item:
    AUTOINCREMENT on SQLite, a sequence on PostgreSQL."""
    written = [store.write_files([(image_file(f"/m/{i}.jpg"), [ItemRecord(IMAGE, 0, None,
                                                                           vec(i))])])
               for i in range(2)]
    newest = int(written[1].added[IMAGE][0][0])
    store.remove_files(["/m/1.jpg"])
    again = store.write_files([(image_file("/m/2.jpg"), [ItemRecord(IMAGE, 0, None, vec(2))])])
    assert int(again.added[IMAGE][0][0]) > newest


def test_sizes_and_times_are_stored_exactly(store):
    """A 5 GB file's size and a nanosecond-ish mtime come back as given: an unchanged file is
    recognised by (size, mtime) equality, so nothing may round them."""
    record = FileRecord("/m/big.mov", IMAGE, "h", 5 * 2**30, 1_700_000_000.123456789,
                        taken_at=1_600_000_000.000001)
    store.write_files([(record, [ItemRecord(IMAGE, 0, None, vec(1))])])
    state = store.file_states()["/m/big.mov"]
    assert (state.size, state.mtime) == (5 * 2**30, 1_700_000_000.123456789)
    assert store.item_ids_where(IMAGE, after=1_600_000_000.000001).size == 1
    assert store.item_ids_where(IMAGE, after=1_600_000_000.000002).size == 0


def test_removing_more_paths_than_one_statement_binds(store):
    """70,000 paths: past SQLite's 32,766 and PostgreSQL's 65,535 bound parameters."""
    store.write_files([(image_file("/m/a.jpg"), [ItemRecord(IMAGE, 0, None, vec(1))])])
    paths = [f"/m/gone-{i}.jpg" for i in range(70_000)] + ["/m/a.jpg"]
    assert len(store.remove_files(paths)) == 1
    store.clear_failures(paths)
    assert store.counts().files == 0


def test_postgresql_without_a_driver_name_uses_psycopg(tmp_path):
    """`postgresql://` means psycopg 3 (SQLAlchemy would want psycopg2): here its server is
    not there, which is one named error naming the store, not a traceback."""
    with pytest.raises(StoreError, match=r"cannot use the store postgresql\+psycopg://u:\*\*\*"):
        Store(f"postgresql://u:secret@/db?host={tmp_path}")


def test_a_missing_driver_is_one_line_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    with pytest.raises(BadStoreUrl, match=r"not installed.*pip install 'retriever\[postgres\]'"):
        Store("postgresql+psycopg://u@localhost/db")


def test_a_read_only_store_reads_and_refuses_writes_with_the_named_error(stores):
    """SQLite opened mode=ro, PostgreSQL with read-only transactions: the same IndexReadOnly."""
    writable = Store(stores.url())
    writable.set_model(ModelRecord("m", "none", 8))
    writable.close()
    store = Store(stores.url(), read_only=True)
    assert store.model() == ModelRecord("m", "none", 8)
    with pytest.raises(IndexReadOnly):
        store.set_model(ModelRecord("other", "none", 8))
    store.close()


def test_items_with_hashes_gives_one_stored_file_per_hash_with_its_items(store):
    """One query per 10,000 hashes: each stored hash -> the first file stored with it, its
    items in (kind, position) order with their vectors; a file without items has none, a hash
    not stored is left out. `items_with_hash` answers the same, one hash at a time."""
    text_items = [ItemRecord(TEXT, p, f"passage {p}", vec(10 + p)) for p in (2, 0, 1)]
    store.write_files([
        (image_file("/a.jpg", h="same"), [ItemRecord(IMAGE, 0, None, vec(1))]),
        (image_file("/b.jpg", h="same"), [ItemRecord(IMAGE, 0, None, vec(2))]),
        (FileRecord("/t.md", TEXT, "text", 5, 2.0), text_items),
        (FileRecord("/empty.md", TEXT, "nothing", 0, 3.0), []),
    ])
    hashes = ["same", "text", "nothing", "absent"] + [f"x{n}" for n in range(12_000)]
    found = store.items_with_hashes(hashes)
    assert sorted(found) == ["nothing", "same", "text"]
    record, items = found["same"]
    assert record == image_file("/a.jpg", h="same")
    assert [(it.kind, it.position) for it in items] == [(IMAGE, 0)]
    np.testing.assert_array_equal(items[0].vector, vec(1))
    record, items = found["text"]
    assert record == FileRecord("/t.md", TEXT, "text", 5, 2.0)
    assert [(it.position, it.passage) for it in items] == [(0, "passage 0"), (1, "passage 1"),
                                                           (2, "passage 2")]
    np.testing.assert_array_equal(np.stack([it.vector for it in items]),
                                  np.stack([vec(10), vec(11), vec(12)]))
    assert found["nothing"] == (FileRecord("/empty.md", TEXT, "nothing", 0, 3.0), [])
    assert store.items_with_hashes([]) == {}
    record, items = store.items_with_hash("text")
    assert record == found["text"][0]
    assert [(it.kind, it.position, it.passage, it.vector.tolist()) for it in items] == [
        (it.kind, it.position, it.passage, it.vector.tolist()) for it in found["text"][1]]
    assert store.items_with_hash("absent") is None


def test_vector_batches_are_of_the_size_asked_in_id_order(store):
    """One query read `size` rows at a time (a server-side cursor on PostgreSQL)."""
    store.write_files([(image_file(f"/{n}.jpg", h=f"h{n}"), [ItemRecord(IMAGE, 0, None, vec(n))])
                       for n in range(5)])
    batches = list(store.vector_batches(IMAGE, 2))
    assert [len(ids) for ids, _ in batches] == [2, 2, 1]
    ids, vectors = store.vectors(IMAGE)
    assert np.concatenate([b for b, _ in batches]).tolist() == ids.tolist()
    np.testing.assert_array_equal(np.concatenate([v for _, v in batches]), vectors)


def test_the_model_and_a_failure_recorded_again_replace_the_first(store):
    """INSERT ... ON CONFLICT DO UPDATE: one row each, the last one given; runs get ids in
    order, and a new run marks one left running as interrupted."""
    store.set_model(ModelRecord("a", "none", 8))
    store.set_model(ModelRecord("b", "laion", 16, "f" * 64))
    assert store.model() == ModelRecord("b", "laion", 16, "f" * 64)
    first = store.start_run()
    store.record_failures(first, [FailureRecord("/x.jpg", "truncated", 3, 1.0)])
    second = store.start_run()
    assert second > first and store.last_run().status == "running"
    store.record_failures(second, [FailureRecord("/x.jpg", "not an image", None, None),
                                   FailureRecord("/y.jpg", "empty", 0, 2.0)])
    assert store.failures() == {"/x.jpg": FailureRecord("/x.jpg", "not an image", None, None),
                                "/y.jpg": FailureRecord("/y.jpg", "empty", 0, 2.0)}
    store.finish_run(second, {"images": 1})
    assert store.last_run().stats == {"images": 1}
    store.clear_failures(["/x.jpg"])
    assert list(store.failures()) == ["/y.jpg"]
