"""IVF-PQ searches re-ranked with the store's exact vectors (index.rerank): recall@10 near
exact, exact scores, removed and filtered ids never returned; other index types unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from index import ann
from index.ann import ENV_ON_DISK, AnnConfig, recall_at
from index.kinds import IMAGE
from index.records import FileRecord, ItemRecord, ModelRecord
from index.rerank import RERANK_FACTOR, exact_top
from retriever.library.collection import Collection
from retriever.search.query import Query, search
from tests.helpers import clustered

DIM = 32  # IVF-PQ codes of 4 bytes: recall@10 far from exact without re-ranking
N = 3000


def files(vectors, start=0):
    return [(FileRecord(f"/m/{start + i}.jpg", IMAGE, f"h{start + i}", 1, 1.0),
             [ItemRecord(IMAGE, 0, None, v)]) for i, v in enumerate(vectors)]


def saved(folder, kind, monkeypatch):
    """N image vectors saved as a `kind` index, then files 0..99 removed (a delta save)."""
    monkeypatch.setattr(ann, "FLAT_UP_TO", 1000)
    monkeypatch.delenv(ENV_ON_DISK, raising=False)
    collection = Collection.open(folder, AnnConfig(kind))
    collection.bind_model(ModelRecord("m", "none", DIM))
    for change in (lambda c: c.write_files(files(clustered(N))),
                   lambda c: c.remove_files([f"/m/{i}.jpg" for i in range(100)])):
        with collection.writing():
            change(collection)
            collection.save()
    collection.close()


def exact(folder, queries, k, allowed=None):
    """Exact top-k ids (q, k) and the live ids and vectors, from the store."""
    store = Collection.open(folder).store
    ids, vectors = store.vectors(IMAGE)
    if allowed is not None:
        keep = np.isin(ids, allowed)
        ids, vectors = ids[keep], vectors[keep]
    top = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    return ids[top], dict(zip(ids.tolist(), vectors, strict=True))


QUERIES = ann.sample_queries(clustered(N, seed=5), 100, seed=5)


@pytest.mark.parametrize("on_disk", ["yes", "no"])
def test_ivfpq_results_are_reranked_to_near_exact_recall_with_exact_scores(
        tmp_path, monkeypatch, on_disk):
    saved(tmp_path, "ivfpq", monkeypatch)
    reader = Collection.open(tmp_path, AnnConfig(on_disk=on_disk))
    assert reader.searcher(IMAGE).kind == "ivfpq"
    truth, stored = exact(tmp_path, QUERIES, 10)
    scores, ids = reader.nearest(IMAGE, QUERIES, 10)
    _, codes_only = reader.searcher(IMAGE).search(QUERIES, 10)
    assert ids.shape == (len(QUERIES), 10) and (ids >= 0).all()
    assert recall_at(truth, ids) >= 0.95
    assert recall_at(truth, codes_only) <= recall_at(truth, ids) - 0.2
    want = np.array([[q @ stored[i] for i in row] for q, row in zip(QUERIES, ids, strict=True)])
    np.testing.assert_allclose(scores, want, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    assert not np.isin(ids, np.arange(1, 101)).any()  # removed files' items (ids from 1)


def test_filtered_and_removed_ids_never_return(tmp_path, monkeypatch):
    saved(tmp_path, "ivfpq", monkeypatch)
    reader = Collection.open(tmp_path)
    allowed = np.arange(1, N + 1, 3)  # a third of the ids, removed ones among them
    truth, _ = exact(tmp_path, QUERIES, 10, allowed)
    _, ids = reader.nearest(IMAGE, QUERIES, 10, allowed)
    assert np.isin(ids, allowed).all() and not np.isin(ids, np.arange(1, 101)).any()
    assert recall_at(truth, ids) >= 0.95


@pytest.mark.parametrize("kind", ["ivf", "flat"])
def test_other_index_types_are_searched_unchanged(tmp_path, monkeypatch, kind):
    saved(tmp_path, kind, monkeypatch)
    reader = Collection.open(tmp_path)
    assert reader.searcher(IMAGE).kind == kind
    for allowed in (None, np.arange(1, N + 1, 3)):
        found = reader.nearest(IMAGE, QUERIES, 10, allowed)
        expected = reader.searcher(IMAGE).search(QUERIES, 10, allowed)
        np.testing.assert_array_equal(found[0], expected[0])
        np.testing.assert_array_equal(found[1], expected[1])


def test_more_like_this_through_the_query_layer_is_reranked(tmp_path, monkeypatch):
    saved(tmp_path, "ivfpq", monkeypatch)
    reader = Collection.open(tmp_path)
    item = 500
    truth, stored = exact(tmp_path, stored_vector(reader, item)[None], 10)
    results = search(reader, SimpleNamespace(dim=DIM), Query(item=item, k=10))  # type: ignore
    assert [r.id for r in results] == truth[0].tolist()  # item 500 first: itself, score 1
    for r in results:
        assert abs(r.score - float(stored[item] @ stored[r.id])) <= 1e-5


def stored_vector(collection, item):
    found = collection.reads.item_vector(item)
    assert found is not None
    return found[1]


def test_candidates_the_store_no_longer_holds_are_dropped():
    queries = np.eye(3, dtype=np.float32)[:2]  # (2, 3)
    held = (np.array([4, 7, 9]), np.eye(3, dtype=np.float32) * [[0.5], [0.9], [0.1]])
    fetched = []

    def fetch(ids):
        fetched.append(ids.tolist())
        keep = np.isin(held[0], ids)
        return held[0][keep], held[1][keep]

    candidates = np.array([[9, 5, 4, -1], [7, 4, 5, 9]])  # 5: gone from the store
    scores, ids = exact_top(queries, candidates, fetch, 3)
    assert fetched == [[4, 5, 7, 9]]  # one read for all queries
    assert ids.tolist() == [[4, 9, -1], [7, 4, 9]]  # equal scores keep the index's order
    np.testing.assert_allclose(scores, [[0.5, 0, -np.inf], [0.9, 0, 0]])
    assert RERANK_FACTOR >= 2


def test_an_ivfpq_is_tuned_for_its_reranked_recall():
    """nprobe: the smallest power of two whose candidates (TUNE_K x RERANK_FACTOR) hold the
    target's share (with tune_on's margin) of each tuning query's exact neighbours."""
    import faiss

    from index.vectors import VectorIndex

    vectors, ids = clustered(N), np.arange(N, dtype=np.int64)
    ivf = VectorIndex.from_vectors(DIM, ids, vectors, AnnConfig("ivfpq")).faiss_index
    picked = ann.tuning_rows(N)
    exact = ann.Neighbours(vectors[picked], ann.TUNE_K + 1)
    exact.update(ids, vectors)
    assert ivf.nprobe == ann.tune_on(ivf, vectors[picked], ids[picked], exact.ids, 0.95,
                                     ann.TUNE_K * RERANK_FACTOR)

    def recall(nprobe):
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        _, found = ivf.search(vectors[picked], ann.TUNE_K * RERANK_FACTOR + 1, params=params)
        return np.mean([len(set(t[1:]) & set(f)) for t, f in zip(exact.ids, found,
                                                                  strict=True)]) / ann.TUNE_K

    assert recall(ivf.nprobe) >= 0.975 and (ivf.nprobe == 1 or recall(ivf.nprobe // 2) < 0.975)


def test_a_large_k_reranks_at_most_max_candidates(tmp_path, monkeypatch):
    from index import rerank

    saved(tmp_path, "ivfpq", monkeypatch)
    reader = Collection.open(tmp_path)
    asked = []
    monkeypatch.setattr(rerank, "exact_top", lambda q, c, fetch, k: asked.append(c.shape) or
                        exact_top(q, c, fetch, k))
    monkeypatch.setattr(rerank, "MAX_CANDIDATES", 500)
    scores, ids = reader.nearest(IMAGE, QUERIES[:2], 300)
    assert asked == [(2, 500)] and ids.shape == (2, 300)  # (an IVF may find fewer: -1)
    reader.nearest(IMAGE, QUERIES[:2], 40)
    assert asked[1] == (2, 400)
    assert not np.isin(ids, np.arange(1, 101)).any()
