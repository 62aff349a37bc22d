"""Exact search without FAISS, over a memory-mapped copy of a flat index's vectors.

A flat (exact) FAISS index is a plain matrix, so the writer also saves it as two .npy files:

    images.ids.npy      (n,) int64     item ids
    images.vectors.npy  (n, dim) float32 unit vectors, row i for ids[i]

A one-off CLI query searches those with one matrix product instead of importing FAISS, whose
GPU build costs ~0.3 s and ~190 MB of a cold query (bench/RESULTS.md). Scores and ids equal
`VectorIndex.search` on the flat index (tested); ties may come out in another order. On a
machine with a GPU, readers use FAISS (on the GPU) instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from index.checksums import Summing
from retriever.atomic import replacing


def mirror_paths(index_path: Path) -> tuple[Path, Path]:
    """images.faiss -> (images.ids.npy, images.vectors.npy)"""
    stem = index_path.name.split(".")[0]
    return index_path.with_name(f"{stem}.ids.npy"), index_path.with_name(f"{stem}.vectors.npy")


def save_mirror(index_path: Path, ids: np.ndarray, vectors: np.ndarray) -> dict[str, str]:
    """Write both files atomically; returns {file name: checksum}."""
    sums = {}
    for path, array in zip(mirror_paths(index_path), (ids, vectors), strict=True):
        with replacing(path) as tmp, open(tmp, "wb") as fh:
            out = Summing(fh)
            np.save(out, array)  # type: ignore[call-overload]
        sums[path.name] = out.checksum
    return sums


def remove_mirror(index_path: Path) -> None:
    for path in mirror_paths(index_path):
        path.unlink(missing_ok=True)


class ExactIndex:
    """Read-only exact inner-product search; the `search` of `index.vectors.VectorIndex`."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.ids = ids  # (n,) int64
        self.vectors = vectors  # (n, dim) float32
        self.dim = int(vectors.shape[1])
        self.kind = "flat"

    @classmethod
    def load(cls, index_path: Path) -> ExactIndex:
        ids_path, vectors_path = mirror_paths(index_path)
        ids = np.load(ids_path, mmap_mode="r")
        vectors = np.load(vectors_path, mmap_mode="r")
        if ids.ndim != 1 or vectors.ndim != 2 or len(ids) != len(vectors):
            raise ValueError(f"{vectors_path}: shape {vectors.shape} does not fit {ids.shape}")
        return cls(ids, vectors)

    def __len__(self) -> int:
        return len(self.ids)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries (q, dim) -> scores (q, k') and ids (q, k'), k' = min(k, candidates)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        rows = np.arange(len(self.ids)) if allowed is None else \
            np.flatnonzero(np.isin(self.ids, allowed))
        k = min(k, len(rows))
        if k <= 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        vectors = self.vectors if allowed is None else self.vectors[rows]
        scores = queries @ vectors.T  # (q, candidates)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        best = np.take_along_axis(top, order, axis=1)  # (q, k) rows of `vectors`
        return (np.take_along_axis(top_scores, order, axis=1).astype(np.float32),
                np.asarray(self.ids)[rows[best]].astype(np.int64))
