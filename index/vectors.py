"""The vector index: FAISS inner product over unit vectors, ids = store item ids.

One `VectorIndex` per modality. Small corpora get `IndexIDMap2(IndexFlatIP)` (exact cosine);
large ones IVF or IVF-PQ (see `index.ann`), whose tuned `nprobe` is stored in the FAISS file.
All map ids to the store's item ids and remove by id. `from_batches` builds any of them from
vectors streamed in batches (an IVF trains on a sample). When FAISS sees GPUs, searches run on
a GPU clone (an IVF split across them). Files are written atomically (temp file, then rename).
A reader may instead search a saved IVF from its file, lists memory-mapped (index.ondisk).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import faiss
import numpy as np

from index.ann import (
    TUNE_K,
    AnnConfig,
    Neighbours,
    choose,
    empty,
    train,
    training_rows,
    tune_on,
    tuning_rows,
)
from index.checksums import Summing
from index.deltas import Journal
from index.rerank import RERANK_FACTOR
from retriever.atomic import replacing

Batch = tuple[np.ndarray, np.ndarray]  # ids (b,) int64, vectors (b, dim) float32


class VectorIndex:
    def __init__(self, dim: int, faiss_index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.faiss_index = (faiss_index if faiss_index is not None
                            else faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))
        self._gpu: faiss.Index | None = None  # search-side clone, dropped on every change
        self.journal: Journal | None = None  # changes since saved, when saved incrementally

    @classmethod
    def from_vectors(
        cls, dim: int, ids: np.ndarray, vectors: np.ndarray, ann: AnnConfig | None = None
    ) -> VectorIndex:
        """An index over `vectors` (n, dim) under `ids` (n,); exact unless `ann` says otherwise."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
        return cls.from_batches(dim, len(ids), lambda: [(ids, vectors)], ann)

    @classmethod
    def from_batches(cls, dim: int, n: int, batches: Callable[[], Iterable[Batch]],
                     ann: AnnConfig | None = None) -> VectorIndex:
        """An index over the `n` vectors that `batches()` yields as (ids (b,), vectors (b, dim))
        batches, never holding them all: an IVF trains on a sample gathered in a first pass,
        then takes the vectors batch by batch in a second, which also finds the exact
        neighbours of the queries its nprobe is tuned on. Same index as one batch of all."""
        ann = ann or AnnConfig(kind="flat")
        built = cls(dim, empty(choose(n, dim, ann) if n else "flat", dim, n))
        ivf = built.faiss_index
        if not isinstance(ivf, faiss.IndexIVF):
            for ids, vectors in batches():
                built.add(ids, vectors)
            return built
        sample, (query_ids, queries) = _gather(batches(), training_rows(ivf, n), tuning_rows(n))
        train(ivf, sample[1])
        del sample
        exact = Neighbours(queries, TUNE_K + 1)
        for ids, vectors in batches():
            built.add(ids, vectors)
            exact.update(ids, vectors)
        # an IVF-PQ's searches are re-ranked exactly (index.rerank): tuned for that recall
        depth = TUNE_K * RERANK_FACTOR if isinstance(ivf, faiss.IndexIVFPQ) else TUNE_K
        ivf.nprobe = tune_on(ivf, queries, query_ids, exact.ids, ann.recall_target, depth)
        return built

    @property
    def kind(self) -> str:
        return kind_of(self.faiss_index)

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        index = faiss.read_index(str(path))
        return cls(index.d, index)

    def save(self, path: Path) -> str:
        """Write the index atomically; returns its checksum. Written through Python, so a full
        disk raises OSError(ENOSPC) rather than FAISS's RuntimeError."""
        with replacing(path) as tmp, open(tmp, "wb") as fh:
            out = Summing(fh)
            writer = faiss.PyCallbackIOWriter(out.write)  # type: ignore[attr-defined]
            faiss.write_index(self.faiss_index, writer)
        return out.checksum

    def __len__(self) -> int:
        return int(self.faiss_index.ntotal)

    def flat_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """A flat index's ids (n,) int64 and vectors (n, dim) float32, as stored in it."""
        if self.kind != "flat":
            raise ValueError(f"a {self.kind} index keeps no plain vectors")
        id_map = self.faiss_index
        ids = faiss.vector_to_array(id_map.id_map).astype(np.int64)  # type: ignore[attr-defined]
        inner = faiss.downcast_index(id_map.index)  # type: ignore[attr-defined]
        return ids, inner.reconstruct_n(0, len(ids)).reshape(-1, self.dim)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """ids (n,) int64, vectors (n, dim) float32 with unit norm."""
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected ({len(ids)}, {self.dim}) vectors, got {vectors.shape}")
        self.faiss_index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        self._gpu = None
        if self.journal is not None:
            self.journal.add(ids, vectors)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        if len(ids) == 0:
            return 0
        # faiss's stubs say IDSelector; its Python wrapper takes an id array too
        removed = self.faiss_index.remove_ids(
            np.asarray(ids, dtype=np.int64))  # type: ignore[arg-type]
        self._gpu = None
        if self.journal is not None and removed:
            self.journal.remove(np.asarray(ids, dtype=np.int64))
        return int(removed)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product. queries (q, dim) -> scores (q, k') and ids (q, k').

        k' = min(k, candidates); id -1 marks an empty slot. `allowed` restricts the search to
        those ids (a FAISS IDSelector, evaluated inside the index, not a Python scan).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        candidates = len(self) if allowed is None else min(len(self), len(allowed))
        k = min(k, candidates)
        if k <= 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        if allowed is not None:
            selector = only(allowed)
            params: faiss.SearchParameters
            # faiss's stubs omit the keyword constructors its wrapper provides
            if isinstance(self.faiss_index, faiss.IndexIVF):
                params = faiss.SearchParametersIVF(  # type: ignore[call-arg]
                    sel=selector, nprobe=self.faiss_index.nprobe)
            else:
                params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
            scores, ids = self.faiss_index.search(queries, k, params=params)
        else:
            scores, ids = self._search_index().search(queries, k)
        return scores, ids

    def _search_index(self) -> faiss.Index:
        if faiss.get_num_gpus() == 0:
            return self.faiss_index
        if self._gpu is None:  # untested here (no GPU): an IVF's lists are split among GPUs
            options = faiss.GpuMultipleClonerOptions()
            options.shard = isinstance(self.faiss_index, faiss.IndexIVF)
            self._gpu = faiss.index_cpu_to_all_gpus(self.faiss_index, co=options)
        return self._gpu


def kind_of(index: faiss.Index) -> str:
    """"flat", "ivf" or "ivfpq": which of `index.ann`'s types a FAISS index is."""
    if isinstance(index, faiss.IndexIVFPQ):
        return "ivfpq"
    return "ivf" if isinstance(index, faiss.IndexIVF) else "flat"


def only(ids: np.ndarray) -> faiss.IDSelector:
    """A FAISS IDSelector of `ids` (n,): evaluated inside the index, not a Python scan."""
    return faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))


def _gather(batches: Iterable[Batch], *rows: np.ndarray) -> list[Batch]:
    """For each sorted array of row numbers (positions in the stream of `batches`), the ids
    (r,) and vectors (r, dim) of those rows: one pass, holding only the rows picked."""
    picked: list[list[Batch]] = [[] for _ in rows]
    offset = 0
    for ids, vectors in batches:
        for wanted, found in zip(rows, picked, strict=True):
            lo, hi = np.searchsorted(wanted, [offset, offset + len(ids)])
            local = wanted[lo:hi] - offset
            found.append((np.asarray(ids)[local], np.asarray(vectors, np.float32)[local]))
        offset += len(ids)
    return [(np.concatenate([i for i, _ in found]), np.concatenate([v for _, v in found]))
            for found in picked]
