"""The FAISS index against brute-force numpy on the same vectors."""

from __future__ import annotations

import numpy as np
import pytest

from index.vectors import VectorIndex


def unit(rng, n, d=32):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def brute_force(vectors, ids, queries, k):
    scores = queries @ vectors.T  # (q, n) cosine, vectors are unit
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    ids = rng.choice(10_000, size=500, replace=False).astype(np.int64)  # sparse, unordered
    return ids, unit(rng, 500), unit(rng, 20)


def test_search_matches_numpy(data):
    ids, vectors, queries = data
    index = VectorIndex.from_vectors(32, ids, vectors)
    scores, found = index.search(queries, 10)
    want_scores, want_ids = brute_force(vectors, ids, queries, 10)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(found, want_ids)


def test_allowed_ids_match_numpy_on_the_subset(data):
    ids, vectors, queries = data
    index = VectorIndex.from_vectors(32, ids, vectors)
    keep = np.arange(0, 500, 3)
    scores, found = index.search(queries, 5, allowed=ids[keep])
    want_scores, want_ids = brute_force(vectors[keep], ids[keep], queries, 5)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_k_larger_than_index_returns_everything(data):
    ids, vectors, queries = data
    index = VectorIndex.from_vectors(32, ids[:4], vectors[:4])
    scores, found = index.search(queries[:1], 10)
    assert sorted(found[0].tolist()) == sorted(ids[:4].tolist())


def test_remove_drops_exactly_those_ids(data):
    ids, vectors, queries = data
    index = VectorIndex.from_vectors(32, ids, vectors)
    assert index.remove(ids[:100]) == 100
    assert len(index) == 400
    _, found = index.search(vectors[:100], 1)
    assert not set(found[:, 0].tolist()) & set(ids[:100].tolist())
    _, want = brute_force(vectors[100:], ids[100:], queries, 3)
    np.testing.assert_array_equal(index.search(queries, 3)[1], want)


def test_save_load_roundtrip_leaves_no_temp_files(data, tmp_path):
    ids, vectors, queries = data
    index = VectorIndex.from_vectors(32, ids, vectors)
    path = tmp_path / "images.faiss"
    index.save(path)
    index.save(path)  # overwrite goes through the same temp-then-rename
    assert [p.name for p in tmp_path.iterdir()] == ["images.faiss"]
    loaded = VectorIndex.load(path)
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])


def test_wrong_shape_is_refused(data):
    ids, vectors, _ = data
    index = VectorIndex(32)
    with pytest.raises(ValueError, match=r"expected \(3, 32\)"):
        index.add(ids[:3], vectors[:3, :16])
