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
from typing import TYPE_CHECKING, Any

import numpy as np

from retriever.settings import ENV_ON_DISK, ON_DISK  # noqa: F401 (ENV_ON_DISK: named here too)

if TYPE_CHECKING:  # imported where used: choosing a type must not load FAISS (~0.3 s)
    import faiss

    from retriever.settings import Settings

TYPES = ("auto", "flat", "ivf", "ivfpq")
# Below this many vectors exact search answers in about a millisecond on one core (512-d):
# nothing to win from approximation.
FLAT_UP_TO = 50_000
TRAIN_PER_LIST = 40  # training points per centroid (FAISS warns under 39)
PQ_BITS = 8  # bits of each IVF-PQ sub-quantizer code: 256 centroids, one byte
TUNE_QUERIES = 200
TUNE_K = 10
PLATEAU = 0.002  # recall gained by doubling nprobe below which tuning stops


@dataclass(frozen=True)
class AnnConfig:
    kind: str = "auto"  # one of TYPES; auto follows corpus size and memory budget
    recall_target: float = 0.95  # recall@10 against exact search that nprobe is tuned to
    memory_budget: int | None = None  # bytes the vectors may take; beyond it, ivfpq
    # readers search a saved IVF from disk, its lists memory-mapped (index.ondisk): one of
    # ON_DISK, auto = when its files are large for the memory available; the CLI passes
    # $RETRIEVER_INDEX_ON_DISK (`Settings.index_on_disk`)
    on_disk: str = "auto"
    # readers search the whole index with FAISS on this machine's GPU (`Settings.gpu`)
    gpu: bool = False


def configured(settings: Settings, **choices: Any) -> AnnConfig:
    """An AnnConfig with what `settings` (the user's environment) says of readers: on disk,
    GPU; `choices`: its other fields (--index-type, ...)."""
    return AnnConfig(**choices, on_disk=settings.index_on_disk, gpu=settings.gpu)


def choose(n: int, dim: int, cfg: AnnConfig) -> str:
    kind = cfg.kind
    if kind == "auto":
        over_budget = cfg.memory_budget is not None and n * dim * 4 > cfg.memory_budget
        kind = "ivfpq" if over_budget else "flat" if n <= FLAT_UP_TO else "ivf"
    # IVF-PQ's codebooks need 2**PQ_BITS training vectors (FAISS refuses fewer): until its
    # sample holds that many, exact search; Collection._fit rebuilds it as IVF-PQ once it does
    if kind == "ivfpq" and min(n, nlist_for(n) * TRAIN_PER_LIST) < 2 ** PQ_BITS:
        return "flat"
    return kind


def nlist_for(n: int) -> int:
    """4 x sqrt(N) (the low end of FAISS's 4..16 x sqrt(N): k-means training is the cost that
    grows with nlist) as a power of two, capped so every centroid trains on TRAIN_PER_LIST."""
    wanted = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return max(1, min(wanted, n // TRAIN_PER_LIST))


def empty(kind: str, dim: int, n: int) -> faiss.Index:
    """An untrained index of `kind` sized for `n` vectors of dimension `dim`."""
    import faiss

    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    nlist = nlist_for(n)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        # faiss's Python wrapper keeps `quantizer` alive with the index
        return faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    if kind == "ivfpq":
        m = _pq_subquantizers(dim)
        return faiss.IndexIVFPQ(quantizer, dim, nlist, m, PQ_BITS, faiss.METRIC_INNER_PRODUCT)
    raise ValueError(f"unknown index type {kind!r}: use one of {', '.join(TYPES)}")


def training_rows(index: faiss.IndexIVF, n: int, seed: int = 0) -> np.ndarray:
    """Sorted row numbers (of n) an IVF trains on: TRAIN_PER_LIST per centroid, at random."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, min(n, index.nlist * TRAIN_PER_LIST), replace=False))


def tuning_rows(n: int, seed: int = 0) -> np.ndarray:
    """Sorted row numbers (of n) whose vectors are the queries nprobe is tuned on."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, min(TUNE_QUERIES, n), replace=False))


def train(index: faiss.IndexIVF, sample: np.ndarray) -> None:
    """Train an IVF on `sample` (m, dim) float32; k-means runs on every GPU FAISS sees."""
    import faiss

    if faiss.get_num_gpus() > 0:  # untested here (no GPU): FAISS's own multi-GPU recipe
        index.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(index.d))
    index.train(np.ascontiguousarray(sample, dtype=np.float32))


class Neighbours:
    """Exact top-k ids of fixed queries, merged batch by batch over a streamed corpus."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries, self.k = queries, k  # (q, dim)
        self.scores = np.full((len(queries), 0), -np.inf, np.float32)  # (q, <=k)
        self.ids = np.empty((len(queries), 0), np.int64)

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        scores = np.concatenate([self.scores, self.queries @ vectors.T], axis=1)  # (q, k+b)
        found = np.concatenate([self.ids, np.broadcast_to(ids, (len(scores), len(ids)))], 1)
        keep = min(self.k, scores.shape[1])
        top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep] if keep < scores.shape[1] \
            else np.broadcast_to(np.arange(keep), scores.shape)
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)  # (q, keep), best first
        self.scores = np.take_along_axis(scores, top, axis=1)
        self.ids = np.take_along_axis(found, top, axis=1)


def tune_on(index: faiss.Index, queries: np.ndarray, own: np.ndarray, exact: np.ndarray,
            target: float, depth: int = TUNE_K) -> int:
    """Smallest power-of-two nprobe whose recall@10 reaches `target` (with a margin),
    measured leave-one-out: the queries (q, dim) are corpus vectors (ids `own`, (q,)) and each
    one's own hit is dropped, so the neighbours sought are those a new query from the same
    distribution would have. `exact` (q, TUNE_K + 1): each query's exact neighbours' ids.
    `depth`: the candidates a search keeps per query; more than TUNE_K for an index whose
    results are re-ranked (index.rerank), where the exact 10 need only be among them.
    """
    import faiss

    if not isinstance(index, faiss.IndexIVF) or index.ntotal == 0:
        return 1
    truth = _drop_self(exact, own, TUNE_K)
    aim = target + (1 - target) / 2  # a margin: new queries scatter around the sample's recall
    nprobe, best = 1, -1.0
    while nprobe < index.nlist:
        params = faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[call-arg]
        _, found = index.search(queries, depth + 1, params=params)
        recall = recall_at(truth, _drop_self(found, own, depth))
        # PQ codes cap recall below what any nprobe reaches: stop once probing more stops paying
        if recall >= aim or recall - best < PLATEAU:
            return nprobe
        nprobe, best = nprobe * 2, recall
    return int(index.nlist)


def _drop_self(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """(q, k+1) ids -> (q, k): each row without its query's own id (or without its last)."""
    rows = [[i for i in row if i != me][:k] for row, me in zip(found, own, strict=True)]
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
