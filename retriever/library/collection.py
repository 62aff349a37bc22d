"""A collection on disk: the metadata store plus one FAISS index per modality.

    <folder>/.retriever/
        store.db        SQLite: files, items, vectors (float32 blobs), the model, migrations
        images.faiss    IndexIDMap2(IndexFlatIP) over image vectors, ids = items.id
        texts.faiss     the same over text-passage vectors
        videos.faiss    the same over video frames; image-texts.faiss over OCR text of images

        images.faiss.json / texts.faiss.json   {"generation": g, "count": n, "mirror": bool,
                        "checksums": {file name: "crc32:<8 hex>"}, "deltas": [names],
                        "delta_rows": n} of the saved files
        images.faiss.delta1, ...   an IVF's changes since saved whole (index.deltas)
        images.ids.npy, images.vectors.npy     a flat index's vectors again, for searches
                                               without FAISS (index.exact); same for texts
        write.lock      held (flock) by the one process writing (SQLite stores)

The store may instead be a PostgreSQL database (`store_url`): it then holds what store.db would,
the folder keeps the FAISS files and thumbnails, and the writer's lock is an advisory lock in
the database, so writers on other machines are kept out too.

The store is the source of truth. Every store write bumps its generation; a FAISS file saved at
another generation than the store's (a run killed before saving, or still running), missing,
unreadable, or whose bytes differ from its checksum (damaged on disk; or saved before checksums
were), is rebuilt from the stored vectors when opened, and the writer's next run saves it again.
A folder the user cannot write is opened read-only: searches work (a rebuild stays in memory),
writes raise `IndexReadOnly`, and nothing is created in it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from index.ann import AnnConfig, choose, nlist_for
from index.checksums import verified
from index.exact import ExactIndex, mirror_paths, remove_mirror, save_mirror
from index.store import (
    IMAGE,
    IMAGE_TEXT,
    KINDS,
    TEXT,
    VIDEO,
    Counts,
    FailureRecord,
    FileRecord,
    ImageFile,
    ItemRecord,
    ItemView,
    ModelRecord,
    RunRecord,
    Store,
    TagRecord,
    open_store,
    read_only_message,
)
from retriever.atomic import replacing
from retriever.devices import gpu_visible
from retriever.errors import (
    BadStoreUrl,
    DiskFull,
    IndexBusy,
    IndexReadOnly,
    ModelMismatch,
    SmallFileError,
    UsageError,
)
from retriever.jsonfile import read_json
from retriever.library.locations import ENV_STORE_URL, STORE_FILE

if TYPE_CHECKING:  # FAISS loads only when an index is written or an ANN index searched
    import numpy as np

    from index.ondisk import DiskIndex
    from index.vectors import VectorIndex

VECTOR_FILES = {IMAGE: "images.faiss", TEXT: "texts.faiss", VIDEO: "videos.faiss",
                IMAGE_TEXT: "image-texts.faiss"}
LOCK_FILE = "write.lock"
THUMBS_DIRNAME = "thumbs"  # retriever.library.thumbnails' cache
T = TypeVar("T")
BUILD_BATCH = 10_000  # vectors a rebuild reads from the store at a time (20 MB at 512-d)
# an IVF's changes go into delta files until there are MAX_DELTAS of them or they hold more
# than 1/DELTA_SHARE of its vectors; the next save then writes it whole again
MAX_DELTAS, DELTA_SHARE = 8, 8


class Collection:
    def __init__(self, directory: Path, store: Store, ann: AnnConfig | None = None) -> None:
        self.directory = directory
        self.store = store
        self.ann = ann or AnnConfig()  # index type policy applied when the writer saves
        self._vectors: dict[str, VectorIndex] = {}
        # what a reader searches (searcher): flat copies, IVFs searched from disk
        self._readers: dict[str, ExactIndex | DiskIndex] = {}
        self.rebuilt: list[str] = []  # kinds whose FAISS file was stale and rebuilt from store
        self._saved: dict[str, dict] = {}  # kind -> the .faiss.json its loaded index matches
        # nothing may be written: no lock, no saved index, no thumbnail cache
        self.read_only = store.read_only

    @classmethod
    def open(cls, directory: Path, ann: AnnConfig | None = None,
             store_url: str | None = None, reading: bool = False) -> Collection:
        """The collection in `directory`, created if missing, its store at `store_url` (else
        $RETRIEVER_STORE_URL, else `directory`/store.db). One the user cannot write is opened
        read-only (see the module docstring). `reading`: the caller only reads (a one-off
        search): a current SQLite store is then read without SQLAlchemy (`open_store`)."""
        if not directory.is_dir():
            with _file_errors(directory):
                directory.mkdir(parents=True)
        given = store_url or os.environ.get(ENV_STORE_URL)
        try:
            store = open_store(given or f"sqlite:///{directory / STORE_FILE}",
                               read_only=not _writable(directory), reading=reading)
        except BadStoreUrl as err:
            if not given:
                raise
            raise BadStoreUrl(f"store URL {err.url!r} (--store, ${ENV_STORE_URL}): {err.reason}",
                              err.url, err.reason) from None
        return cls(directory, store, ann)

    def reopen(self) -> Collection:
        """This collection opened afresh: what another process wrote since, nothing cached."""
        return Collection.open(self.directory, self.ann, self.store.url)

    def close(self) -> None:
        self.store.close()

    def model(self) -> ModelRecord | None:
        return self.store.model()

    # --- reading, for search, the server and `info` (nothing outside index/ and
    # retriever/library/ touches the store itself) -------------------------------------------

    def generation(self) -> int:
        """Bumped by every write: a reader that saw another one is looking at older data."""
        return self.store.generation()

    def counts(self) -> Counts:
        return self.store.counts()

    def items(self, ids: Sequence[int]) -> dict[int, ItemView]:
        """What search results show of each item id (those still stored)."""
        return self.store.items(ids)

    def caption_owners(self, text_paths: Sequence[str]) -> dict[str, int]:
        """Text path -> image item id, for text files that are an indexed image's sidecar
        caption (`photo.txt` beside `photo.jpg`: the scan's rule, `media.scan`)."""
        from retriever.media.images import IMAGE_SUFFIXES

        candidates: dict[str, str] = {}
        for text in text_paths:
            stem = os.path.splitext(text)[0]
            for suffix in IMAGE_SUFFIXES:
                candidates[stem + suffix] = candidates[stem + suffix.upper()] = text
        found = self.store.image_items_at(list(candidates)) if candidates else {}
        return {candidates[path]: item_id for path, item_id in found.items()}

    def recent_images(self, limit: int) -> list[int]:
        """The newest image items (EXIF date, else mtime), newest first."""
        return self.store.recent_images(limit)

    def holds(self, kind: str) -> bool:
        """Whether any item of `kind` is stored."""
        return self.store.has_items(kind)

    def item_vector(self, item_id: int) -> tuple[str, np.ndarray] | None:
        """(kind, (dim,) unit vector) of one stored item, or None."""
        return self.store.item_vector(item_id)

    def ids_where(self, kind: str, prefix: str | None = None, after: float | None = None,
                  before: float | None = None, tag: str | None = None) -> np.ndarray:
        """Ids (n,) int64 of `kind` items under path `prefix`, taken in [after, before),
        tagged `tag` (by `retriever tag`)."""
        return self.store.item_ids_where(kind, prefix, after, before, tag)

    def image_vectors(self, prefix: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The stored image vectors under path `prefix`: ids (n,) int64, vectors (n, dim)."""
        return self.store.vectors(IMAGE, prefix)

    def image_files(self, prefix: str | None = None) -> list[ImageFile]:
        """Image items under path `prefix` with their files' size, dimensions and hash."""
        return self.store.image_files(prefix)

    def tags(self, ids: Sequence[int]) -> dict[int, list[str]]:
        """item id -> its tags, sorted (items without any are left out)."""
        return self.store.tags(ids)

    def replace_tags(self, label_set: str, item_ids: Sequence[int],
                     tags: Sequence[TagRecord]) -> None:
        """`label_set`'s tags of `item_ids` become `tags` (one transaction). Hold `writing()`."""
        if self.read_only:
            raise IndexReadOnly(read_only_message(self.directory))
        self.store.replace_tags(label_set, item_ids, tags)

    def locations(self) -> dict[str, str]:
        """Where each part of the collection lives (`info`): roots, store, export, registry."""
        from retriever.library.locations import where_things_live

        return where_things_live(self.directory, self.model(), self.store.name)

    def summary(self) -> Summary:
        """What the collection holds, its model, and the last run: `info` and /api/info."""
        counts, run = self.counts(), self.store.last_run()
        if run is not None and run.status == "running" and not self.being_written():
            run = replace(run, status="interrupted")  # its writer died (killed, lost power)
        return Summary(str(self.directory), counts.images, counts.texts, counts.files,
                       self.store.model(), run, list(self.store.failures().values()))

    def bind_model(self, record: ModelRecord) -> None:
        """Record the collection's model, or refuse one that is not the recorded (see
        `check_model`). A store made before fingerprints records the first one it is given."""
        current = self.store.model()
        if current is None or (current.fingerprint is None and _names(current) == _names(record)
                               and current.dim == record.dim):
            self.store.set_model(record)
        else:
            self.check_model(record)

    def check_model(self, record: ModelRecord) -> None:
        """Refuse a model other than the one every stored vector was made with: another name
        or weights, or the same names whose config or weights changed on disk since (another
        dimension or fingerprint). Raised before anything is written or searched."""
        current = self.store.model()
        if current is None:
            return
        if _names(current) != _names(record):
            raise ModelMismatch(
                f"{self.directory} was built with {current.name} ({current.pretrained}), not "
                f"{record.name} ({record.pretrained}): pass --reindex to re-encode everything "
                f"with the new model, or use the index's model"
            )
        if current.dim != record.dim or None not in (current.fingerprint, record.fingerprint) \
                and current.fingerprint != record.fingerprint:
            raise ModelMismatch(
                f"{record.name} ({record.pretrained}) is no longer the model {self.directory} "
                f"was built with: its config or weights changed on disk ({record.dim}-d, "
                f"fingerprint {str(record.fingerprint)[:12]}; the index has {current.dim}-d, "
                f"{str(current.fingerprint)[:12]}): restore them, or pass --reindex to "
                f"re-encode everything with the changed model"
            )

    def being_written(self) -> bool:
        """Whether a writer holds the lock now. SQLite: probed by a shared lock on the lock
        file, given back at once (a writer asking that instant is told the index is busy)."""
        if self.store.postgresql:
            return self.store.writer() is not None
        try:
            with open(self.directory / LOCK_FILE, "rb") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # no lock file: no run ever wrote here
            return False
        return False

    @contextmanager
    def writing(self, wait: bool = False) -> Iterator[None]:
        """Hold the one-writer lock for the duration, released if the process dies: a lock
        file in the index folder for a SQLite store, the database's for a PostgreSQL one."""
        if self.read_only:
            raise IndexReadOnly(read_only_message(self.directory))
        with self._store_lock(wait) if self.store.postgresql else self._file_lock(wait):
            yield

    @contextmanager
    def _store_lock(self, wait: bool) -> Iterator[None]:
        with self.store.writer_lock(wait) as held:
            if not held:
                raise _busy(self.store.name, self.store.writer() or "another process")
            yield

    @contextmanager
    def _file_lock(self, wait: bool) -> Iterator[None]:
        with _file_errors(self.directory):  # a full disk, a folder made read-only meanwhile
            (self.directory / LOCK_FILE).touch()
        with open(self.directory / LOCK_FILE, "a+") as lock:
            flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
            try:
                fcntl.flock(lock.fileno(), flags)
            except BlockingIOError:
                lock.seek(0)
                raise _busy(str(self.directory), lock.read().strip() or "another process"
                            ) from None
            lock.truncate(0)
            lock.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}")
            lock.flush()
            yield

    def reset(self) -> None:
        """Forget every file, vector, thumbnail and the model (--reindex with another model)."""
        self.store.clear()
        self._vectors.clear()
        shutil.rmtree(self.directory / THUMBS_DIRNAME, ignore_errors=True)
        for name in VECTOR_FILES.values():
            for path in (self.directory / name, self.directory / f"{name}.json"):
                path.unlink(missing_ok=True)
            for delta in _delta_files(self.directory / name):
                (self.directory / delta).unlink(missing_ok=True)
            remove_mirror(self.directory / name)

    def vectors(self, kind: str) -> VectorIndex:
        """The FAISS index for `kind`, loaded from disk or rebuilt from the store."""
        if kind not in self._vectors:
            self._vectors[kind] = self._load_or_rebuild(kind)
        return self._vectors[kind]

    def searcher(self, kind: str) -> VectorIndex | ExactIndex | DiskIndex:
        """What searches `kind` for a reader: the loaded FAISS index if there is one; else, for
        a flat index saved at the store's generation, its memory-mapped vectors (no FAISS);
        for an IVF so saved, its file searched from disk where `ann.on_disk` says so
        (index.ondisk); unless FAISS can search on a GPU. Writes load the FAISS index, which
        then wins."""
        if kind in self._vectors or gpu_visible():
            return self.vectors(kind)
        if kind not in self._readers:
            path = self.directory / VECTOR_FILES[kind]
            found: ExactIndex | DiskIndex | None = self._load_current(
                kind, lambda meta: [p.name for p in mirror_paths(path)],
                lambda meta: ExactIndex.load(path))
            if found is None:
                found = self._from_disk(kind)
            if found is None:
                return self.vectors(kind)
            self._readers[kind] = found
        return self._readers[kind]

    def nearest(self, kind: str, queries: np.ndarray, k: int,
                allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The `searcher`'s top k of `kind`: queries (q, dim) -> scores (q, k') and ids
        (q, k'), k' = min(k, candidates), id -1 empty. An IVF-PQ's candidates are re-ranked
        with the store's exact vectors (index.rerank): its codes alone cap recall."""
        searcher = self.searcher(kind)
        k = min(k, len(searcher))  # FAISS allocates k results up front
        if searcher.kind != "ivfpq":
            return searcher.search(queries, k, allowed)
        from index.rerank import reranked

        return reranked(searcher, self.store.vectors_of, queries, k, allowed)

    def _from_disk(self, kind: str) -> DiskIndex | None:
        """`kind`'s saved IVF and deltas, searched from disk, if `ann.on_disk` wants it (asked
        before any file is read) and they are current."""
        from index.ondisk import DiskIndex, wanted

        path = self.directory / VECTOR_FILES[kind]
        if not wanted(path, self.ann.on_disk):
            return None

        def load(meta: dict) -> DiskIndex | None:
            if meta.get("mirror"):  # a flat index whose mirror is damaged: loaded in memory
                return None
            return DiskIndex.load(path, [path.with_name(name) for name in _deltas(meta)],
                                  int(meta["count"]))

        return self._load_current(kind, lambda meta: [path.name, *_deltas(meta)], load)

    def write_files(self, batch: Sequence[tuple[FileRecord, Sequence[ItemRecord]]]) -> None:
        """Store a batch of files (one transaction), then mirror it into the vector indexes.

        The indexes are loaded first: loading after the write would rebuild them from a store
        that already holds the batch, and the batch would then be added twice.
        """
        indexes = [self.vectors(kind) for kind in KINDS]
        written = self.store.write_files(batch)
        for index in indexes:
            index.remove(written.removed)
        for kind, (ids, vecs) in written.added.items():
            self.vectors(kind).add(ids, vecs)
        for index in indexes:  # past a whole save's worth of changes: keep none in memory
            if index.journal is not None and index.journal.rows * DELTA_SHARE > len(index):
                index.journal = None

    def remove_files(self, paths: Sequence[str]) -> None:
        indexes = [self.vectors(kind) for kind in KINDS]
        removed = self.store.remove_files(paths)
        for index in indexes:
            index.remove(removed)

    def save(self) -> None:
        """Persist the vector indexes, stamped with the store generation they mirror and each
        file's checksum. Indexes loaded (maybe changed) are saved, and saved ones that are
        stale or damaged: a run that changed nothing still repairs them.

        Only the writer (holding `writing()`) calls this, after its last store write.
        """
        generation = self.store.generation()
        with _file_errors(self.directory):
            for kind in KINDS:
                if kind in self._vectors or not self._saved_current(kind):
                    self.vectors(kind)
                    self._save(kind, generation)

    def _save(self, kind: str, generation: int) -> None:
        """Save `kind`'s index: only what changed since its last save (a delta file) when it is
        an IVF saved before and its deltas are still few and small, else whole."""
        from index.deltas import Journal

        vectors = self._fit(kind)
        path = self.directory / VECTOR_FILES[kind]
        meta = self._save_delta(kind, vectors, path) or self._save_whole(vectors, path)
        meta = {"generation": generation, "count": len(vectors), **meta}
        with replacing(path.with_name(f"{path.name}.json")) as tmp:  # last: commits them all
            Path(tmp).write_text(json.dumps(meta))
        for old in set(_delta_files(path)) - set(meta["deltas"]):
            path.with_name(old).unlink(missing_ok=True)
        if vectors.kind != "flat":
            self._saved[kind], vectors.journal = meta, Journal()

    def _save_whole(self, vectors: VectorIndex, path: Path) -> dict:
        checksums = {path.name: vectors.save(path)}
        mirror = vectors.kind == "flat"
        if mirror:
            checksums.update(save_mirror(path, *vectors.flat_arrays()))
        else:
            remove_mirror(path)
        return {"mirror": mirror, "checksums": checksums, "deltas": [], "delta_rows": 0}

    def _save_delta(self, kind: str, vectors: VectorIndex, path: Path) -> dict | None:
        """The saved files plus one delta of the changes since, or None: save it whole."""
        from index.deltas import save_delta

        saved, journal = self._saved.get(kind), vectors.journal
        if saved is None or journal is None:
            return None
        deltas, rows = _deltas(saved), int(saved.get("delta_rows", 0)) + journal.rows
        if len(deltas) >= MAX_DELTAS or rows * DELTA_SHARE > len(vectors):
            return None
        checksums = dict(saved["checksums"])
        added, added_vectors, removed = journal.arrays(vectors.dim)
        if len(added) or len(removed):
            name = f"{path.name}.delta{len(deltas) + 1}"
            checksums[name] = save_delta(path.with_name(name), (added, added_vectors, removed))
            deltas.append(name)
        return {"mirror": False, "checksums": checksums, "deltas": deltas, "delta_rows": rows}

    def _build(self, kind: str) -> VectorIndex:
        """`kind`'s index built from the store, streamed in batches (never all vectors at
        once), as the type the collection's size and `ann` call for."""
        from index.vectors import VectorIndex

        self._saved.pop(kind, None)
        return VectorIndex.from_batches(self._dim(), self.store.count_items(kind),
                                        lambda: self.store.vector_batches(kind, BUILD_BATCH),
                                        self.ann)

    def _fit(self, kind: str) -> VectorIndex:
        """The index rebuilt as the type its size calls for (flat -> IVF as a corpus grows;
        IVF retrained once it holds 4x what its centroids were trained for)."""
        current = self._vectors[kind]
        n = len(current)
        wanted = choose(n, current.dim, self.ann)
        trained_for = getattr(current.faiss_index, "nlist", 1)
        grown = current.kind != "flat" and nlist_for(n) >= 4 * trained_for
        if wanted == current.kind and not grown:
            return current
        self._vectors[kind] = self._build(kind)
        return self._vectors[kind]

    def _load_or_rebuild(self, kind: str) -> VectorIndex:
        path = self.directory / VECTOR_FILES[kind]
        loaded = self._load_current(kind, lambda meta: [path.name, *_deltas(meta)],
                                    lambda meta: (_load_saved(path, meta), meta))
        if loaded is None:
            self.rebuilt.append(kind)
            return self._build(kind)
        index, meta = loaded
        if index.journal is not None:
            self._saved[kind] = meta
        return index

    def _saved_current(self, kind: str) -> bool:
        """Whether every file saved for `kind` is current and undamaged (read, not loaded)."""
        path = self.directory / VECTOR_FILES[kind]

        def files(meta: dict) -> list[str]:
            mirror = [p.name for p in mirror_paths(path)] if meta.get("mirror") else []
            return [path.name, *mirror, *_deltas(meta)]

        return self._load_current(kind, files, lambda meta: True) is not None

    def _load_current(
        self, kind: str, files: Callable[[dict], list[str]], load: Callable[[dict], T]
    ) -> T | None:
        """What `load(meta)` reads of `kind`'s saved index, if it mirrors the store as it is now
        (same generation, same count) and the `files(meta)` it reads are the bytes saved (their
        checksums match), else None."""
        path = self.directory / VECTOR_FILES[kind]
        try:
            meta = read_json(path.with_name(f"{path.name}.json"))
            if not isinstance(meta, dict) or meta.get("generation") != self.store.generation() \
                    or meta.get("count") != self.store.count_items(kind):
                return None
            checksums = meta.get("checksums")  # none: saved before checksums, not trusted
            if not isinstance(checksums, dict):
                return None
            with ExitStack() as checked:
                for name in files(meta):
                    checked.enter_context(verified(path.with_name(name), checksums.get(name)))
                return load(meta)
        except (OSError, ValueError, RuntimeError, SmallFileError):  # missing, torn, damaged
            return None  # rebuilt from the store

    def _dim(self) -> int:
        record = self.store.model()
        return record.dim if record else 1


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


def _busy(store: str, holder: str) -> IndexBusy:
    return IndexBusy(f"{store} is being written by {holder}: wait for it to finish, or pass "
                     f"--wait to queue behind it")


def _writable(directory: Path) -> bool:
    """Whether this user may write the index folder and its store (os.access: also False on
    a read-only mount, even for root)."""
    store = directory / STORE_FILE
    return os.access(directory, os.W_OK) and (not store.exists() or os.access(store, os.W_OK))


@contextmanager
def _file_errors(directory: Path) -> Iterator[None]:
    """A full disk or a read-only folder while writing index files, as one named error."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"the disk holding {directory} is full ({err.strerror}): free "
                           f"space, then run `retriever index` again (what was committed is "
                           f"kept)") from err
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise IndexReadOnly(read_only_message(directory)) from err
        if err.errno in (errno.EEXIST, errno.ENOTDIR):  # it, or a folder above it, is a file
            raise UsageError(f"the index folder {directory} cannot be made ({err.strerror}: "
                             f"a file is in the way): pass a folder path") from err
        raise


@dataclass(frozen=True)
class Summary:
    directory: str
    images: int  # image items
    texts: int  # text passages
    files: int
    model: ModelRecord | None  # None before the first run
    last_run: RunRecord | None
    failures: list[FailureRecord]  # files that could not be indexed, path order

    def to_json(self) -> dict:
        """`retriever info --json`: counts first, then model, directory, last run, failures."""
        return {"images": self.images, "texts": self.texts, "files": self.files,
                "model": asdict(self.model) if self.model else None,
                "directory": self.directory,
                "last_run": asdict(self.last_run) if self.last_run else None,
                "failures": [asdict(f) for f in self.failures]}


def _names(record: ModelRecord) -> tuple[str, str]:
    return record.name, record.pretrained
