"""A collection on disk: the metadata store plus one FAISS index per modality.

    <folder>/.retriever/
        store.db        SQLite: files, items, vectors (float32 blobs), the model, migrations
        images.faiss    IndexIDMap2(IndexFlatIP) over image vectors, ids = items.id
        texts.faiss     the same over text-passage vectors

The store is the source of truth: a FAISS file that is missing, unreadable or holds a different
number of vectors than the store is rebuilt from the stored vectors when opened.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from index.store import IMAGE, KINDS, TEXT, FileRecord, ItemRecord, ModelRecord, Store
from index.vectors import VectorIndex
from retriever.errors import IndexNotFound, ModelMismatch

INDEX_DIRNAME = ".retriever"
STORE_FILE = "store.db"
ENV_DB = "RETRIEVER_DB"  # index folder, instead of <first folder>/.retriever
ENV_STORE_URL = "RETRIEVER_STORE_URL"  # any SQLAlchemy URL, instead of <index folder>/store.db
VECTOR_FILES = {IMAGE: "images.faiss", TEXT: "texts.faiss"}


def index_dir_for(roots: Sequence[Path], db: Path | None = None) -> Path:
    """Where `index` writes: --db, else $RETRIEVER_DB, else <first folder>/.retriever."""
    if db is not None:
        return db
    if os.environ.get(ENV_DB):
        return Path(os.environ[ENV_DB])
    return roots[0] / INDEX_DIRNAME


def find_index_dir(db: Path | None = None, start: Path | None = None) -> Path:
    """Where `search`/`info` read: --db, $RETRIEVER_DB, or the nearest .retriever/ upwards."""
    if db is not None or os.environ.get(ENV_DB):
        found = index_dir_for([Path(".")], db)
        if not (found / STORE_FILE).is_file() and not os.environ.get(ENV_STORE_URL):
            raise IndexNotFound(f"no index in {found}: run `retriever index FOLDER --db {found}`")
        return found
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / INDEX_DIRNAME / STORE_FILE).is_file():
            return folder / INDEX_DIRNAME
    raise IndexNotFound(
        f"no {INDEX_DIRNAME}/ index in {here} or its parents: run `retriever index FOLDER` "
        f"first, or pass --db DIR"
    )


class Collection:
    def __init__(self, directory: Path, store: Store) -> None:
        self.directory = directory
        self.store = store
        self._vectors: dict[str, VectorIndex] = {}

    @classmethod
    def open(cls, directory: Path) -> Collection:
        directory.mkdir(parents=True, exist_ok=True)
        url = os.environ.get(ENV_STORE_URL) or f"sqlite:///{directory / STORE_FILE}"
        return cls(directory, Store(url))

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
                f"{record.name} ({record.pretrained}): use the same --model/--pretrained, or "
                f"another --db"
            )

    def vectors(self, kind: str) -> VectorIndex:
        """The FAISS index for `kind`, loaded from disk or rebuilt from the store."""
        if kind not in self._vectors:
            self._vectors[kind] = self._load_or_rebuild(kind)
        return self._vectors[kind]

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
        for kind, vectors in self._vectors.items():
            vectors.save(self.directory / VECTOR_FILES[kind])

    def _load_or_rebuild(self, kind: str) -> VectorIndex:
        path = self.directory / VECTOR_FILES[kind]
        expected = self.store.count_items(kind)
        if path.is_file():
            try:
                loaded = VectorIndex.load(path)
                if len(loaded) == expected:
                    return loaded
            except RuntimeError:  # FAISS raises RuntimeError on a damaged file
                pass
        ids, vecs = self.store.vectors(kind)
        dim = vecs.shape[1] if len(ids) else self._dim()
        rebuilt = VectorIndex.from_vectors(dim, ids, vecs)
        if path.parent.is_dir():
            rebuilt.save(path)
        return rebuilt

    def _dim(self) -> int:
        record = self.store.model()
        return record.dim if record else 1
