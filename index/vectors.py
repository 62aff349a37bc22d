"""The vector index: FAISS inner product over unit vectors, ids = store item ids.

One `VectorIndex` per modality. Small corpora get `IndexIDMap2(IndexFlatIP)` (exact cosine);
large ones IVF or IVF-PQ (see `index.ann`), whose tuned `nprobe` is stored in the FAISS file.
All map ids to the store's item ids and remove by id. When FAISS sees a GPU, searches run on
a GPU clone. Files are written atomically (temp file, then rename).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from index.ann import AnnConfig, build, choose, tune_nprobe
from index.atomic import replacing
from index.checksums import Summing


class VectorIndex:
    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._gpu: faiss.Index | None = None  # search-side clone, dropped on every change

    @classmethod
    def from_vectors(
        cls, dim: int, ids: np.ndarray, vectors: np.ndarray, ann: AnnConfig | None = None
    ) -> VectorIndex:
        """An index over `vectors` (n, dim) under `ids` (n,); exact unless `ann` says otherwise."""
        ann = ann or AnnConfig(kind="flat")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
        built = cls(dim, build(choose(len(ids), dim, ann), dim, vectors))
        built.add(ids, vectors)
        if isinstance(built.index, faiss.IndexIVF):
            built.index.nprobe = tune_nprobe(built.index, ids, vectors, ann.recall_target)
        return built

    @property
    def kind(self) -> str:
        if isinstance(self.index, faiss.IndexIVFPQ):
            return "ivfpq"
        return "ivf" if isinstance(self.index, faiss.IndexIVF) else "flat"

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
            faiss.write_index(self.index, writer)
        return out.checksum

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def flat_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """A flat index's ids (n,) int64 and vectors (n, dim) float32, as stored in it."""
        if self.kind != "flat":
            raise ValueError(f"a {self.kind} index keeps no plain vectors")
        index = self.index
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)  # type: ignore[attr-defined]
        inner = faiss.downcast_index(index.index)  # type: ignore[attr-defined]
        return ids, inner.reconstruct_n(0, len(ids)).reshape(-1, self.dim)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """ids (n,) int64, vectors (n, dim) float32 with unit norm."""
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected ({len(ids)}, {self.dim}) vectors, got {vectors.shape}")
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        self._gpu = None

    def remove(self, ids: np.ndarray | list[int]) -> int:
        if len(ids) == 0:
            return 0
        # faiss's stubs say IDSelector; its Python wrapper takes an id array too
        removed = self.index.remove_ids(np.asarray(ids, dtype=np.int64))  # type: ignore[arg-type]
        self._gpu = None
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
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            params: faiss.SearchParameters
            # faiss's stubs omit the keyword constructors its wrapper provides
            if isinstance(self.index, faiss.IndexIVF):
                params = faiss.SearchParametersIVF(  # type: ignore[call-arg]
                    sel=selector, nprobe=self.index.nprobe)
            else:
                params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
            scores, ids = self.index.search(queries, k, params=params)
        else:
            scores, ids = self._search_index().search(queries, k)
        return scores, ids

    def _search_index(self) -> faiss.Index:
        if faiss.get_num_gpus() == 0:
            return self.index
        if self._gpu is None:
            self._gpu = faiss.index_cpu_to_all_gpus(self.index)
        return self._gpu
