"""Pairs of vectors at least a cosine apart from each other: FAISS range search.

`close_pairs` puts the given unit vectors in an exact `IndexFlatIP` and asks FAISS, for each one,
for every vector whose inner product is at least `threshold` (`range_search`): FAISS computes the
products in blocks (BLAS), Python only sees the pairs found. The index is built from the vectors
passed (the store's, not a saved IVF or PQ index's approximations), so nothing within the radius
is missed.

FAISS's GPU indexes have no range search. With a GPU, the same pairs come from k-nearest-neighbour
searches on a GPU copy (`_knn_pairs`): k starts at KNN_START and doubles for the rows whose k-th
neighbour still reaches the threshold, until every row's list ends below it (tested against
`range_search` on CPU).
"""

from __future__ import annotations

import faiss
import numpy as np

BATCH = 4096  # query rows per FAISS call: bounds the result buffers
KNN_START = 16  # neighbours asked per row first on a GPU; doubled for rows that fill it


def close_pairs(vectors: np.ndarray, threshold: float,
                gpu: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rows i < j of `vectors` (n, dim) unit vectors with cosine >= threshold:
    rows i (m,) int64, rows j (m,) int64 and their cosines (m,) float32, sorted by (i, j).
    `gpu`: None chooses by whether FAISS sees a GPU."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    if n < 2:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float32)
    index: faiss.Index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    if gpu is None:
        gpu = faiss.get_num_gpus() > 0
    search = _knn_pairs if gpu else _range_pairs
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    parts = [search(index, vectors, start, threshold) for start in range(0, n, BATCH)]
    rows = np.concatenate([p[0] for p in parts])
    cols = np.concatenate([p[1] for p in parts])
    scores = np.concatenate([p[2] for p in parts])
    keep = rows < cols  # each pair once, and no row with itself
    order = np.lexsort((cols[keep], rows[keep]))
    return rows[keep][order], cols[keep][order], scores[keep][order]


def _range_pairs(index: faiss.Index, vectors: np.ndarray, start: int,
                 threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, scores) of rows start..start+BATCH: FAISS range search, inner product >=
    threshold (FAISS keeps results > radius, so the radius is the float just below it)."""
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    lims, scores, cols = index.range_search(vectors[start:start + BATCH], radius)
    counts = np.diff(np.asarray(lims).astype(np.int64)).astype(np.int64)  # results per row
    rows = np.repeat(np.arange(start, start + len(counts), dtype=np.int64), counts)
    return rows, cols.astype(np.int64), scores.astype(np.float32)


def _knn_pairs(index: faiss.Index, vectors: np.ndarray, start: int,
               threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What `_range_pairs` finds, from k-NN searches with k doubling for rows that fill it."""
    pending = np.arange(start, min(start + BATCH, len(vectors)), dtype=np.int64)
    k, found = KNN_START, []
    while len(pending):
        k = min(k, index.ntotal)
        scores, cols = index.search(vectors[pending], k)  # (q, k), best first
        full = (scores[:, -1] >= threshold) & (k < index.ntotal)  # may have more beyond k
        done = ~full
        hit = (scores >= threshold) & (cols >= 0) & done[:, None]
        found.append((np.broadcast_to(pending[:, None], hit.shape)[hit], cols[hit],
                      scores[hit]))
        pending, k = pending[full], 2 * k
    return (np.concatenate([f[0] for f in found]).astype(np.int64),
            np.concatenate([f[1] for f in found]).astype(np.int64),
            np.concatenate([f[2] for f in found]).astype(np.float32))
