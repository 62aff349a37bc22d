"""Clustered unit vectors and the store rows that hold them, for the vector-index tests."""

from __future__ import annotations

import numpy as np

from index.store import IMAGE, FileRecord, ItemRecord

DIM = 32


def clustered(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """(n, dim) float32 unit vectors around 50 fixed centres (the same centres for every seed),
    so an IVF has lists worth probing and nearest neighbours are not ties."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(50, dim))
    x = centres[rng.integers(0, 50, n)] + rng.normal(scale=0.7, size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def files(vectors: np.ndarray, start: int = 0, tag: str = "") -> list:
    """One image file a vector, /m/<start + i>.jpg, its hash `tag` + its number."""
    return [(FileRecord(f"/m/{start + i}.jpg", IMAGE, f"{tag}{start + i}", 1, 1.0),
             [ItemRecord(IMAGE, 0, None, v)]) for i, v in enumerate(vectors)]
