"""Exact re-ranking of IVF-PQ results with the store's float32 vectors.

An IVF-PQ index scores 64-byte codes, not vectors: on bench/scale.py's clustered 1M x 512 its
recall@10 against exact search stops near 0.33 whatever nprobe. The store holds every vector
exactly, so a search asks the index for RERANK_FACTOR x k candidates, reads their vectors from
the store in one query, scores them by exact inner product and keeps the best k, with exact
scores. The index then only has to put the true top k among its top k x RERANK_FACTOR.
The index's nprobe is tuned for this (`index.ann.tune_on` with depth TUNE_K x RERANK_FACTOR): the
recall to reach is that of its top k x RERANK_FACTOR, which the codes' own top k plateaus far
below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

# candidates fetched per result wanted. 100k clustered 512-d vectors (bench/rerank.py, nprobe
# 4): recall@10 0.54 codes alone; re-ranked 0.78 (2), 0.951 (5), 0.953 (10 and 20: the lists
# probed are the limit then); each step ~0.4 ms a query more. 10: the target with room to spare
RERANK_FACTOR = 10
# at most this many candidates (or k, if more): FAISS's largest k on a GPU, and a large -k
# must not read most of the store's vectors
MAX_CANDIDATES = 2048

# ids (n,) -> the stored (ids (m,) int64 ascending, vectors (m, dim) float32), m <= n
Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class Searcher(Protocol):
    def search(self, queries: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...


def reranked(index: Searcher, fetch: Fetch, queries: np.ndarray, k: int,
             allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`index.search` re-scored exactly: queries (q, dim) -> scores (q, k') and ids (q, k'),
    best first, k' = min(k, candidates), id -1 (score -inf) marks an empty slot. The
    candidates are the index's own (so `allowed` and its removals hold); a candidate the
    store no longer holds is dropped."""
    queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(len(queries), -1)
    depth = max(k, min(k * RERANK_FACTOR, MAX_CANDIDATES))  # the search caps it at len
    _, candidates = index.search(queries, depth, allowed)  # (q, c)
    return exact_top(queries, candidates, fetch, k)


def exact_top(queries: np.ndarray, candidates: np.ndarray, fetch: Fetch,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best min(k, c) of each row of `candidates` (q, c) ids (-1 = none) by exact inner
    product with its query (q, dim), their vectors read by one `fetch` for all rows."""
    keep = min(k, candidates.shape[1])
    found, vectors = fetch(np.unique(candidates[candidates >= 0]))
    scores = np.full(candidates.shape, -np.inf, np.float32)
    if len(found):
        rows = np.minimum(np.searchsorted(found, candidates), len(found) - 1)  # (q, c)
        stored = (found[rows] == candidates) & (candidates >= 0)
        exact = queries @ vectors.T  # (q, m): every query against every fetched vector
        scores = np.where(stored, np.take_along_axis(exact, rows, axis=1), scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :keep]  # (q, keep), best first
    top = np.take_along_axis(scores, order, axis=1)
    ids = np.where(np.isfinite(top), np.take_along_axis(candidates, order, axis=1), -1)
    return top, ids.astype(np.int64)
