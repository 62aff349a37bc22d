"""A collection on disk: the metadata store plus one FAISS index per modality.

    <folder>/.retriever/
        store.db        SQLite: files, items, vectors (float32 blobs), the model, migrations
        images.faiss    IndexIDMap2(IndexFlatIP) over image vectors, ids = items.id
        texts.faiss     the same over text-passage vectors

        images.faiss.json / texts.faiss.json   {"generation": g, "count": n} of the file
        images.ids.npy, images.vectors.npy     a flat index's vectors again, for searches
                                               without FAISS (index.exact); same for texts
        write.lock      held (flock) by the one process writing

The store is the source of truth. Every store write bumps its generation; a FAISS file saved at
another generation than the store's (a run killed before saving, or still running), or missing,
or unreadable, is rebuilt from the stored vectors when opened.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from index.ann import AnnConfig, choose, nlist_for
from index.atomic import replacing
from index.exact import ExactIndex, gpu_visible, remove_mirror, save_mirror
from index.store import IMAGE, KINDS, TEXT, FileRecord, ItemRecord, ModelRecord, Store
from retriever.errors import IndexBusy, ModelMismatch
from retriever.locations import ENV_STORE_URL, STORE_FILE

if TYPE_CHECKING:  # FAISS loads only when an index is written or an ANN index searched
    from index.vectors import VectorIndex

VECTOR_FILES = {IMAGE: "images.faiss", TEXT: "texts.faiss"}
LOCK_FILE = "write.lock"
THUMBS_DIRNAME = "thumbs"  # retriever.thumbnails' cache
T = TypeVar("T", "VectorIndex", ExactIndex)


class Collection:
    def __init__(self, directory: Path, store: Store, ann: AnnConfig | None = None) -> None:
        self.directory = directory
        self.store = store
        self.ann = ann or AnnConfig()  # index type policy applied when the writer saves
        self._vectors: dict[str, VectorIndex] = {}
        self._exact: dict[str, ExactIndex] = {}  # flat copies a reader searches (searcher)
        self.rebuilt: list[str] = []  # kinds whose FAISS file was stale and rebuilt from store

    @classmethod
    def open(cls, directory: Path, ann: AnnConfig | None = None) -> Collection:
        directory.mkdir(parents=True, exist_ok=True)
        url = os.environ.get(ENV_STORE_URL) or f"sqlite:///{directory / STORE_FILE}"
        return cls(directory, Store(url), ann)

    def close(self) -> None:
        self.store.close()

    def model(self) -> ModelRecord | None:
        return self.store.model()

    def bind_model(self, record: ModelRecord) -> None:
        """Record the collection's model, or refuse one that differs from the recorded."""
        current = self.store.model()
        if current is None:
            self.store.set_model(record)
        elif (current.name, current.pretrained) != (record.name, record.pretrained):
            raise ModelMismatch(
                f"{self.directory} was built with {current.name} ({current.pretrained}), not "
                f"{record.name} ({record.pretrained}): pass --reindex to re-encode everything "
                f"with the new model, or use the index's model"
            )

    @contextmanager
    def writing(self, wait: bool = False) -> Iterator[None]:
        """Hold the one-writer lock for the duration (released by the OS if the process dies)."""
        with open(self.directory / LOCK_FILE, "a+") as lock:
            flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
            try:
                fcntl.flock(lock.fileno(), flags)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise IndexBusy(
                    f"{self.directory} is being written by {holder}: wait for it to finish, or "
                    f"pass --wait to queue behind it"
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
            remove_mirror(self.directory / name)

    def vectors(self, kind: str) -> VectorIndex:
        """The FAISS index for `kind`, loaded from disk or rebuilt from the store."""
        if kind not in self._vectors:
            self._vectors[kind] = self._load_or_rebuild(kind)
        return self._vectors[kind]

    def searcher(self, kind: str) -> VectorIndex | ExactIndex:
        """What searches `kind` for a reader: the loaded FAISS index if there is one; else, for
        a flat index saved at the store's generation, its memory-mapped vectors (no FAISS),
        unless FAISS can search on a GPU. Writes load the FAISS index, which then wins."""
        if kind in self._vectors or gpu_visible():
            return self.vectors(kind)
        if kind not in self._exact:
            exact = self._load_current(kind, lambda path, meta: ExactIndex.load(path)
                                       if meta.get("mirror") else None)
            if exact is None:
                return self.vectors(kind)
            self._exact[kind] = exact
        return self._exact[kind]

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

    def remove_files(self, paths: Sequence[str]) -> None:
        indexes = [self.vectors(kind) for kind in KINDS]
        removed = self.store.remove_files(paths)
        for index in indexes:
            index.remove(removed)

    def save(self) -> None:
        """Persist the vector indexes, stamped with the store generation they mirror.

        Only the writer (holding `writing()`) calls this, after its last store write.
        """
        generation = self.store.generation()
        for kind in list(self._vectors):
            vectors = self._fit(kind)
            path = self.directory / VECTOR_FILES[kind]
            vectors.save(path)
            mirror = vectors.kind == "flat"
            if mirror:
                save_mirror(path, *vectors.flat_arrays())
            else:
                remove_mirror(path)
            with replacing(path.with_name(f"{path.name}.json")) as tmp:  # last: commits both
                Path(tmp).write_text(json.dumps({"generation": generation,
                                                 "count": len(vectors), "mirror": mirror}))

    def _fit(self, kind: str) -> VectorIndex:
        """The index rebuilt as the type its size calls for (flat -> IVF as a corpus grows;
        IVF retrained once it holds 4x what its centroids were trained for)."""
        current = self._vectors[kind]
        n = len(current)
        wanted = choose(n, current.dim, self.ann)
        grown = current.kind != "flat" and nlist_for(n) >= 4 * getattr(current.index, "nlist", 1)
        if wanted == current.kind and not grown:
            return current
        from index.vectors import VectorIndex

        ids, vecs = self.store.vectors(kind)
        self._vectors[kind] = VectorIndex.from_vectors(current.dim, ids, vecs, self.ann)
        return self._vectors[kind]

    def _load_or_rebuild(self, kind: str) -> VectorIndex:
        from index.vectors import VectorIndex

        loaded = self._load_current(kind, lambda path, meta: VectorIndex.load(path))
        if loaded is not None:
            return loaded
        self.rebuilt.append(kind)
        ids, vecs = self.store.vectors(kind)
        dim = vecs.shape[1] if len(ids) else self._dim()
        return VectorIndex.from_vectors(dim, ids, vecs)

    def _load_current(self, kind: str, load: Callable[[Path, dict], T | None]) -> T | None:
        """What `load(path, meta)` reads of `kind`'s saved index, if the files mirror the store
        as it is now (same generation, same count), else None."""
        path = self.directory / VECTOR_FILES[kind]
        try:
            meta = json.loads(path.with_name(f"{path.name}.json").read_text())
            if meta.get("generation") != self.store.generation():
                return None
            loaded = load(path, meta)
        except (OSError, ValueError, RuntimeError):  # missing, torn or damaged: rebuild
            return None
        if loaded is None or len(loaded) != self.store.count_items(kind):
            return None
        return loaded

    def _dim(self) -> int:
        record = self.store.model()
        return record.dim if record else 1
