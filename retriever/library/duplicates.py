"""Groups of near-identical images, from the vectors already stored: `retriever duplicates`.

Two images are near-identical when the cosine of their stored vectors is at least the threshold
(measured on the model and the collection: retriever.library.calibration); FAISS finds those
pairs (`index.neighbours.close_pairs`, a range search). Groups never chain: images are taken
best copy first (most pixels, then largest file, then path), and each image not yet in a group
leads one holding the images still free that are within the threshold of it. So every member
is within the threshold of its group's best copy, which it lists first; a chain a~b~c with a
and c further apart is two groups at most, never one. Files with the same bytes (same content
hash) are grouped whatever their cosine and marked as exact copies. The order is
deterministic. Nothing is deleted or changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from index.kinds import IMAGE
from index.records import ImageFile
from retriever.library.collection import Collection
from retriever.media.paths import folder_key

# The fixed threshold of callers that measure none (MCP without a recorded one, the library's
# default): measured once on retriever-tiny trained on the shape scenes. `retriever duplicates`
# measures its own (retriever.library.calibration; bench/RESULTS.md compares the two).
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
    """Groups of two or more images in the folder `prefix` (all when None; see `folder_key`),
    each a best copy with the images within `threshold` cosine of it or with its bytes (see
    the module docstring); ordered by their best copy's path."""
    from index.neighbours import close_pairs

    folder = folder_key(prefix) if prefix else None
    ids, vectors = collection.reads.vectors(IMAGE, folder)
    by_id = {f.id: f for f in collection.reads.image_files(folder)}
    rows, cols, _ = close_pairs(vectors, threshold)
    near: dict[int, set[int]] = {}  # row -> rows within the threshold
    for a, b in zip(rows.tolist(), cols.tolist(), strict=True):
        near.setdefault(a, set()).add(b)
        near.setdefault(b, set()).add(a)
    same: dict[str, list[int]] = {}  # content hash -> rows with those bytes
    for row, item_id in enumerate(ids.tolist()):
        same.setdefault(by_id[item_id].content_hash, []).append(row)
    taken: set[int] = set()
    groups = []
    for leader in sorted(range(len(ids)), key=lambda r: _rank(by_id[int(ids[r])])):
        if leader in taken:
            continue
        members = _members(leader, near, same, by_id[int(ids[leader])].content_hash, taken)
        taken.update(members)
        if len(members) > 1:
            groups.append(_group([by_id[int(ids[r])] for r in members], vectors[members]))
    return sorted(groups, key=lambda g: g.copies[0].path)


def _members(leader: int, near: dict[int, set[int]], same: dict[str, list[int]],
             content_hash: str, taken: set[int]) -> list[int]:
    """The leader, then the rows not yet in a group that have its bytes or are within the
    threshold of it, in row order."""
    joined = [leader, *same[content_hash], *sorted(near.get(leader, ()))]
    members: dict[int, None] = {}
    for row in joined:
        if row not in taken:
            members[row] = None
    return list(members)


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
