"""One kind's saved FAISS files in a collection folder, and when they may be trusted.

    <folder>/.retriever/
        images.faiss    IndexIDMap2(IndexFlatIP) over image vectors, ids = items.id (or an
                        IVF, index.ann); texts.faiss, videos.faiss, image-texts.faiss the same
        images.faiss.json   {"generation": g, "count": n, "mirror": bool,
                        "checksums": {file name: "crc32:<8 hex>"}, "deltas": [names],
                        "delta_rows": n, "stamps": {file name: index.checksums.stamp}}
                        of the saved files
        images.faiss.delta1, ...   an IVF's changes since saved whole (index.deltas)
        images.ids.npy, images.vectors.npy     a flat index's vectors again, for searches
                                               without FAISS (index.exact)

The store is the source of truth. Saved files are trusted only if their .faiss.json names the
store's generation and item count now and every file it lists has the bytes it was saved with
(index.checksums); else the index is rebuilt from the stored vectors, streamed in batches.
A file still as its stamp recorded it (same inode, size, mtime and ctime) is checked by its
head alone, the part FAISS parses at open: an IVF searched from disk opens reading ~1% of its
file (bench/RESULTS.md); `verify` (`retriever check`) reads every file whole.
FAISS itself is imported only when an index is loaded, built or saved.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from index.ann import AnnConfig, choose, nlist_for
from index.checksums import checksum, stamp, trusted
from index.exact import ExactIndex, mirror_paths, remove_mirror, save_mirror
from index.kinds import IMAGE, IMAGE_TEXT, TEXT, VIDEO
from retriever.atomic import replacing
from retriever.errors import SmallFileError
from retriever.jsonfile import read_json

if TYPE_CHECKING:
    from index.ondisk import DiskIndex
    from index.reading import StoreReads
    from index.vectors import VectorIndex

VECTOR_FILES = {IMAGE: "images.faiss", TEXT: "texts.faiss", VIDEO: "videos.faiss",
                IMAGE_TEXT: "image-texts.faiss"}
BUILD_BATCH = 10_000  # vectors a rebuild reads from the store at a time (20 MB at 512-d)
# an IVF's changes go into delta files until there are MAX_DELTAS of them or they hold more
# than 1/DELTA_SHARE of its vectors; the next save then writes it whole again
MAX_DELTAS, DELTA_SHARE = 8, 8
HEAD_BLOCK = 1 << 16  # the head checked at open of a large file that is not an IVF: its headers
T = TypeVar("T")


class SavedIndex:
    """`kind`'s FAISS files in `directory`: loaded if current, else rebuilt from `store`;
    saved whole or as a delta of the changes since (an IVF saved before, whose deltas are
    still few and small); searched without loading (`mirror`, `on_disk`)."""

    def __init__(self, directory: Path, kind: str, store: StoreReads, ann: AnnConfig) -> None:
        self.path = directory / VECTOR_FILES[kind]
        self.kind = kind
        self.store = store
        self.ann = ann  # index type policy applied when saved, and whether to search on disk
        self._meta: dict | None = None  # the .faiss.json the loaded (or saved) IVF matches

    def load(self) -> VectorIndex | None:
        """The saved index with its deltas applied, if current and undamaged, else None."""
        loaded = self._current(lambda meta: [self.path.name, *_deltas(meta)],
                               lambda meta: (_load_saved(self.path, meta), meta))
        if loaded is None:
            return None
        index, meta = loaded
        if index.journal is not None:
            self._meta = meta
        return index

    def build(self) -> VectorIndex:
        """The index built from the store, streamed in batches (never all vectors at once),
        as the type the collection's size and `ann` call for."""
        from index.vectors import VectorIndex

        self._meta = None
        record = self.store.model()
        return VectorIndex.from_batches(record.dim if record else 1,
                                        self.store.count_items(self.kind),
                                        lambda: self.store.vector_batches(self.kind, BUILD_BATCH),
                                        self.ann)

    def fitted(self, index: VectorIndex) -> VectorIndex:
        """`index`, or it rebuilt as the type its size calls for (flat -> IVF as a corpus
        grows; IVF retrained once it holds 4x what its centroids were trained for)."""
        n = len(index)
        trained_for = getattr(index.faiss_index, "nlist", 1)
        grown = index.kind != "flat" and nlist_for(n) >= 4 * trained_for
        if choose(n, index.dim, self.ann) == index.kind and not grown:
            return index
        return self.build()

    def save(self, index: VectorIndex, generation: int) -> None:
        """Save `index` (as `fitted` left it), stamped with the store `generation` it mirrors
        and each file's checksum: only what changed since its last save (a delta file) when it
        can, else whole. The .faiss.json is written last: it commits them all."""
        from index.deltas import Journal

        meta = self._save_delta(index) or self._save_whole(index)
        meta = {"generation": generation, "count": len(index), **meta}
        with replacing(self.path.with_name(f"{self.path.name}.json")) as tmp:
            Path(tmp).write_text(json.dumps(meta))
        for old in set(_delta_files(self.path)) - set(meta["deltas"]):
            self.path.with_name(old).unlink(missing_ok=True)
        if index.kind != "flat":
            self._meta, index.journal = meta, Journal()

    def trim_journal(self, index: VectorIndex) -> None:
        """Past a whole save's worth of changes, `index` keeps none in memory: the next save
        writes it whole anyway."""
        if index.journal is not None and index.journal.rows * DELTA_SHARE > len(index):
            index.journal = None

    def is_current(self) -> bool:
        """Whether every file saved is current and undamaged (read, not loaded)."""
        def files(meta: dict) -> list[str]:
            mirror = [p.name for p in mirror_paths(self.path)] if meta.get("mirror") else []
            return [self.path.name, *mirror, *_deltas(meta)]

        return self._current(files, lambda meta: True) is not None

    def mirror(self) -> ExactIndex | None:
        """A flat index's saved vectors, memory-mapped (no FAISS), if current and undamaged."""
        return self._current(lambda meta: [p.name for p in mirror_paths(self.path)],
                             lambda meta: ExactIndex.load(self.path))

    def on_disk(self) -> DiskIndex | None:
        """The saved IVF and deltas, searched from disk, if `ann.on_disk` wants it (asked
        before any file is read) and they are current."""
        from index.ondisk import DiskIndex, wanted

        if not wanted(self.path, self.ann.on_disk):
            return None

        def load(meta: dict) -> DiskIndex | None:
            if meta.get("mirror"):  # a flat index whose mirror is damaged: loaded in memory
                return None
            return DiskIndex.load(self.path, [self.path.with_name(name) for name in _deltas(meta)],
                                  int(meta["count"]))

        return self._current(lambda meta: [self.path.name, *_deltas(meta)], load)

    def verify(self, restamp: bool = True) -> list[Finding]:
        """Every file this kind's .faiss.json lists, read whole against its checksum
        (`retriever check`): what is damaged or stale, [] when sound or nothing was saved.
        With `restamp` (the writer's lock held), sound files whose stat no longer matches
        their stamp (copied, restored, chmod) are stamped again: readers stop reading them
        whole."""
        meta_path = self.path.with_name(f"{self.path.name}.json")
        try:
            meta = read_json(meta_path)
            if not isinstance(meta, dict) or not isinstance(meta.get("checksums"), dict):
                raise ValueError("not a .faiss.json of retriever's")
            names = [self.path.name, *_deltas(meta), *(
                [p.name for p in mirror_paths(self.path)] if meta.get("mirror") else [])]
        except FileNotFoundError:
            return [] if self.store.count_items(self.kind) == 0 else [
                Finding(meta_path, "missing")]
        except (OSError, ValueError, SmallFileError) as error:
            return [Finding(meta_path, f"damaged ({error})")]
        found = [Finding(self.path.with_name(n), problem)
                 for n in names if (problem := _whole(self.path.with_name(n), meta))]
        if meta.get("generation") != self.store.generation() \
                or meta.get("count") != self.store.count_items(self.kind):
            found.append(Finding(meta_path, "stale: saved before the store's last change"))
        if not found and restamp:
            self._restamp(meta, names)
        return found

    def _restamp(self, meta: dict, names: list[str]) -> None:
        """Stamp again the files of `meta` (all read whole and sound) whose stat changed."""
        stamps = meta.get("stamps")
        stamps = stamps if isinstance(stamps, dict) else {}
        fresh = {n: stamp(self.path.with_name(n), self._head(meta) if n == self.path.name
                          else HEAD_BLOCK) for n in names}
        if fresh != {n: stamps.get(n) for n in names}:
            meta["stamps"] = fresh
            with replacing(self.path.with_name(f"{self.path.name}.json")) as tmp:
                Path(tmp).write_text(json.dumps(meta))

    def _head(self, meta: dict) -> int:
        """Bytes opening the saved FAISS file parses: an IVF's all but its lists."""
        from index.ondisk import lists_start

        if meta.get("mirror"):  # a flat index: saved with its mirror, loaded whole
            return HEAD_BLOCK
        try:
            return lists_start(self.path)
        except (ValueError, RuntimeError):  # not an IVF after all
            return HEAD_BLOCK

    def remove(self) -> None:
        """Delete every file saved for this kind (the store was cleared)."""
        for path in (self.path, self.path.with_name(f"{self.path.name}.json")):
            path.unlink(missing_ok=True)
        for delta in _delta_files(self.path):
            self.path.with_name(delta).unlink(missing_ok=True)
        remove_mirror(self.path)
        self._meta = None

    def _save_whole(self, index: VectorIndex) -> dict:
        checksums = {self.path.name: index.save(self.path)}
        mirror = index.kind == "flat"
        if mirror:
            checksums.update(save_mirror(self.path, *index.flat_arrays()))
        else:
            remove_mirror(self.path)
        stamps = {name: _stamp(index, self.path.with_name(name)) for name in checksums}
        return {"mirror": mirror, "checksums": checksums, "deltas": [], "delta_rows": 0,
                "stamps": stamps}

    def _save_delta(self, index: VectorIndex) -> dict | None:
        """The saved files plus one delta of the changes since, or None: save it whole."""
        from index.deltas import save_delta

        saved, journal = self._meta, index.journal
        if saved is None or journal is None:
            return None
        deltas, rows = _deltas(saved), int(saved.get("delta_rows", 0)) + journal.rows
        if len(deltas) >= MAX_DELTAS or rows * DELTA_SHARE > len(index):
            return None
        checksums = dict(saved["checksums"])
        stamps = saved.get("stamps")  # kept: those files are as loaded (and checked) then
        stamps = {n: s for n, s in stamps.items() if n in checksums} \
            if isinstance(stamps, dict) else {}
        added, added_vectors, removed = journal.arrays(index.dim)
        if len(added) or len(removed):
            name = f"{self.path.name}.delta{len(deltas) + 1}"
            checksums[name] = save_delta(self.path.with_name(name),
                                         (added, added_vectors, removed))
            stamps[name] = stamp(self.path.with_name(name), HEAD_BLOCK)
            deltas.append(name)
        return {"mirror": False, "checksums": checksums, "deltas": deltas, "delta_rows": rows,
                "stamps": stamps}

    def _current(self, files: Callable[[dict], list[str]], load: Callable[[dict], T]
                 ) -> T | None:
        """What `load(meta)` reads of the saved index, if it mirrors the store as it is now
        (same generation, same count) and the `files(meta)` it reads are the bytes saved
        (their checksums match), else None."""
        try:
            meta = read_json(self.path.with_name(f"{self.path.name}.json"))
            if not isinstance(meta, dict) or meta.get("generation") != self.store.generation() \
                    or meta.get("count") != self.store.count_items(self.kind):
                return None
            checksums = meta.get("checksums")  # none: saved before checksums, not trusted
            stamps = meta.get("stamps")  # none: saved before stamps, read whole
            if not isinstance(checksums, dict):
                return None
            stamps = stamps if isinstance(stamps, dict) else {}
            with ExitStack() as checked:
                for name in files(meta):
                    checked.enter_context(trusted(self.path.with_name(name),
                                                  checksums.get(name), stamps.get(name)))
                return load(meta)
        except (OSError, ValueError, RuntimeError, SmallFileError):  # missing, torn, damaged
            return None  # rebuilt from the store


@dataclass(frozen=True)
class Finding:
    """A saved file `retriever check` found wrong: its path and what (damaged, missing, stale)."""

    path: Path
    problem: str


def _whole(path: Path, meta: dict) -> str | None:
    """What is wrong with `path` read whole against its checksum in `meta`, else None."""
    expected = meta["checksums"].get(path.name)
    try:
        found = checksum(path)
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return f"unreadable ({error.strerror})"
    if expected is None:
        return "no checksum recorded"
    return None if found == expected else f"damaged (checksum {found}, saved as {expected})"


def _stamp(index: VectorIndex, path: Path) -> dict:
    return stamp(path, _head_of(index, path))


def _head_of(index: VectorIndex, path: Path) -> int:
    """Bytes a reader parses at open of `path`, just saved for `index`: of an IVF file, all
    but its inverted lists (each vector's code and id, at the end: mapped by index.ondisk);
    of another, its first block (npy and FAISS headers; small files are checked whole)."""
    if index.kind == "flat" or not path.name.endswith(".faiss"):
        return HEAD_BLOCK
    lists = len(index) * (int(index.faiss_index.code_size) + 8)  # type: ignore[attr-defined]
    return path.stat().st_size - lists


def _load_saved(path: Path, meta: dict) -> VectorIndex:
    """A saved index with its delta files applied in order; an IVF then records its changes
    for the next incremental save."""
    from index.deltas import Journal, load_delta
    from index.vectors import VectorIndex

    index = VectorIndex.load(path)
    for name in _deltas(meta):
        added, vectors, removed = load_delta(path.with_name(name), index.dim)
        index.remove(removed)
        index.add(added, vectors)
    if index.kind != "flat" and "deltas" in meta:
        index.journal = Journal()
    return index


def _deltas(meta: dict) -> list[str]:
    """The delta files a .faiss.json lists, in order (ValueError: a damaged list)."""
    deltas = meta.get("deltas", [])
    if not isinstance(deltas, list) or not all(isinstance(d, str) for d in deltas):
        raise ValueError(f"deltas {deltas!r} are not a list of file names")
    return deltas


def _delta_files(path: Path) -> list[str]:
    """Names of the delta files beside `path` (images.faiss.delta1, ...), saved or stale."""
    return [p.name for p in path.parent.glob(f"{path.name}.delta*") if p.name[-1].isdigit()]
