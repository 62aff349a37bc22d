"""A saved IVF index searched from disk: its inverted lists memory-mapped, never read into RAM.

A saved IVF or IVF-PQ file (index.vectors) opened with FAISS's IO_FLAG_MMAP reads into memory
only its header, coarse centroids (nlist x dim float32) and PQ codebooks; its inverted lists
(codes and ids: all but a few MB of the file) become OnDiskInvertedLists over a read-only mmap
of the file itself, paged in by the queries that probe them and dropped again by the kernel
when memory is short. No second file is written: what the writer saved is what is searched.

The delta files saved since (index.deltas) are the small part kept in memory: an empty IVF
with the same trained centroids and PQ (read from the same file, its lists replaced by empty
in-memory ones) takes the vectors added since, and the saved ids removed since are skipped in
the mapped part by an IDSelector inside FAISS. A search quantises the queries once, asks both
parts for their top k in the same nprobe lists, and keeps the best k of the two ("shards merged
at query time"). That is exactly the whole index loaded with its deltas applied: the same
lists probed, the same codes scored, so the union of the two is the one index's candidates.
Only ties may come out in another order. Opening reads only the file's head (header,
centroids, list sizes: `lists_start`), checked against the CRC-32 the writer stamped it with
(index.checksums), while the file's stat still matches that stamp; else it is read whole once
against its checksum. A damaged file is rebuilt from the store as before; `retriever check`
reads the lists too.

When: `AnnConfig.on_disk` ($RETRIEVER_INDEX_ON_DISK): yes, no, or auto, on disk once the saved
file is over ON_DISK_SHARE of the memory available (bench/RESULTS.md, "Scale: an IVF searched
from disk").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.ann import ENV_ON_DISK, ON_DISK
from index.deltas import load_delta
from index.vectors import kind_of, only
from retriever.errors import UsageError

# auto: on disk once the saved file is over this share of the memory available. A reader that
# loads it takes 1.6x its size (a 2.1 GB IVF-Flat and its 1% delta: 3.2 GB private, measured),
# and the page cache wants room too; from disk, warm queries take ~0.15 ms more and the first
# ones read their lists from the disk (bench/RESULTS.md)
ON_DISK_SHARE = 0.25


class DiskIndex:
    """Read-only search of a saved IVF (mapped) and its deltas (in memory); the `search` and
    `len` of `VectorIndex` loaded from the same files."""

    def __init__(self, saved: faiss.IndexIVF, added: faiss.IndexIVF, removed: np.ndarray,
                 count: int) -> None:
        self.saved = saved  # lists on disk; ntotal counts the removed ids too
        self.added = added  # vectors added since saved (and not removed since), in memory
        self.removed = removed  # (r,) int64 sorted: ids removed since saved
        self.dim = int(saved.d)
        self.kind = kind_of(saved)
        self._count = count
        self._nprobe = min(saved.nprobe, saved.nlist)  # as IndexIVF.search clamps it
        skip = None if len(removed) == 0 else faiss.IDSelectorNot(only(removed))
        self._unrestricted = (_params(skip, self._nprobe), _params(None, self._nprobe))

    @classmethod
    def load(cls, path: Path, deltas: Sequence[Path], count: int) -> DiskIndex:
        """`path`'s IVF mapped from disk with `deltas` applied in order; `count`: the vectors
        they hold together, as their .faiss.json records it (counting the saved ids removed
        would read every list's ids from the disk). ValueError: `path` holds no IVF, a delta
        does not fit it, or `count` cannot be theirs."""
        saved, added = _mapped(path), _emptied(_mapped(path))
        removed = []
        for delta in deltas:  # as `Collection` applies them to a loaded index: removals first
            ids, vectors, gone = load_delta(delta, int(saved.d))
            # faiss's stubs say IDSelector; its Python wrapper takes an id array too
            added.remove_ids(gone)  # type: ignore[arg-type]
            removed.append(gone)
            added.add_with_ids(vectors, ids)
        gone = np.unique(np.concatenate(removed)) if removed else np.empty(0, np.int64)
        most = saved.ntotal + added.ntotal  # every removed id was another kind's, or added
        if not most - len(gone) <= count <= most:
            raise ValueError(f"{path}: {count} vectors recorded, its files hold "
                             f"{most - len(gone)} to {most}")
        return cls(saved, added, gone, count)

    def __len__(self) -> int:
        return self._count

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product. queries (q, dim) -> scores (q, k') and ids (q, k'),
        k' = min(k, candidates), id -1 in an empty slot; `allowed` restricts the ids."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = min(k, len(self) if allowed is None else min(len(self), len(allowed)))
        if k <= 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        params = self._unrestricted
        if allowed is not None:
            allowed = np.asarray(allowed, np.int64)
            params = (_params(only(np.setdiff1d(allowed, self.removed)), self._nprobe),
                      _params(only(allowed), self._nprobe))
        # both parts probe the same lists: the query is quantised once, as one index would
        coarse = self.saved.quantizer.search(queries, self._nprobe)  # scores, lists (q, nprobe)
        scores, ids = _probed(self.saved, queries, k, coarse, params[0])
        if self.added.ntotal == 0:
            return scores, ids
        more_scores, more_ids = _probed(self.added, queries, k, coarse, params[1])
        return _best(np.concatenate([scores, more_scores], axis=1),
                     np.concatenate([ids, more_ids], axis=1), k)


def _params(selector: faiss.IDSelector | None, nprobe: int) -> faiss.SearchParametersIVF:
    # faiss's stubs omit the keyword constructor its wrapper provides (which keeps `selector`)
    return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)  # type: ignore[call-arg]


def _probed(index: faiss.IndexIVF, queries: np.ndarray, k: int,
            coarse: tuple[np.ndarray, np.ndarray], params: faiss.SearchParametersIVF
            ) -> tuple[np.ndarray, np.ndarray]:
    """`index`'s top-k of queries (q, dim) in the lists `coarse` (centroid scores, list
    numbers: each (q, nprobe)) names, among the ids `params.sel` takes (all if None)."""
    coarse_scores, lists = coarse
    scores = np.empty((len(queries), k), np.float32)
    ids = np.empty((len(queries), k), np.int64)
    ptr = faiss.swig_ptr
    # the C++ call: faiss's Python wrapper of search_preassigned refuses search parameters
    index.search_preassigned_c(  # type: ignore[attr-defined]
        len(queries), ptr(queries), k, ptr(lists), ptr(coarse_scores), ptr(scores), ptr(ids),
        False, params)
    return scores, ids


def _mapped(path: Path) -> faiss.IndexIVF:
    """The IVF saved in `path`, its lists mapped read-only (ValueError: not an IVF)."""
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    if not isinstance(index, faiss.IndexIVF):
        raise ValueError(f"{path}: a {kind_of(index)} index has no lists to map")
    return index


def lists_start(path: Path) -> int:
    """Where the inverted lists of the IVF saved in `path` begin: the bytes before them are
    what opening it reads (index.checksums' head). ValueError: not an IVF."""
    index = _mapped(path)  # kept alive while its lists are read
    # mapped lists are OnDiskInvertedLists (faiss's stubs know neither it nor `lists`)
    lists: Any = faiss.downcast_InvertedLists(index.invlists)  # type: ignore[arg-type]
    return int(lists.lists.at(0).offset) if lists.nlist else path.stat().st_size


def _emptied(index: faiss.IndexIVF) -> faiss.IndexIVF:
    """`index` (trained centroids, PQ) with empty in-memory lists instead of its own."""
    lists = faiss.ArrayInvertedLists(index.nlist, index.code_size)
    index.replace_invlists(lists, True)  # its mapped lists are unmapped
    # the index owns `lists` now; faiss's wrapper (and its stubs) leave that to us
    lists.thisown = False  # type: ignore[attr-defined]
    index.ntotal = 0
    return index


def _best(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row of scores (q, m) and ids (q, m); empty slots (id -1) last."""
    ranked = np.where(ids < 0, -np.inf, scores)
    order = np.argsort(-ranked, axis=1, kind="stable")[:, :k]  # (q, k)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def wanted(path: Path, setting: str) -> bool:
    """Whether readers should search the index saved in `path` from disk (`AnnConfig.on_disk`:
    yes, no, auto = once the file is over ON_DISK_SHARE of the memory available; its deltas,
    at most an eighth of its vectors, are left out of the sum)."""
    if setting not in ON_DISK:
        raise UsageError(f"${ENV_ON_DISK} {setting!r}: use one of {', '.join(ON_DISK)}")
    if setting != "auto":
        return setting == "yes"
    available = available_memory()
    try:
        size = path.stat().st_size
    except OSError:  # missing: rebuilt from the store, in memory, either way
        return False
    return available is not None and size > ON_DISK_SHARE * available


def available_memory() -> int | None:
    """Bytes of memory this process could still take: /proc/meminfo's MemAvailable, less under
    a cgroup v2 limit (a container); None where neither can be read (not Linux)."""
    try:
        found = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    if found is None:
        return None
    available = int(found.group(1)) * 1024
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available
