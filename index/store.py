"""The metadata store: every SQL statement retriever runs lives here.

The store is the source of truth. It holds files, the items embedded from them (an image, or one
passage of a text), and each item's vector as a float32 blob, so the FAISS index can always be
rebuilt from it. SQLite by default; any SQLAlchemy URL works.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
from sqlalchemy import (
    Engine,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from index.kinds import IMAGE, KINDS, TEXT  # noqa: F401  (re-exported)
from index.migrations import LATEST, migrate, pending
from retriever.errors import BadStoreUrl, DiskFull, IndexReadOnly, StoreDamaged, StoreError

VECTOR_DTYPE = np.dtype("<f4")  # little-endian float32, whatever the machine


class Base(DeclarativeBase):
    pass


class CollectionModel(Base):
    """The one model every vector in this store was made with."""

    __tablename__ = "collection_model"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    pretrained: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    fingerprint: Mapped[str | None] = mapped_column(String, nullable=True)  # config + weights


class File(Base):
    __tablename__ = "files"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)
    kind: Mapped[str] = mapped_column(String)
    content_hash: Mapped[str] = mapped_column(String)
    size: Mapped[int] = mapped_column(Integer)
    mtime: Mapped[float] = mapped_column(Float)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    caption: Mapped[str | None] = mapped_column(String, nullable=True)
    indexed_at: Mapped[float] = mapped_column(Float)
    taken_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # EXIF date, else mtime
    items: Mapped[list[Item]] = relationship(
        back_populates="file", cascade="all, delete-orphan", passive_deletes=True
    )


class Item(Base):
    """One embedded unit: an image (position 0) or passage number `position` of a text."""

    __tablename__ = "items"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # == FAISS id
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String)
    position: Mapped[int] = mapped_column(Integer)
    passage: Mapped[str | None] = mapped_column(String, nullable=True)
    file: Mapped[File] = relationship(back_populates="items")
    vector: Mapped[Vector] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class Vector(Base):
    __tablename__ = "vectors"
    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)  # dim x float32, little-endian


class StoreState(Base):
    __tablename__ = "store_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)


class Run(Base):
    """One `retriever index` run: its status and what it did (JSON counts)."""

    __tablename__ = "runs"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String)  # running | completed | interrupted
    stats: Mapped[str] = mapped_column(String, default="{}")


class Failure(Base):
    """A file that could not be indexed, as it was when it failed (retried once it changes)."""

    __tablename__ = "failures"
    path: Mapped[str] = mapped_column(String, primary_key=True)
    size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mtime: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str] = mapped_column(String)
    run_id: Mapped[int] = mapped_column(Integer)


@dataclass(frozen=True)
class ModelRecord:
    name: str
    pretrained: str
    dim: int
    fingerprint: str | None = None  # sha256 of config + weights; None in stores before v4


@dataclass(frozen=True)
class FileRecord:
    path: str  # absolute
    kind: str  # IMAGE or TEXT
    content_hash: str  # sha256 hex of the bytes
    size: int
    mtime: float
    width: int | None = None
    height: int | None = None
    caption: str | None = None
    taken_at: float | None = None  # unix time: EXIF DateTimeOriginal, else mtime


@dataclass(frozen=True)
class ItemRecord:
    kind: str
    position: int
    passage: str | None
    vector: np.ndarray  # (dim,) float32, unit norm


@dataclass(frozen=True)
class ItemView:
    id: int
    path: str
    kind: str
    position: int
    passage: str | None
    caption: str | None


@dataclass(frozen=True)
class FileState:
    size: int
    mtime: float
    content_hash: str


@dataclass(frozen=True)
class FailureRecord:
    path: str
    reason: str
    size: int | None = None  # the file as it was when it failed; None if it could not be read
    mtime: float | None = None


@dataclass(frozen=True)
class RunRecord:
    id: int
    status: str
    started_at: float
    finished_at: float | None
    stats: dict


@dataclass
class WriteResult:
    added: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # kind -> (ids (n,) int64, vectors (n, dim) float32): what the vector index must add
    removed: list[int] = field(default_factory=list)  # item ids the vector index must drop


@dataclass(frozen=True)
class Counts:
    images: int
    texts: int
    files: int


class Store:
    """`read_only`: a SQLite store is opened without writing anything (no migration, no WAL
    files created); a write raises `IndexReadOnly`. SQLite's errors (damaged file, full disk,
    read-only) are raised as the named errors of `retriever.errors`, by `_translate`."""

    def __init__(self, url: str, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        try:
            parsed = make_url(url)
            sqlite = parsed.get_backend_name() == "sqlite"
            self.engine: Engine = create_engine(_read_only(parsed) if read_only and sqlite
                                                else parsed)
        except (ArgumentError, ImportError) as err:  # garbage, unknown dialect, missing driver
            raise BadStoreUrl(f"{url!r} is not a store URL SQLAlchemy can open ({err})",
                              url, str(err)) from None
        self.path = Path(parsed.database or "") if sqlite else None  # the SQLite file
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas_ro if read_only
                         else _sqlite_pragmas)
            event.listen(self.engine, "handle_error", self._translate)
        if read_only:
            self._check_schema()
        else:
            migrate(self.engine.begin)

    def close(self) -> None:
        self.engine.dispose()

    def _check_schema(self) -> None:
        """A read-only store cannot be migrated: one older than this code is refused."""
        with self.engine.connect() as conn:
            missing = pending(conn)
        if missing:
            raise IndexReadOnly(
                f"{self.path} has schema version {missing[0] - 1}, this retriever needs "
                f"{LATEST}, and it is read-only: run `retriever index` once where the index "
                f"folder is writable to upgrade it")

    def _translate(self, context: ExceptionContext) -> None:
        """The one place SQLite's errors become named ones (engine `handle_error` event)."""
        error = _named_error(self.path or Path(self.url), context.original_exception)
        if error is not None:
            raise error from context.original_exception

    # --- the model ------------------------------------------------------------------------

    def model(self) -> ModelRecord | None:
        with Session(self.engine) as s:
            row = s.get(CollectionModel, 1)
            return ModelRecord(row.name, row.pretrained, row.dim, row.fingerprint) if row else None

    def set_model(self, record: ModelRecord) -> None:
        with Session(self.engine) as s, s.begin():
            s.merge(CollectionModel(id=1, name=record.name, pretrained=record.pretrained,
                                    dim=record.dim, fingerprint=record.fingerprint,
                                    created_at=time.time()))

    # --- writing ----------------------------------------------------------------------------

    def write_files(self, batch: Sequence[tuple[FileRecord, Sequence[ItemRecord]]]) -> WriteResult:
        """Insert or replace each file with its items and vectors, all in one transaction.
        A vector holding NaN or inf is a caller's bug (the indexer reports such files): it is
        refused, whole batch and all, rather than stored to rank nonsense forever."""
        if not all(np.isfinite(it.vector).all() for _, items in batch for it in items):
            raise ValueError("refusing to store a vector with NaN or inf")
        result = WriteResult()
        new_items: list[Item] = []
        with Session(self.engine) as s, s.begin():
            old = s.scalars(select(File).where(File.path.in_([f.path for f, _ in batch])))
            for existing in old:
                result.removed.extend(item.id for item in existing.items)
                s.delete(existing)
            s.flush()
            now = time.time()
            for record, items in batch:
                file = File(**dataclasses.asdict(record), indexed_at=now)
                for it in items:
                    blob = np.ascontiguousarray(it.vector, dtype=VECTOR_DTYPE).tobytes()
                    item = Item(kind=it.kind, position=it.position, passage=it.passage,
                                vector=Vector(data=blob))
                    file.items.append(item)
                    new_items.append(item)
                s.add(file)
            s.flush()
            _bump(s)
            for kind in KINDS:
                rows = [i for i in new_items if i.kind == kind]
                if rows:
                    result.added[kind] = (
                        np.array([i.id for i in rows], dtype=np.int64),
                        np.stack([_decode(i.vector.data) for i in rows]),
                    )
        return result

    def remove_files(self, paths: Iterable[str]) -> list[int]:
        """Delete files (and their items and vectors); returns the removed item ids."""
        paths = list(paths)
        with Session(self.engine) as s, s.begin():
            ids = list(s.scalars(select(Item.id).join(File).where(File.path.in_(paths))))
            s.execute(delete(File).where(File.path.in_(paths)))
            _bump(s)
        return ids

    def clear(self) -> None:
        """Delete every file, item, vector, failure and the model record, in one transaction."""
        with Session(self.engine) as s, s.begin():
            for table in (Vector, Item, File, Failure, CollectionModel):
                s.execute(delete(table))
            _bump(s)

    def touch_files(self, records: Sequence[FileRecord]) -> None:
        """Update size, mtime and caption of files whose content is unchanged (no re-encode)."""
        with Session(self.engine) as s, s.begin():
            for r in records:
                s.execute(update(File).where(File.path == r.path).values(
                    size=r.size, mtime=r.mtime, caption=r.caption, taken_at=r.taken_at))

    # --- runs and failures ------------------------------------------------------------------

    def start_run(self) -> int:
        """Open a run; runs a killed process left open are marked interrupted."""
        with Session(self.engine) as s, s.begin():
            s.execute(update(Run).where(Run.status == "running").values(status="interrupted"))
            run = Run(started_at=time.time(), status="running", stats="{}")
            s.add(run)
            s.flush()
            return run.id

    def finish_run(self, run_id: int, stats: dict) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(update(Run).where(Run.id == run_id).values(
                status="completed", finished_at=time.time(), stats=json.dumps(stats)))

    def last_run(self) -> RunRecord | None:
        with Session(self.engine) as s:
            run = s.scalars(select(Run).order_by(Run.id.desc()).limit(1)).first()
            if run is None:
                return None
            return RunRecord(run.id, run.status, run.started_at, run.finished_at,
                             json.loads(run.stats))

    def record_failures(self, run_id: int, failures: Sequence[FailureRecord]) -> None:
        with Session(self.engine) as s, s.begin():
            for f in failures:
                s.merge(Failure(path=f.path, size=f.size, mtime=f.mtime, reason=f.reason,
                                run_id=run_id))

    def clear_failures(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        with Session(self.engine) as s, s.begin():
            s.execute(delete(Failure).where(Failure.path.in_(paths)))

    def failures(self) -> dict[str, FailureRecord]:
        with Session(self.engine) as s:
            rows = s.scalars(select(Failure).order_by(Failure.path))
            return {f.path: FailureRecord(f.path, f.reason, f.size, f.mtime) for f in rows}

    # --- reading ----------------------------------------------------------------------------

    def generation(self) -> int:
        """Count of write transactions so far: a FAISS file saved at another one is stale."""
        with Session(self.engine) as s:
            return int(s.scalar(select(StoreState.generation)) or 0)

    def items_with_hash(self, content_hash: str) -> tuple[FileRecord, list[ItemRecord]] | None:
        """Some stored file with these bytes, with its items and vectors (for reuse)."""
        with Session(self.engine) as s:
            file = s.scalars(select(File).where(File.content_hash == content_hash).limit(1)).first()
            if file is None:
                return None
            record = FileRecord(file.path, file.kind, file.content_hash, file.size, file.mtime,
                                file.width, file.height, file.caption, file.taken_at)
            items = [ItemRecord(i.kind, i.position, i.passage, _decode(i.vector.data))
                     for i in sorted(file.items, key=lambda i: i.position)]
            return record, items

    def file_states(self) -> dict[str, FileState]:
        with Session(self.engine) as s:
            rows = s.execute(select(File.path, File.size, File.mtime, File.content_hash))
            return {p: FileState(size, mtime, h) for p, size, mtime, h in rows}

    def vectors(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """All stored vectors of one kind: ids (n,) int64 and vectors (n, dim) float32."""
        with Session(self.engine) as s:
            rows = s.execute(
                select(Vector.item_id, Vector.data).join(Item).where(Item.kind == kind)
                .order_by(Vector.item_id)
            ).all()
        if not rows:
            return np.empty(0, np.int64), np.empty((0, 0), np.float32)
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return ids, np.stack([_decode(r[1]) for r in rows])

    def items(self, ids: Sequence[int]) -> dict[int, ItemView]:
        with Session(self.engine) as s:
            rows = s.execute(
                select(Item.id, File.path, Item.kind, Item.position, Item.passage, File.caption)
                .join(File).where(Item.id.in_([int(i) for i in ids]))
            )
            return {r[0]: ItemView(*r) for r in rows}

    def item_ids_where(
        self,
        kind: str,
        prefix: str | None = None,
        after: float | None = None,
        before: float | None = None,
    ) -> np.ndarray:
        """Ids of `kind` items under path `prefix`, taken in [after, before) (SQL, indexed)."""
        query = select(Item.id).join(File).where(Item.kind == kind)
        if prefix is not None:
            query = query.where(File.path.startswith(prefix, autoescape=True))
        if after is not None:
            query = query.where(File.taken_at >= after)
        if before is not None:
            query = query.where(File.taken_at < before)
        with Session(self.engine) as s:
            return np.fromiter(s.scalars(query), dtype=np.int64)

    def item_vector(self, item_id: int) -> tuple[str, np.ndarray] | None:
        """(kind, vector) of one stored item, or None."""
        with Session(self.engine) as s:
            row = s.execute(select(Item.kind, Vector.data).join(Vector)
                            .where(Item.id == item_id)).first()
            return (row[0], _decode(row[1])) if row else None

    def count_items(self, kind: str) -> int:
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count(Item.id)).where(Item.kind == kind)) or 0)

    def counts(self) -> Counts:
        with Session(self.engine) as s:
            files = int(s.scalar(select(func.count(File.id))) or 0)
        return Counts(images=self.count_items(IMAGE), texts=self.count_items(TEXT), files=files)

    def file_state(self, path: str) -> FileState | None:
        """Size, mtime and hash of one stored file (the server checks a file against it)."""
        with Session(self.engine) as s:
            row = s.execute(select(File.size, File.mtime, File.content_hash)
                            .where(File.path == path)).first()
            return FileState(*row) if row else None


def _bump(s: Session) -> None:
    s.execute(update(StoreState).where(StoreState.id == 1)
              .values(generation=StoreState.generation + 1))


def _decode(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=VECTOR_DTYPE).astype(np.float32)


# SQLite result codes (the low byte of an extended code): https://sqlite.org/rescode.html
SQLITE_READONLY, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 8, 11, 13, 14, 26


def _named_error(path: Path, error: BaseException) -> StoreError | None:
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return None
    code &= 0xFF
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return StoreDamaged(
            f"{path} is damaged ({error}): `sqlite3 {path} 'PRAGMA integrity_check'` says "
            f"what is wrong; to rebuild, move it away and run `retriever index FOLDER` again")
    if code == SQLITE_FULL:
        return DiskFull(f"the disk holding {path.parent} is full: free space, then run "
                        f"`retriever index` again (what was committed is kept)")
    if code == SQLITE_READONLY:
        return IndexReadOnly(read_only_message(path.parent))
    if code == SQLITE_CANTOPEN:
        return StoreError(f"cannot open {path} ({error}): check that it exists and that you "
                          f"may read it")
    return None


def read_only_message(folder: Path) -> str:
    return (f"{folder} is read-only: `retriever search`, `info` and `serve` work on it; to "
            f"index, make it writable or pass --db DIR to index elsewhere")


def _read_only(url: URL) -> URL:
    """A SQLite URL opened read-only. Without a -wal file (the last writer closed cleanly)
    the database file holds everything, and `immutable` spares creating the -shm file the
    reader could not write in a read-only folder; with one, `mode=ro` reads the WAL too."""
    path = Path(url.database or "").absolute()
    wal = path.with_name(f"{path.name}-wal").exists()
    query = {"mode": "ro", "uri": "true", **({} if wal else {"immutable": "1"})}
    return url.set(database=f"file:{quote(str(path))}", query=query)


def _sqlite_pragmas_ro(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.close()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")  # ON DELETE CASCADE needs it in SQLite
    cursor.execute("PRAGMA journal_mode = WAL")  # readers (search) never block the writer
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.close()
