"""A collection on disk: the metadata store plus one FAISS index per modality.

    <folder>/.retriever/
        store.db        SQLite: files, items, vectors (float32 blobs), the model, migrations
        images.faiss, texts.faiss, videos.faiss, image-texts.faiss   one FAISS index per kind
                        of item, with its .faiss.json, deltas and flat mirror (index.saved)
        thumbs/         retriever.library.thumbnails' cache
        write.lock      held (flock) by the one process writing (SQLite stores)

The store may instead be a PostgreSQL database (`store_url`): it then holds what store.db would,
the folder keeps the FAISS files and thumbnails, and the writer's lock is an advisory lock in
the database, so writers on other machines are kept out too.

The store is the source of truth. Every store write bumps its generation; a FAISS file saved at
another generation than the store's (a run killed before saving, or still running), missing,
unreadable, or whose bytes differ from its checksum (damaged on disk; or saved before checksums
were), is rebuilt from the stored vectors when opened (index.saved), and the writer's next run
saves it again. Code above library/ reads the store through `reads` (index.reading), never the
store itself; writes that must reach the FAISS indexes too go through the collection.
A folder the user cannot write is opened read-only: searches work (a rebuild stays in memory),
writes raise `IndexReadOnly`, and nothing is created in it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from index.ann import AnnConfig
from index.exact import ExactIndex
from index.kinds import KINDS
from index.reading import RunBook, StoreReads
from index.records import (
    FailureRecord,
    FileRecord,
    ItemRecord,
    ModelRecord,
    PlacedTag,
    RunRecord,
    TagRecord,
    ThresholdRecord,
)
from index.saved import SavedIndex
from index.store import Store, open_store
from index.store_errors import read_only_message
from retriever.errors import (
    BadStoreUrl,
    DiskFull,
    IndexBusy,
    IndexReadOnly,
    ModelMismatch,
    UsageError,
)
from retriever.library.locations import STORE_FILE
from retriever.settings import ENV_STORE_URL

if TYPE_CHECKING:  # FAISS loads only when an index is written or an ANN index searched
    import numpy as np

    from index.ondisk import DiskIndex
    from index.vectors import VectorIndex
    from retriever.settings import Settings

LOCK_FILE = "write.lock"
THUMBS_DIRNAME = "thumbs"  # retriever.library.thumbnails' cache


class Collection:
    def __init__(self, directory: Path, store: Store, ann: AnnConfig | None = None) -> None:
        self.directory = directory
        self.store = store
        self.ann = ann or AnnConfig()  # index type policy applied when the writer saves
        self._vectors: dict[str, VectorIndex] = {}
        # what a reader searches (searcher): flat copies, IVFs searched from disk
        self._readers: dict[str, ExactIndex | DiskIndex] = {}
        self.rebuilt: list[str] = []  # kinds whose FAISS file was stale and rebuilt from store
        self._saved = {kind: SavedIndex(directory, kind, store, self.ann) for kind in KINDS}
        # nothing may be written: no lock, no saved index, no thumbnail cache
        self.read_only = store.read_only

    @classmethod
    def open(cls, directory: Path, ann: AnnConfig | None = None,
             store_url: str | None = None, reading: bool = False) -> Collection:
        """The collection in `directory`, created if missing, its store at `store_url` (the
        CLI's --store or $RETRIEVER_STORE_URL), else `directory`/store.db. One the user cannot
        write is opened read-only (see the module docstring). `reading`: the caller only reads
        (a one-off search): a current SQLite store is then read without SQLAlchemy
        (`open_store`)."""
        if not directory.is_dir():
            with _file_errors(directory):
                directory.mkdir(parents=True)
        given = store_url
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

    @property
    def reads(self) -> StoreReads:
        """The store's reads, for code above library/ (nothing there touches the store)."""
        return self.store

    @property
    def runs(self) -> RunBook:
        """The record of indexing runs and their failed files (the writer's, in `writing()`)."""
        return self.store

    def touch_files(self, records: Sequence[FileRecord]) -> None:
        """Update size, mtime and caption of stored files whose bytes are unchanged (no vector
        changes, so FAISS is left alone)."""
        self.store.touch_files(records)

    def mark_words_read(self, paths: Sequence[str]) -> None:
        """Record that `index --ocr` read these images' words (no vector changes)."""
        self.store.mark_words_read(paths)

    def place_tags(self, tags: Sequence[PlacedTag]) -> int:
        """Put tags back on the items now at their places (`--reindex`); how many were."""
        if self.read_only:
            raise IndexReadOnly(read_only_message(self.directory))
        return self.store.place_tags(tags)

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

    def replace_tags(self, label_set: str, item_ids: Sequence[int],
                     tags: Sequence[TagRecord]) -> None:
        """`label_set`'s tags of `item_ids` become `tags` (one transaction). Hold `writing()`."""
        if self.read_only:
            raise IndexReadOnly(read_only_message(self.directory))
        self.store.replace_tags(label_set, item_ids, tags)

    def record_duplicate_threshold(self, record: ThresholdRecord) -> None:
        """Keep `duplicates`' measured threshold (no vector changes; no writer lock needed)."""
        if self.read_only:
            raise IndexReadOnly(read_only_message(self.directory))
        self.store.set_duplicate_threshold(record)

    def locations(self, settings: Settings) -> dict[str, str]:
        """Where each part of the collection lives (`info`): roots, store, export, registry
        (the last two under the user's folders in `settings`)."""
        from retriever.library.locations import where_things_live

        return where_things_live(self.directory, self.store.model(), self.store.name, settings)

    def summary(self) -> Summary:
        """What the collection holds, its model, and the last run: `info` and /api/info."""
        counts, run = self.store.counts(), self.store.last_run()
        if run is not None and run.status == "running" and not self.being_written():
            run = replace(run, status="interrupted")  # its writer died (killed, lost power)
        return Summary(str(self.directory), counts.images, counts.texts, counts.files,
                       self.store.model(), run, list(self.store.failures().values()))

    def bind_model(self, record: ModelRecord) -> None:
        """Record the collection's model, or refuse one that is not the recorded (see
        `check_model`). A store made before fingerprints records the first one it is given;
        one made before precisions, the precision of the (fp32) run it is given."""
        current = self.store.model()
        if current is None or (current.fingerprint is None and _names(current) == _names(record)
                               and current.dim == record.dim):
            self.store.set_model(record)
            return
        self.check_model(record)
        if current.precision is None and record.precision is not None:
            self.store.set_model(replace(current, precision=record.precision))

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
                f"{record.name} ({record.pretrained}): pass --switch to build the new "
                f"model's vectors while searches keep the old ones, or --reindex to start over "
                f"with it, or use the index's model"
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
        if record.precision is not None:  # int8 and float vectors do not mix (backends)
            from retriever.encoding.backends import check_mix

            check_mix(self.directory, current.precision or "fp32", record.precision)

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
        for saved in self._saved.values():
            saved.remove()

    def take_over(self, staged: Collection, batch_size: int = 1000) -> None:
        """Everything this collection holds (files, vectors, the model) becomes what `staged`
        holds, in one store transaction (`index --switch`); tags stay on the items at their
        places. The FAISS files and thumbnails (by item id) go, and the indexes are built
        again from the new vectors. Hold `writing()`."""
        if self.read_only:
            raise IndexReadOnly(read_only_message(self.directory))
        model = staged.store.model()
        if model is None:
            raise UsageError(f"{staged.directory} holds no model yet: nothing to switch to")
        self.store.replace_all(_pages(staged.store, batch_size), model,
                               list(staged.store.failures().values()),
                               staged.store.images_with_words())
        self._vectors.clear()
        self._readers.clear()
        shutil.rmtree(self.directory / THUMBS_DIRNAME, ignore_errors=True)
        for saved in self._saved.values():
            saved.remove()
        self.save()

    def saved(self, kind: str) -> SavedIndex:
        """`kind`'s saved FAISS files (index.saved), read whole by `retriever check`."""
        return self._saved[kind]

    def vectors(self, kind: str) -> VectorIndex:
        """The FAISS index for `kind`, loaded from disk or rebuilt from the store."""
        if kind not in self._vectors:
            index = self._saved[kind].load()
            if index is None:
                self.rebuilt.append(kind)
                index = self._saved[kind].build()
            self._vectors[kind] = index
        return self._vectors[kind]

    def searcher(self, kind: str) -> VectorIndex | ExactIndex | DiskIndex:
        """What searches `kind` for a reader: the loaded FAISS index if there is one; else, for
        a flat index saved at the store's generation, its memory-mapped vectors (no FAISS);
        for an IVF so saved, its file searched from disk where `ann.on_disk` says so
        (index.ondisk); unless FAISS can search on a GPU. Writes load the FAISS index, which
        then wins."""
        if kind in self._vectors or self.ann.gpu:
            return self.vectors(kind)
        if kind not in self._readers:
            found: ExactIndex | DiskIndex | None = self._saved[kind].mirror()
            if found is None:
                found = self._saved[kind].on_disk()
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
        for kind, index in zip(KINDS, indexes, strict=True):
            self._saved[kind].trim_journal(index)

    def remove_files(self, paths: Sequence[str]) -> None:
        indexes = [self.vectors(kind) for kind in KINDS]
        removed = self.store.remove_files(paths)
        for index in indexes:
            index.remove(removed)

    def save(self) -> None:
        """Persist the vector indexes, stamped with the store generation they mirror and each
        file's checksum (index.saved). Indexes loaded (maybe changed) are saved, and saved
        ones that are stale or damaged: a run that changed nothing still repairs them.

        Only the writer (holding `writing()`) calls this, after its last store write.
        """
        generation = self.store.generation()
        with _file_errors(self.directory):
            for kind, saved in self._saved.items():
                if kind in self._vectors or not saved.is_current():
                    self._vectors[kind] = saved.fitted(self.vectors(kind))
                    saved.save(self._vectors[kind], generation)


def _pages(store: Store, size: int) -> Iterator[list[tuple[FileRecord, list[ItemRecord]]]]:
    """Every file of `store` with its items and vectors, `size` files at a time."""
    after = 0
    while page := store.files_after(after, size):
        yield list(page.values())
        after = max(page)


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
