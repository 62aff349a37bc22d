"""The metadata store: every SQL statement retriever runs lives here.

The store is the source of truth. It holds files, the items embedded from them (an image, or one
passage of a text), and each item's vector as a float32 blob, so the FAISS index can always be
rebuilt from it. SQLite by default, or PostgreSQL (`postgresql+psycopg://...`); the SQL is
portable, the few differences (DDL words, error codes, the writer lock) are chosen per database.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
from sqlalchemy import (
    BigInteger,
    Engine,
    Float,
    ForeignKey,
    LargeBinary,
    String,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Connection, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from index.kinds import IMAGE, IMAGE_TEXT, KINDS, TEXT, VIDEO  # noqa: F401  (re-exported)
from index.migrations import LATEST, migrate, pending
from retriever.errors import BadStoreUrl, DiskFull, IndexReadOnly, StoreDamaged, StoreError

VECTOR_DTYPE = np.dtype("<f4")  # little-endian float32, whatever the machine


class Base(DeclarativeBase):
    """The tables as migrations.py makes them; integers are 64-bit on every database."""


class CollectionModel(Base):
    """The one model every vector in this store was made with."""

    __tablename__ = "collection_model"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    pretrained: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)
    fingerprint: Mapped[str | None] = mapped_column(String, nullable=True)  # config + weights


class File(Base):
    __tablename__ = "files"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)
    kind: Mapped[str] = mapped_column(String)
    content_hash: Mapped[str] = mapped_column(String)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)
    width: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    height: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
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
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # == FAISS id
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String)
    position: Mapped[int] = mapped_column(BigInteger)
    passage: Mapped[str | None] = mapped_column(String, nullable=True)
    time: Mapped[float | None] = mapped_column(Float, nullable=True)  # video frames: seconds
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
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)


class Run(Base):
    """One `retriever index` run: its status and what it did (JSON counts)."""

    __tablename__ = "runs"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String)  # running | completed | interrupted
    stats: Mapped[str] = mapped_column(String, default="{}")


class Failure(Base):
    """A file that could not be indexed, as it was when it failed (retried once it changes)."""

    __tablename__ = "failures"
    path: Mapped[str] = mapped_column(String, primary_key=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    mtime: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str] = mapped_column(String)
    run_id: Mapped[int] = mapped_column(BigInteger)


class Tag(Base):
    """A zero-shot label of an image item, one of the labels of `label_set` (migration 5)."""

    __tablename__ = "tags"
    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    label_set: Mapped[str] = mapped_column(String, primary_key=True)  # sorted labels, JSON
    label: Mapped[str] = mapped_column(String, primary_key=True)
    score: Mapped[float] = mapped_column(Float)  # cosine to the label's prompt ensemble


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
    time: float | None = None  # a video frame's moment, seconds from the start


@dataclass(frozen=True)
class ItemView:
    id: int
    path: str
    kind: str
    position: int
    passage: str | None
    caption: str | None
    time: float | None = None  # a video frame's moment, seconds
    taken_at: float | None = None  # the file's EXIF date, else its mtime (unix seconds)


@dataclass(frozen=True)
class ImageFile:
    """An image item with its file's facts: what `retriever duplicates` shows and orders by."""

    id: int  # item id
    path: str
    size: int  # bytes
    width: int | None
    height: int | None
    content_hash: str


@dataclass(frozen=True)
class TagRecord:
    item_id: int
    label: str
    score: float


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
    videos: int = 0  # video frames
    image_texts: int = 0  # OCR passages of images


class Store:
    """`read_only`: a store is opened without writing anything (SQLite: no migration, no WAL
    files created; PostgreSQL: read-only transactions); a write raises `IndexReadOnly`. The
    database's errors (damaged file, full disk, read-only, a server out of reach) are raised as
    the named errors of `retriever.errors`, by `_translate`."""

    def __init__(self, url: str, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        try:
            parsed = _with_driver(make_url(url))
            sqlite = parsed.get_backend_name() == "sqlite"
            self.engine: Engine = create_engine(_read_only(parsed) if read_only and sqlite
                                                else parsed, **_options(parsed, read_only))
        except (ArgumentError, ImportError) as err:  # garbage, unknown dialect, missing driver
            raise _bad_url(url, err) from None
        self.path = Path(parsed.database or "") if sqlite else None  # the SQLite file
        self.postgresql = parsed.get_backend_name() == "postgresql"  # the lock is in the store
        self.name = str(self.path) if sqlite else parsed.render_as_string(hide_password=True)
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas_ro if read_only
                         else _sqlite_pragmas)
        if sqlite or self.postgresql:
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
                f"{self.name} has schema version {missing[0] - 1}, this retriever needs "
                f"{LATEST}, and it is read-only: run `retriever index` once where the index "
                f"folder is writable to upgrade it")

    def _translate(self, context: ExceptionContext) -> None:
        """The one place the database's errors become named ones (engine `handle_error`)."""
        error = (_server_error(self.name, context) if self.postgresql
                 else _named_error(self.path or Path(self.url), context.original_exception))
        if error is not None:
            raise error from context.original_exception

    # --- the writer lock (PostgreSQL; a SQLite store's writer locks a file beside it) -------

    @contextmanager
    def writer_lock(self, wait: bool) -> Iterator[bool]:
        """Hold this store's writer lock for the duration: an advisory lock of a connection of
        its own, which the server releases when that connection ends, also when this process
        dies, on whichever machine. Yields False, holding nothing, if another session holds it
        (unless `wait`: then it waits for it)."""
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        keys, held = _writer_keys(conn), False
        try:
            conn.execute(text("SELECT set_config('application_name', :name, false)"),
                         {"name": f"retriever pid {os.getpid()} on {socket.gethostname()} "
                                  f"since {time.strftime('%H:%M:%S')}"})
            if wait:
                conn.execute(text("SELECT pg_advisory_lock(:space, :key)"), keys)
            held = wait or bool(conn.scalar(
                text("SELECT pg_try_advisory_lock(:space, :key)"), keys))
            yield held
        finally:
            # released now: a server ends a session a moment after its connection closes
            with suppress(SQLAlchemyError, StoreError):  # a lost connection released it
                if held:
                    conn.execute(text("SELECT pg_advisory_unlock(:space, :key)"), keys)
            conn.invalidate()  # closed, not pooled: its name goes with it

    def writer(self) -> str | None:
        """Who holds the writer lock ("retriever pid N on HOST since HH:MM:SS"), or None."""
        with self.engine.connect() as conn:
            return conn.scalar(text(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
                "AND l.classid = :space AND l.objid = :key AND l.database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"),
                _writer_keys(conn))

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
        with Session(self.engine) as s, s.begin():
            for chunk in _chunks([f.path for f, _ in batch]):  # replaced files go first
                result.removed += s.scalars(select(Item.id).join(File)
                                            .where(File.path.in_(chunk)))
                s.execute(delete(File).where(File.path.in_(chunk)))  # items cascade
            item_ids = _insert_rows(s, batch)
            _bump(s)
        items = [it for _, its in batch for it in its]  # the order of `item_ids`
        for kind in KINDS:
            rows = [n for n, it in enumerate(items) if it.kind == kind]
            if rows:
                result.added[kind] = (np.array([item_ids[n] for n in rows], dtype=np.int64),
                                      np.stack([_decode(_encode(items[n].vector))
                                                for n in rows]))
        return result

    def remove_files(self, paths: Iterable[str]) -> list[int]:
        """Delete files (and their items and vectors); returns the removed item ids."""
        ids: list[int] = []
        with Session(self.engine) as s, s.begin():
            for chunk in _chunks(list(paths)):
                ids += s.scalars(select(Item.id).join(File).where(File.path.in_(chunk)))
                s.execute(delete(File).where(File.path.in_(chunk)))
            _bump(s)
        return ids

    def clear(self) -> None:
        """Delete every file, item, vector, failure and the model record, in one transaction."""
        with Session(self.engine) as s, s.begin():
            for table in (Tag, Vector, Item, File, Failure, CollectionModel):
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
        with Session(self.engine) as s, s.begin():
            for chunk in _chunks(list(paths)):
                s.execute(delete(Failure).where(Failure.path.in_(chunk)))

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
            items = [ItemRecord(i.kind, i.position, i.passage, _decode(i.vector.data), i.time)
                     for i in sorted(file.items, key=lambda i: (i.kind, i.position))]
            return record, items

    def file_states(self) -> dict[str, FileState]:
        with Session(self.engine) as s:
            rows = s.execute(select(File.path, File.size, File.mtime, File.content_hash))
            return {p: FileState(size, mtime, h) for p, size, mtime, h in rows}

    def vectors(self, kind: str, prefix: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All stored vectors of one kind (under path `prefix`): ids (n,) int64 and vectors
        (n, dim) float32."""
        query = select(Vector.item_id, Vector.data).join(Item).where(Item.kind == kind)
        if prefix is not None:
            query = query.join(File).where(File.path.startswith(prefix, autoescape=True))
        with Session(self.engine) as s:
            rows = s.execute(query.order_by(Vector.item_id)).all()
        if not rows:
            return np.empty(0, np.int64), np.empty((0, 0), np.float32)
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return ids, np.stack([_decode(r[1]) for r in rows])

    def vector_batches(self, kind: str, size: int = 10_000
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The stored vectors of one kind, in id order, as batches of ids (b,) int64 and
        vectors (b, dim) float32, b <= `size`: one query read as it goes (a server-side cursor
        on PostgreSQL), so memory holds one batch whatever the corpus."""
        query = (select(Vector.item_id, Vector.data).join(Item).where(Item.kind == kind)
                 .order_by(Vector.item_id).execution_options(yield_per=size))
        with Session(self.engine) as s:
            for rows in s.execute(query).partitions():
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                blob = b"".join(r[1] for r in rows)
                yield ids, np.frombuffer(blob, dtype=VECTOR_DTYPE).reshape(len(rows), -1) \
                    .astype(np.float32)

    def items(self, ids: Sequence[int]) -> dict[int, ItemView]:
        with Session(self.engine) as s:
            rows = s.execute(
                select(Item.id, File.path, Item.kind, Item.position, Item.passage, File.caption,
                       Item.time, File.taken_at)
                .join(File).where(Item.id.in_([int(i) for i in ids]))
            )
            return {r[0]: ItemView(*r) for r in rows}

    def item_ids_where(
        self,
        kind: str,
        prefix: str | None = None,
        after: float | None = None,
        before: float | None = None,
        tag: str | None = None,
    ) -> np.ndarray:
        """Ids of `kind` items under path `prefix`, taken in [after, before), tagged `tag`
        (SQL, indexed)."""
        query = select(Item.id).join(File).where(Item.kind == kind)
        if tag is not None:
            query = query.where(Item.id.in_(select(Tag.item_id).where(Tag.label == tag)))
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

    def has_items(self, kind: str) -> bool:
        """Whether any item of `kind` is stored: one index probe, where counting them reads
        the whole index (70 ms at 1M items, bench/scale.py)."""
        with Session(self.engine) as s:
            return s.scalar(select(Item.id).where(Item.kind == kind).limit(1)) is not None

    def count_items(self, kind: str) -> int:
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count(Item.id)).where(Item.kind == kind)) or 0)

    def counts(self) -> Counts:
        with Session(self.engine) as s:
            files = int(s.scalar(select(func.count(File.id))) or 0)
        return Counts(images=self.count_items(IMAGE), texts=self.count_items(TEXT), files=files,
                      videos=self.count_items(VIDEO), image_texts=self.count_items(IMAGE_TEXT))

    def file_state(self, path: str) -> FileState | None:
        """Size, mtime and hash of one stored file (the server checks a file against it)."""
        with Session(self.engine) as s:
            row = s.execute(select(File.size, File.mtime, File.content_hash)
                            .where(File.path == path)).first()
            return FileState(*row) if row else None

    def recent_images(self, limit: int) -> list[int]:
        """Ids of the `limit` most recently taken image items, newest first."""
        with Session(self.engine) as s:
            return list(s.scalars(select(Item.id).join(File).where(Item.kind == IMAGE)
                                  .order_by(File.taken_at.desc(), Item.id.desc()).limit(limit)))

    def image_items_at(self, paths: Sequence[str]) -> dict[str, int]:
        """path -> image item id, for those of `paths` stored as images."""
        with Session(self.engine) as s:
            rows = s.execute(select(File.path, Item.id).join(Item).where(
                Item.kind == IMAGE, File.path.in_(list(paths))))
            return {path: item_id for path, item_id in rows}

    # --- duplicates and tags ------------------------------------------------------------------

    def image_files(self, prefix: str | None = None) -> list[ImageFile]:
        """Every image item (under path `prefix`) with its file's size, dimensions and hash."""
        query = select(Item.id, File.path, File.size, File.width, File.height,
                       File.content_hash).join(File).where(Item.kind == IMAGE)
        if prefix is not None:
            query = query.where(File.path.startswith(prefix, autoescape=True))
        with Session(self.engine) as s:
            return [ImageFile(*row) for row in s.execute(query.order_by(Item.id))]

    def replace_tags(self, label_set: str, item_ids: Sequence[int],
                     tags: Sequence[TagRecord]) -> None:
        """In one transaction: drop `label_set`'s tags of `item_ids`, then store `tags` under it.
        Tags leave FAISS alone, so the generation is not bumped."""
        with Session(self.engine) as s, s.begin():
            for chunk in _chunks([int(i) for i in item_ids]):
                s.execute(delete(Tag).where(Tag.label_set == label_set,
                                            Tag.item_id.in_(chunk)))
            s.add_all(Tag(item_id=t.item_id, label_set=label_set, label=t.label, score=t.score)
                      for t in tags)

    def tags(self, ids: Sequence[int]) -> dict[int, list[str]]:
        """item id -> its labels (every label set), sorted; items without tags are left out."""
        with Session(self.engine) as s:
            rows = s.execute(select(Tag.item_id, Tag.label).distinct()
                             .where(Tag.item_id.in_([int(i) for i in ids]))
                             .order_by(Tag.item_id, Tag.label))
            found: dict[int, list[str]] = {}
            for item_id, label in rows:
                found.setdefault(item_id, []).append(label)
            return found


def _insert_rows(s: Session, batch: Sequence[tuple[FileRecord, Sequence[ItemRecord]]]
                 ) -> list[int]:
    """Insert the files, their items and vectors as plain multi-row INSERTs (no ORM objects,
    no RETURNING, which SQLAlchemy runs row by row on SQLite: 6x faster, bench/scale.py);
    the new ids are read back by path, and by (file, kind, position). Returns the new item
    ids in batch order."""
    if not batch:
        return []
    now = time.time()
    tables = Base.metadata.tables
    s.execute(insert(tables["files"]), [{**{name: getattr(f, name) for name in _FILE_FIELDS},
                                         "indexed_at": now} for f, _ in batch])
    file_ids: dict[str, int] = {}
    for chunk in _chunks([f.path for f, _ in batch]):
        file_ids.update((path, file_id) for path, file_id in
                        s.execute(select(File.path, File.id).where(File.path.in_(chunk))))
    items = [(file_ids[f.path], it) for f, its in batch for it in its]
    if not items:
        return []
    s.execute(insert(tables["items"]), [{"file_id": file_id, "kind": it.kind,
                                         "position": it.position, "passage": it.passage,
                                         "time": it.time} for file_id, it in items])
    item_ids: dict[tuple[int, str, int], int] = {}
    for chunk in _chunks(list(file_ids.values())):
        item_ids.update({(file_id, kind, position): item_id for item_id, file_id, kind, position
                         in s.execute(select(Item.id, Item.file_id, Item.kind, Item.position)
                                      .where(Item.file_id.in_(chunk)))})
    ids = [item_ids[file_id, it.kind, it.position] for file_id, it in items]
    s.execute(insert(tables["vectors"]), [{"item_id": i, "data": _encode(it.vector)}
                                          for i, (_, it) in zip(ids, items, strict=True)])
    return ids


def _encode(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=VECTOR_DTYPE).tobytes()


_FILE_FIELDS = [f.name for f in dataclasses.fields(FileRecord)]


def _bump(s: Session) -> None:
    s.execute(update(StoreState).where(StoreState.id == 1)
              .values(generation=StoreState.generation + 1))


def _chunks(values: list, size: int = 10_000) -> Iterator[list]:
    """`values` in lists short enough to bind in one statement (SQLite: 32,766 parameters,
    PostgreSQL: 65,535)."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _decode(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=VECTOR_DTYPE).astype(np.float32)


# SQLite result codes (the low byte of an extended code): https://sqlite.org/rescode.html
SQLITE_READONLY, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 8, 11, 13, 14, 26


def _named_error(path: Path, error: BaseException) -> StoreError | None:
    code = getattr(error, "sqlite_errorcode", None)
    # a damaged page can also hold text bytes that are not UTF-8: Python's sqlite3 says so
    garbled = code is None and "Could not decode to UTF-8" in str(error)
    if code is None and not garbled:
        return None
    code = (code or 0) & 0xFF
    if garbled or code in (SQLITE_CORRUPT, SQLITE_NOTADB):
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


# PostgreSQL error codes (SQLSTATE): https://www.postgresql.org/docs/current/errcodes-appendix.html
PG_READ_ONLY_TRANSACTION, PG_DISK_FULL = "25006", "53100"
PG_UNREACHABLE = ("08", "28", "3D", "57P")  # connection, authorization, no such database, shutdown
WRITER_LOCK_SPACE = 0x52455452  # "RETR": the first key of the writer's advisory lock


def _server_error(name: str, context: ExceptionContext) -> StoreError | None:
    """A PostgreSQL error as a named one, or None."""
    error = context.original_exception
    state = getattr(error, "sqlstate", None) or ""
    if context.connection is None or context.is_disconnect or state.startswith(PG_UNREACHABLE):
        said = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return StoreError(f"cannot use the store {name} ({said}): check that its server is "
                          f"running and the URL's host, database and user")
    if state == PG_DISK_FULL:
        return DiskFull(f"the disk of the server holding {name} is full: free space there, then "
                        f"run `retriever index` again (what was committed is kept)")
    if state == PG_READ_ONLY_TRANSACTION:
        return IndexReadOnly(f"{name} was opened read-only, as its index folder is: "
                             f"`retriever search`, `info` and `serve` work; to index, make the "
                             f"folder writable or pass --db DIR")
    return None


def _writer_keys(conn: Connection) -> dict[str, int]:
    """The writer lock's two keys: retriever's, and this store's schema (advisory locks are
    per database already)."""
    schema = str(conn.scalar(text("SELECT current_schema()")))
    return {"space": WRITER_LOCK_SPACE, "key": zlib.crc32(schema.encode()) & 0x7FFFFFFF}


def _with_driver(url: URL) -> URL:
    """`postgresql://` (and `postgres://`) without a driver name means psycopg 3, the one
    `pip install 'retriever[postgres]'` brings (SQLAlchemy would look for psycopg2)."""
    return url.set(drivername="postgresql+psycopg") if url.drivername in (
        "postgresql", "postgres") else url


def _options(url: URL, read_only: bool) -> dict:
    """create_engine's options: PostgreSQL checks a pooled connection before reusing it (a
    server restarted under `retriever serve`), and a read-only store's sessions are read-only."""
    if url.get_backend_name() != "postgresql":
        return {}
    options: dict = {"pool_pre_ping": True}
    if read_only:
        options["connect_args"] = {"options": "-c default_transaction_read_only=on"}
    return options


def _bad_url(url: str, error: Exception) -> BadStoreUrl:
    """A URL SQLAlchemy cannot open (shown without its password), with the fix in `reason`."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        shown = url
    if isinstance(error, ImportError):
        reason = (f"its database driver is not installed ({error}): for PostgreSQL, pip install "
                  f"'retriever[postgres]' and use postgresql+psycopg://")
    else:
        reason = (f"{error}: pass a SQLAlchemy URL such as sqlite:////abs/path/store.db or "
                  f"postgresql+psycopg://user@host/dbname")
    return BadStoreUrl(f"store URL {shown!r}: {reason}", shown, reason)


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
