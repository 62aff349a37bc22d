"""Approximate indexes against exact search: recall floors, filters, size-driven type choice."""

from __future__ import annotations

import numpy as np
import pytest

from index import ann
from index.ann import AnnConfig, choose, recall_at, sample_queries
from index.vectors import VectorIndex


def clustered(n, dim=32, centres=100, seed=0):
    """Unit vectors around `centres` cluster centres: structured like real embeddings."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    x = c[rng.integers(0, centres, n)] + rng.normal(scale=0.7, size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus():
    vectors = clustered(20_000)
    ids = np.arange(len(vectors), dtype=np.int64) * 3 + 1
    queries = sample_queries(vectors, 300, seed=42)  # not the tuning queries
    exact = VectorIndex.from_vectors(32, ids, vectors)
    return ids, vectors, queries, exact


def test_ivf_meets_its_recall_target_on_unseen_queries(corpus):
    ids, vectors, queries, exact = corpus
    ivf = VectorIndex.from_vectors(32, ids, vectors, AnnConfig("ivf", recall_target=0.95))
    assert ivf.kind == "ivf" and 1 <= ivf.faiss_index.nprobe < ivf.faiss_index.nlist
    _, truth = exact.search(queries, 10)
    _, found = ivf.search(queries, 10)
    assert recall_at(truth, found) >= 0.93  # target 0.95 on the tuning queries
    a_lower_target = VectorIndex.from_vectors(32, ids, vectors, AnnConfig("ivf", 0.5))
    assert a_lower_target.faiss_index.nprobe < ivf.faiss_index.nprobe  # tuning follows the target


def test_ivf_scores_are_exact_inner_products(corpus):
    ids, vectors, queries, _ = corpus
    ivf = VectorIndex.from_vectors(32, ids, vectors, AnnConfig("ivf"))
    scores, found = ivf.search(queries[:5], 5)
    positions = (found - 1) // 3
    want = np.einsum("qd,qkd->qk", queries[:5], vectors[positions])
    np.testing.assert_allclose(scores, want, atol=1e-5)


def test_filtered_ivf_search_only_returns_allowed_ids(corpus):
    ids, vectors, queries, exact = corpus
    ivf = VectorIndex.from_vectors(32, ids, vectors, AnnConfig("ivf"))
    allowed = ids[::7]
    _, found = ivf.search(queries, 10, allowed=allowed)
    _, truth = exact.search(queries, 10, allowed=allowed)
    assert np.isin(found[found >= 0], allowed).all()
    assert recall_at(truth, found) >= 0.9


def test_ivfpq_is_smaller_and_still_finds_neighbours(corpus, tmp_path):
    ids, vectors, queries, exact = corpus
    pq = VectorIndex.from_vectors(32, ids, vectors, AnnConfig("ivfpq"))
    flat_file, pq_file = tmp_path / "flat.faiss", tmp_path / "pq.faiss"
    exact.save(flat_file)
    pq.save(pq_file)
    assert pq_file.stat().st_size < flat_file.stat().st_size / 3
    _, truth = exact.search(queries, 10)
    assert recall_at(truth, pq.search(queries, 10)[1]) >= 0.4  # lossy codes: a floor


def test_removal_works_for_every_type(corpus):
    ids, vectors, _, _ = corpus
    for kind in ("flat", "ivf", "ivfpq"):
        index = VectorIndex.from_vectors(32, ids[:5000], vectors[:5000], AnnConfig(kind))
        assert index.remove(ids[:10]) == 10
        _, found = index.search(vectors[:10], 1)
        assert not np.isin(found, ids[:10]).any(), kind


def test_auto_follows_size_and_budget():
    assert choose(10_000, 512, AnnConfig()) == "flat"
    assert choose(1_000_000, 512, AnnConfig()) == "ivf"
    assert choose(1_000_000, 512, AnnConfig(memory_budget=512 * 2**20)) == "ivfpq"
    assert choose(10, 512, AnnConfig("ivf")) == "ivf"
    assert ann.nlist_for(1_000_000) == 4096  # 4 x sqrt(N) = 4000 -> 2^12


def test_a_collection_switches_to_ivf_when_it_grows(tmp_path, monkeypatch):
    from index.kinds import IMAGE
    from index.records import FileRecord, ItemRecord
    from retriever.library.collection import Collection

    monkeypatch.setattr(ann, "FLAT_UP_TO", 1000)
    vectors = clustered(3000)
    collection = Collection.open(tmp_path / "index")
    from index.records import ModelRecord

    collection.bind_model(ModelRecord("m", "none", 32))
    with collection.writing():
        collection.write_files([(FileRecord(f"/m/{i}.jpg", IMAGE, str(i), 1, 1.0),
                                 [ItemRecord(IMAGE, 0, None, vectors[i])]) for i in range(500)])
        collection.save()
        assert Collection.open(tmp_path / "index").vectors(IMAGE).kind == "flat"
        collection.write_files([(FileRecord(f"/m/{i}.jpg", IMAGE, str(i), 1, 1.0),
                                 [ItemRecord(IMAGE, 0, None, vectors[i])])
                                for i in range(500, 3000)])
        collection.save()
    reopened = Collection.open(tmp_path / "index").vectors(IMAGE)
    assert reopened.kind == "ivf" and len(reopened) == 3000


def test_ivfpq_below_its_codebook_size_is_exact_until_it_grows():
    """`--index-type ivfpq` on a handful of photos: FAISS cannot train 256-code codebooks on
    fewer vectors, so the index is flat (exact) until its training sample reaches 256, then
    IVF-PQ (Collection._fit rebuilds it when choose's answer changes)."""
    vectors = clustered(400)
    ids = np.arange(400, dtype=np.int64)
    first = next(n for n in range(1, 400) if choose(n, 32, AnnConfig("ivfpq")) == "ivfpq")
    assert min(first, ann.nlist_for(first) * ann.TRAIN_PER_LIST) >= 2 ** ann.PQ_BITS
    for n, kind in ((8, "flat"), (first - 1, "flat"), (first, "ivfpq")):
        index = VectorIndex.from_vectors(32, ids[:n], vectors[:n], AnnConfig("ivfpq"))
        assert index.kind == kind and len(index) == n
        assert index.search(vectors[:1], 1)[1][0, 0] == 0
    assert choose(8, 32, AnnConfig(memory_budget=1)) == "flat"  # auto's ivfpq too
