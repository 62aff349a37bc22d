"""Delta files: what changed in a saved IVF index since it was last written whole.

A writer's run that adds 1,000 vectors to a 1M-vector IVF should not rewrite 2 GB. So an IVF
index, once saved whole, is saved incrementally: each run writes one delta file holding only its
changes, and loading applies the deltas in order to the whole file (removals, then additions),
giving one in-memory index again (searched as before); or, for a reader searching the file from
disk (index.ondisk), a small in-memory part beside it. A delta is three arrays, one after the
other in one .npy stream:

    added ids (n,) int64, added vectors (n, dim) float32, removed ids (r,) int64

Ids are never reused (items.id is AUTOINCREMENT), so an id added in one delta is removed only by
a later one. The writer folds the deltas into a new whole file once they are many or large
(`Collection`), and the `<kind>.faiss.json` lists them with their checksums.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from index.checksums import Summing
from retriever.atomic import replacing


class Journal:
    """The changes made to an index since it was saved: vectors added (not removed since)
    and ids removed (that were saved)."""

    def __init__(self) -> None:
        self.added: list[tuple[np.ndarray, np.ndarray]] = []  # (ids (n,), vectors (n, dim))
        self.removed: list[np.ndarray] = []
        self.rows = 0  # vectors added

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.added.append((np.array(ids, dtype=np.int64), np.array(vectors, dtype=np.float32)))
        self.rows += len(ids)

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        fresh = np.concatenate([a for a, _ in self.added]) if self.added else ids[:0]
        if np.isin(ids, fresh).any():  # added since the save: forget them there
            self.added = [(a[~np.isin(a, ids)], v[~np.isin(a, ids)]) for a, v in self.added]
            self.rows = sum(len(a) for a, _ in self.added)
        self.removed.append(ids[~np.isin(ids, fresh)])

    def arrays(self, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """added ids (n,), added vectors (n, dim), removed ids (r,)."""
        if not self.added:
            return np.empty(0, np.int64), np.empty((0, dim), np.float32), self._removed()
        return (np.concatenate([a for a, _ in self.added]),
                np.concatenate([v for _, v in self.added]), self._removed())

    def _removed(self) -> np.ndarray:
        return np.concatenate(self.removed) if self.removed else np.empty(0, np.int64)


def save_delta(path: Path, arrays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> str:
    """Write one delta atomically; returns its checksum."""
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        out = Summing(fh)
        for array in arrays:
            np.save(out, array)  # type: ignore[call-overload]
    return out.checksum


def load_delta(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """added ids (n,), added vectors (n, dim), removed ids (r,) of one delta file."""
    with open(path, "rb") as fh:
        ids, vectors, removed = (np.load(fh) for _ in range(3))
    if ids.ndim != 1 or vectors.shape != (len(ids), dim) or removed.ndim != 1:
        raise ValueError(f"{path}: shapes {ids.shape}, {vectors.shape} do not fit")
    return ids.astype(np.int64), vectors.astype(np.float32), removed.astype(np.int64)
