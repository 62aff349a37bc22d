"""Approximate nearest-neighbour indexes: which FAISS index a corpus gets, and how it is tuned.

  flat   exact inner product; every query scores every vector. Small corpora.
  ivf    IVF-Flat: vectors bucketed under `nlist` k-means centroids; a query scans `nprobe`
         buckets. FAISS's guideline nlist = 4..16 x sqrt(N), trained on >= 39 x nlist vectors.
  ivfpq  IVF with product-quantised codes (m bytes a vector instead of 4 x dim): for corpora
         whose float32 vectors exceed the memory budget.
`nprobe` is tuned on the corpus itself: the smallest power of two whose recall@10 against exact
search reaches the target on sample queries. All three remove by id (store deletions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where used: choosing a type must not load FAISS (~0.3 s)
    import faiss

TYPES = ("auto", "flat", "ivf", "ivfpq")
# Below this many vectors exact search answers in about a millisecond on one core (512-d):
# nothing to win from approximation.
FLAT_UP_TO = 50_000
TRAIN_PER_LIST = 40  # training points per centroid (FAISS warns under 39)
TUNE_QUERIES = 200
TUNE_K = 10
PLATEAU = 0.002  # recall gained by doubling nprobe below which tuning stops


@dataclass(frozen=True)
class AnnConfig:
    kind: str = "auto"  # one of TYPES; auto follows corpus size and memory budget
    recall_target: float = 0.95  # recall@10 against exact search that nprobe is tuned to
    memory_budget: int | None = None  # bytes the vectors may take; beyond it, ivfpq


def choose(n: int, dim: int, cfg: AnnConfig) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    if cfg.memory_budget is not None and n * dim * 4 > cfg.memory_budget:
        return "ivfpq"
    return "flat" if n <= FLAT_UP_TO else "ivf"


def nlist_for(n: int) -> int:
    """4 x sqrt(N) (the low end of FAISS's 4..16 x sqrt(N): k-means training is the cost that
    grows with nlist) as a power of two, capped so every centroid trains on TRAIN_PER_LIST."""
    wanted = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return max(1, min(wanted, n // TRAIN_PER_LIST))


def build(kind: str, dim: int, vectors: np.ndarray, seed: int = 0) -> faiss.Index:
    import faiss

    """An empty, trained index of `kind` for vectors like `vectors` (n, dim) float32."""
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    nlist = nlist_for(len(vectors))
    quantizer = faiss.IndexFlatIP(dim)
    index: faiss.IndexIVF
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivfpq":
        m = _pq_subquantizers(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"unknown index type {kind!r}: use one of {', '.join(TYPES)}")
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(vectors), min(len(vectors), nlist * TRAIN_PER_LIST), replace=False)
    index.train(np.ascontiguousarray(vectors[np.sort(sample)]))
    return index  # faiss's Python wrapper keeps `quantizer` alive with the index


def tune_nprobe(
    index: faiss.Index, ids: np.ndarray, vectors: np.ndarray, target: float, seed: int = 0
) -> int:
    """Smallest power-of-two nprobe whose recall@10 reaches `target` (with a margin),
    measured leave-one-out: sampled
    corpus vectors are the queries and each one's own hit is dropped, so the neighbours sought
    are those a new query from the same distribution would have. `index` holds `vectors`
    (n, dim) under `ids` (n,).
    """
    import faiss

    if not isinstance(index, faiss.IndexIVF) or index.ntotal == 0:
        return 1
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(vectors), min(TUNE_QUERIES, len(vectors)), replace=False)
    queries = np.ascontiguousarray(vectors[picked])  # (q, dim)
    exact = faiss.IndexFlatIP(index.d)
    exact.add(vectors)
    _, positions = exact.search(queries, TUNE_K + 1)  # (q, k+1) rows of `vectors`
    truth = _drop_self(ids[positions], ids[picked])
    aim = target + (1 - target) / 2  # a margin: new queries scatter around the sample's recall
    nprobe, best = 1, -1.0
    while nprobe < index.nlist:
        params = faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[call-arg]
        _, found = index.search(queries, TUNE_K + 1, params=params)
        recall = recall_at(truth, _drop_self(found, ids[picked]))
        # PQ codes cap recall below what any nprobe reaches: stop once probing more stops paying
        if recall >= aim or recall - best < PLATEAU:
            return nprobe
        nprobe, best = nprobe * 2, recall
    return int(index.nlist)


def _drop_self(found: np.ndarray, own: np.ndarray) -> np.ndarray:
    """(q, k+1) ids -> (q, k): each row without its query's own id (or without its last)."""
    rows = [[i for i in row if i != me][:TUNE_K] for row, me in zip(found, own, strict=True)]
    return np.array(rows, dtype=np.int64)


def sample_queries(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Corpus vectors plus noise, renormalised: queries near the data, but not in it."""
    rng = np.random.default_rng(seed)
    picked = vectors[rng.choice(len(vectors), min(n, len(vectors)), replace=False)]
    noisy = picked + rng.normal(scale=0.5 / math.sqrt(vectors.shape[1]), size=picked.shape)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def recall_at(truth: np.ndarray, found: np.ndarray) -> float:
    """Mean fraction of each row of `truth` (q, k) that appears in the same row of `found`."""
    hits = [len(set(t.tolist()) & set(f.tolist())) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits) / truth.shape[1])


def _pq_subquantizers(dim: int) -> int:
    """Bytes per vector: dim / 8 (64 for 512-d, 16x smaller than float32), a divisor of dim."""
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m
