"""Groups of near-identical images, from the vectors already stored: `retriever duplicates`.

Two images are near-identical when the cosine of their stored vectors is at least the threshold;
FAISS finds those pairs (`index.neighbours.close_pairs`, a range search), and a group is a
connected set of such pairs (union-find), so a chain a~b~c is one group even if a and c are
further apart. Files with the same bytes (same content hash) are grouped whatever their cosine
and marked as exact copies. Each group lists its best copy first: most pixels, then largest
file, then path. Nothing is deleted or changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from index.kinds import IMAGE
from index.records import ImageFile
from retriever.library.collection import Collection
from retriever.media.paths import folder_key

# Measured on retriever-tiny trained on the shape scenes (bench/duplicates.py, bench/RESULTS.md):
# the lowest threshold with pair precision >= 0.95 on both picture sets (0.976 and 1.0). It finds
# every resized, re-encoded and byte-identical copy there; that model moves crops and brightness
# changes further (it encodes place and colour), so other models may want --threshold.
DEFAULT_THRESHOLD = 0.99


@dataclass(frozen=True)
class Copy:
    id: int  # item id
    path: str
    size: int  # bytes
    width: int | None
    height: int | None
    score: float  # cosine to the group's best copy (1.0 for the best copy itself)
    same_bytes_as: str | None  # path of an earlier copy in the group with identical bytes

    def to_json(self) -> dict:
        return {"id": self.id, "path": self.path, "size": self.size, "width": self.width,
                "height": self.height, "score": round(self.score, 6),
                "same_bytes_as": self.same_bytes_as}


@dataclass(frozen=True)
class Group:
    copies: tuple[Copy, ...]  # best first

    def to_json(self) -> dict:
        return {"copies": [c.to_json() for c in self.copies]}


def find_duplicates(collection: Collection, threshold: float = DEFAULT_THRESHOLD,
                    prefix: str | None = None) -> list[Group]:
    """Groups of two or more images in the folder `prefix` (all when None; see `folder_key`)
    whose vectors are within `threshold` cosine of each other (chained) or whose bytes are
    identical; ordered by their best copy's path."""
    from index.neighbours import close_pairs

    folder = folder_key(prefix) if prefix else None
    ids, vectors = collection.reads.vectors(IMAGE, folder)
    files = {f.id: f for f in collection.reads.image_files(folder)}
    rows, cols, _ = close_pairs(vectors, threshold)
    parent = np.arange(len(ids))
    for a, b in zip(rows.tolist(), cols.tolist(), strict=True):
        _union(parent, a, b)
    first_with_hash: dict[str, int] = {}
    for row, item_id in enumerate(ids.tolist()):
        other = first_with_hash.setdefault(files[item_id].content_hash, row)
        _union(parent, other, row)
    members: dict[int, list[int]] = {}
    for row in range(len(ids)):
        members.setdefault(_root(parent, row), []).append(row)
    groups = [_group([files[int(ids[r])] for r in rs], vectors[rs])
              for rs in members.values() if len(rs) > 1]
    return sorted(groups, key=lambda g: g.copies[0].path)


def _group(files: Sequence[ImageFile], vectors: np.ndarray) -> Group:
    order = sorted(range(len(files)), key=lambda i: _rank(files[i]))
    best = vectors[order[0]]
    scores = vectors[order] @ best  # (members,)
    seen: dict[str, str] = {}
    copies = []
    for i, score in zip(order, scores.tolist(), strict=True):
        f = files[i]
        copies.append(Copy(f.id, f.path, f.size, f.width, f.height, float(score),
                           seen.get(f.content_hash)))
        seen.setdefault(f.content_hash, f.path)
    return Group(tuple(copies))


def _rank(f: ImageFile) -> tuple[int, int, str]:
    """Best copy first: most pixels, then the largest file, then the path."""
    return -(f.width or 0) * (f.height or 0), -f.size, f.path


def _root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = int(parent[i])
    return i


def _union(parent: np.ndarray, a: int, b: int) -> None:
    ra, rb = _root(parent, a), _root(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)
