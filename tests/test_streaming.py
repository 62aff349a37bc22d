"""Indexes past memory: built from the store in batches, saved as deltas, same results."""

from __future__ import annotations

import numpy as np
import pytest

from index import ann
from index import saved as saved_module
from index.ann import AnnConfig, recall_at
from index.kinds import IMAGE
from index.records import ModelRecord
from index.saved import VECTOR_FILES
from index.store import Store
from index.vectors import VectorIndex
from retriever.library.collection import Collection
from tests.helpers import clustered, files

DIM = 32


@pytest.fixture
def grown(tmp_path, monkeypatch):
    """A collection of 3,000 image vectors, past a lowered flat limit: an IVF, saved whole."""
    monkeypatch.setattr(ann, "FLAT_UP_TO", 1000)
    monkeypatch.setattr(saved_module, "BUILD_BATCH", 256)  # several batches
    collection = Collection.open(tmp_path / "index")
    collection.bind_model(ModelRecord("m", "none", DIM))
    with collection.writing():
        collection.write_files(files(clustered(3000)))
        collection.save()
    return tmp_path / "index"


def brute_force(store: Store, queries, k=10):
    ids, vectors = store.vectors(IMAGE)
    return ids[np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]]


def test_store_batches_are_the_stored_vectors_in_order(stores):
    store = Store(stores.url())
    store.set_model(ModelRecord("m", "none", DIM))
    store.write_files(files(clustered(700)))
    batches = list(store.vector_batches(IMAGE, size=256))
    assert [len(ids) for ids, _ in batches] == [256, 256, 188]
    ids, vectors = store.vectors(IMAGE)
    assert np.array_equal(np.concatenate([i for i, _ in batches]), ids)
    assert np.array_equal(np.concatenate([v for _, v in batches]), vectors)
    store.close()


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_a_streamed_build_is_the_in_memory_build(kind):
    vectors = clustered(3000)
    ids = np.arange(3000, dtype=np.int64) * 2 + 5
    batches = [(ids[i:i + 300], vectors[i:i + 300]) for i in range(0, 3000, 300)]
    streamed = VectorIndex.from_batches(DIM, 3000, lambda: batches, AnnConfig(kind))
    whole = VectorIndex.from_vectors(DIM, ids, vectors, AnnConfig(kind))
    assert streamed.kind == whole.kind == kind and len(streamed) == 3000
    assert getattr(streamed.faiss_index, "nprobe", 0) == getattr(whole.faiss_index, "nprobe", 0)
    queries = clustered(50, seed=7)
    assert np.array_equal(streamed.search(queries, 10)[1], whole.search(queries, 10)[1])


def test_a_rebuild_streams_the_store_and_never_loads_it_whole(grown, monkeypatch):
    (grown / VECTOR_FILES[IMAGE]).write_bytes(b"damaged")
    queries = clustered(100, seed=3)
    truth = brute_force(Store(f"sqlite:///{grown / 'store.db'}"), queries)
    calls = {"whole": 0, "batches": 0}
    real = Store.vector_batches

    def counted(self, kind, size=10_000):
        for batch in real(self, kind, size):
            calls["batches"] += 1
            yield batch

    def whole(*_):
        calls["whole"] += 1
        raise AssertionError("the whole store was loaded")

    monkeypatch.setattr(Store, "vector_batches", counted)
    monkeypatch.setattr(Store, "vectors", whole)
    collection = Collection.open(grown)
    rebuilt = collection.vectors(IMAGE)
    assert collection.rebuilt == [IMAGE] and rebuilt.kind == "ivf" and len(rebuilt) == 3000
    assert calls == {"whole": 0, "batches": 2 * 12}  # 3000 / 256 -> 12 batches, two passes
    assert recall_at(truth, rebuilt.search(queries, 10)[1]) >= 0.9


def written(folder):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()
            if p.is_file()}


def test_a_run_saves_only_what_it_changed(grown):
    before = written(grown)
    collection = Collection.open(grown)
    with collection.writing():
        collection.write_files(files(clustered(40, seed=1), start=3000))
        replaced = files(clustered(1, seed=2), start=5, tag="new")  # file 5: new bytes
        collection.write_files(replaced)
        collection.save()
    after = written(grown)
    changed = {name for name in after if before.get(name) != after[name]}
    assert {n for n in changed if n.startswith("images.")} == {"images.faiss.delta1",
                                                                "images.faiss.json"}
    delta = (grown / "images.faiss.delta1").stat().st_size
    assert delta < 41 * (DIM * 4 + 8) + 1000 < (grown / "images.faiss").stat().st_size / 10
    reopened = Collection.open(grown)
    index = reopened.vectors(IMAGE)
    assert reopened.rebuilt == [] and len(index) == 3040  # 40 added, file 5 replaced
    queries = clustered(30, seed=4)
    assert np.array_equal(index.search(queries, 10)[1],
                          collection.vectors(IMAGE).search(queries, 10)[1])
    old_vector, new_vector = clustered(3000)[5:6], replaced[0][1][0].vector[None]
    assert 6 not in index.search(old_vector, 10)[1]  # file 5's first item (ids from 1)
    assert index.search(new_vector, 1)[1][0, 0] == max(reopened.reads.item_ids_where(IMAGE))


def test_deltas_are_folded_into_a_whole_save_once_many(grown, monkeypatch):
    monkeypatch.setattr(saved_module, "MAX_DELTAS", 2)
    for run in range(3):
        collection = Collection.open(grown)
        with collection.writing():
            collection.write_files(files(clustered(10, seed=run), start=4000 + 10 * run))
            collection.save()
    deltas = sorted(p.name for p in grown.glob("images.faiss.delta*"))
    assert deltas == []  # the third run wrote it whole and removed the two deltas
    assert len(Collection.open(grown).vectors(IMAGE)) == 3030


def test_a_damaged_delta_is_a_rebuild_from_the_store(grown):
    collection = Collection.open(grown)
    with collection.writing():
        collection.write_files(files(clustered(10, seed=5), start=3000))
        collection.save()
    path = grown / "images.faiss.delta1"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    reader = Collection.open(grown)
    index = reader.vectors(IMAGE)
    assert reader.rebuilt == [IMAGE] and len(index) == 3010
