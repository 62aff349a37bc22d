"""The metadata store: every SQL statement retriever runs lives here.

The store is the source of truth. It holds files, the items embedded from them (an image, or one
passage of a text), and each item's vector as a float32 blob, so the FAISS index can always be
rebuilt from it. SQLite by default, or PostgreSQL (`postgresql+psycopg://...`); the SQL is
portable, the few differences (DDL words, error codes, the writer lock) are chosen per database.
SQLAlchemy and the mapped tables (index/tables.py) are imported when the first `Store` is made;
a one-off search of a current SQLite store reads it through sqlite3 alone (`SqliteReader`).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np

from index.kinds import IMAGE, IMAGE_TEXT, KINDS, TEXT, VIDEO  # noqa: F401  (re-exported)
from retriever.errors import BadStoreUrl, DiskFull, IndexReadOnly, StoreDamaged, StoreError

if TYPE_CHECKING:  # bound at run time by `_import_sqlalchemy`, when a `Store` is first made
    from sqlalchemy import Engine, create_engine, delete, event, func, select, text, update
    from sqlalchemy.engine import URL, Connection, ExceptionContext, make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
    from sqlalchemy.orm import Session
    from sqlalchemy.sql.elements import ColumnElement

    from index.migrations import LATEST, migrate, pending
    from index.tables import (
        Base,
        CollectionModel,
        Failure,
        File,
        Item,
        Run,
        StoreState,
        Tag,
        Vector,
    )

VECTOR_DTYPE = np.dtype("<f4")  # little-endian float32, whatever the machine
# A new SQLite store's page size. 4 KiB pages hold one 2 KiB vector (512-d) each, the rest of
# the page unused; 32 KiB pages hold 15: half the bytes a row, and about twice the write rate.
SQLITE_PAGE_SIZE = 32_768
# The writer's page cache (SQLite's default: 2 MB): a batch of 2,000 files dirties about one
# page of the content_hash index a file (random keys), and the pages it dirties stay here until
# the commit rather than spilling to the WAL half-way, to be written again.
SQLITE_WRITER_CACHE_KIB = 65_536
# WAL bytes between automatic checkpoints (SQLite's default: 1,000 pages): a page written by
# several batches meanwhile (the content_hash index's) is copied into the database once.
SQLITE_CHECKPOINT_BYTES = 256 * 2**20


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
class PlacedTag:
    """A tag with its item named by where it is, not by id (`Store.placed_tags`)."""

    path: str
    kind: str
    position: int
    label_set: str
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


def _import_sqlalchemy() -> None:
    """Bind SQLAlchemy, its ORM, the mapped tables and the migrations to this module's names
    (see TYPE_CHECKING above): ~250 ms of imports, paid by the first `Store` made. A one-off
    search of a current SQLite store reads through `SqliteReader`, which never needs them."""
    global ArgumentError, DBAPIError, SQLAlchemyError, Session, create_engine, delete, event
    global func, make_url, select, text, update, LATEST, migrate, pending
    global Base, CollectionModel, Failure, File, Item, Run, StoreState, Tag, Vector
    from sqlalchemy import create_engine, delete, event, func, select, text, update
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
    from sqlalchemy.orm import Session

    from index.migrations import LATEST, migrate, pending
    from index.tables import (
        Base,
        CollectionModel,
        Failure,
        File,
        Item,
        Run,
        StoreState,
        Tag,
        Vector,
    )


class Store:
    """`read_only`: a store is opened without writing anything (SQLite: no migration, no WAL
    files created; PostgreSQL: read-only transactions); a write raises `IndexReadOnly`. The
    database's errors (damaged file, full disk, read-only, a server out of reach) are raised as
    the named errors of `retriever.errors`, by `_translate`."""

    def __init__(self, url: str, read_only: bool = False) -> None:
        _import_sqlalchemy()
        self.url = url
        self.read_only = read_only
        try:
            parsed = _with_driver(make_url(url))
            sqlite = parsed.get_backend_name() == "sqlite"
            _check_kept(parsed)
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
        try:
            if read_only:
                self._check_schema()
            else:
                migrate(self.engine.begin)  # each migration all or nothing (index.migrations)
        except BaseException:
            self.engine.dispose()  # a store that cannot open keeps no connection
            raise

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
        error = (_server_error(self.name, context.original_exception,
                               context.connection is None or context.is_disconnect)
                 if self.postgresql
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
        items = [it for _, its in batch for it in its]
        with np.errstate(over="ignore"):  # a float64 past float32's range: inf, refused
            blobs = [_encode(it.vector) for it in items]  # as stored, in the order of `items`
        if not np.isfinite(np.frombuffer(b"".join(blobs), VECTOR_DTYPE)).all():
            raise ValueError("refusing to store a vector with NaN or inf")
        if len({len(blob) for blob in blobs}) > 1:  # one model, one dim
            raise ValueError("refusing to store vectors of different lengths in one batch")
        result = WriteResult()
        with Session(self.engine) as s, s.begin():
            conn = s.connection()
            for chunk in _chunks([f.path for f, _ in batch]):  # replaced files go first
                result.removed += _delete_files(conn, chunk)
            item_ids = _insert_rows(conn, batch, blobs, self.name)
            _bump(s)
        for kind in KINDS:
            rows = [n for n, it in enumerate(items) if it.kind == kind]
            if rows:  # the vectors as stored, read back from their blobs
                result.added[kind] = (np.array([item_ids[n] for n in rows], dtype=np.int64),
                                      np.frombuffer(b"".join(blobs[n] for n in rows),
                                                    VECTOR_DTYPE).reshape(len(rows), -1)
                                      .astype(np.float32))
        return result

    def remove_files(self, paths: Iterable[str]) -> list[int]:
        """Delete files (and their items and vectors); returns the removed item ids."""
        ids: list[int] = []
        with Session(self.engine) as s, s.begin():
            for chunk in _chunks(list(paths)):
                ids += _delete_files(s.connection(), chunk)
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
        """All stored vectors of one kind (under the folder `prefix`, see `_under`): ids (n,)
        int64 and vectors (n, dim) float32."""
        query = select(Vector.item_id, Vector.data).join(Item).where(Item.kind == kind)
        if prefix is not None:
            query = query.join(File).where(self._under(prefix))
        with Session(self.engine) as s:
            return _stacked(s.execute(query.order_by(Vector.item_id)).all())

    def vector_batches(self, kind: str, size: int = 10_000
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The stored vectors of one kind, in id order, as batches of ids (b,) int64 and
        vectors (b, dim) float32, b <= `size`: one query read as it goes (a server-side cursor
        on PostgreSQL), so memory holds one batch whatever the corpus."""
        query = (select(Vector.item_id, Vector.data).join(Item).where(Item.kind == kind)
                 .order_by(Vector.item_id).execution_options(yield_per=size))
        with Session(self.engine) as s:
            for rows in s.execute(query).partitions():
                yield _stacked(rows)

    def vectors_of(self, ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of the items `ids` (any kind; ids not stored left out): ids (n,)
        int64 ascending and vectors (n, dim) float32. One query (per 10,000 ids): what an
        IVF-PQ search re-ranks exactly (index.rerank)."""
        rows: list = []
        with Session(self.engine) as s:
            for chunk in _chunks(sorted({int(i) for i in ids})):
                rows += s.execute(select(Vector.item_id, Vector.data)
                                  .where(Vector.item_id.in_(chunk))
                                  .order_by(Vector.item_id)).all()
        return _stacked(rows)

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
        """Ids of `kind` items under the folder `prefix` (see `_under`), taken in [after,
        before), tagged `tag` (SQL, indexed)."""
        query = select(Item.id).join(File).where(Item.kind == kind)
        if tag is not None:
            query = query.where(Item.id.in_(select(Tag.item_id).where(Tag.label == tag)))
        if prefix is not None:
            query = query.where(self._under(prefix))
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
        """Every image item (under the folder `prefix`, see `_under`) with its file's size,
        dimensions and hash."""
        query = select(Item.id, File.path, File.size, File.width, File.height,
                       File.content_hash).join(File).where(Item.kind == IMAGE)
        if prefix is not None:
            query = query.where(self._under(prefix))
        with Session(self.engine) as s:
            return [ImageFile(*row) for row in s.execute(query.order_by(Item.id))]

    def _under(self, folder: str) -> ColumnElement[bool]:
        """`files.path` is `folder` or below it: UNDER_SQL, in SQLAlchemy's words, compared
        byte-wise as the range needs (`_paths_bytewise`)."""
        path = File.path if self._paths_bytewise else File.path.collate("C")
        own, low, high = under_bounds(folder)
        return (path == own) | ((path >= low) & (path < high))

    @cached_property
    def _paths_bytewise(self) -> bool:
        """Whether `files.path` sorts byte-wise: on SQLite always, on PostgreSQL in a database
        whose collation is C. Then the folder range uses the path index; under a language's
        collation each comparison says COLLATE "C" (exact, but `files` is scanned)."""
        if not self.postgresql:
            return True
        with self.engine.connect() as conn:  # as JSON: datlocprovider is new in PostgreSQL 15
            database = conn.execute(text("SELECT to_jsonb(d) FROM pg_database d WHERE "
                                         "datname = current_database()")).scalar_one()
        return (database.get("datlocprovider", "c") == "c"  # not ICU's or another's
                and database["datcollate"] in ("C", "POSIX"))

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
            return _labels_by_item(s.execute(select(Tag.item_id, Tag.label).distinct()
                                             .where(Tag.item_id.in_([int(i) for i in ids]))
                                             .order_by(Tag.item_id, Tag.label)))

    def placed_tags(self) -> list[PlacedTag]:
        """Every tag, its item named by place (path, kind, position) rather than id: what
        outlives the items, which `--reindex` makes anew under new ids."""
        with Session(self.engine) as s:
            return [PlacedTag(*row) for row in s.execute(
                select(File.path, Item.kind, Item.position, Tag.label_set, Tag.label, Tag.score)
                .join(Item, Tag.item_id == Item.id).join(File).order_by(Tag.item_id))]

    def place_tags(self, tags: Sequence[PlacedTag]) -> int:
        """Put each tag on the item now at its place, in one transaction; a tag whose place
        holds no item any more is dropped. Returns how many were put back."""
        where: dict[tuple[str, str, int], int] = {}
        with Session(self.engine) as s, s.begin():
            for chunk in _chunks(sorted({t.path for t in tags})):
                where.update(((path, kind, position), item_id) for path, kind, position, item_id
                             in s.execute(select(File.path, Item.kind, Item.position, Item.id)
                                          .join(File).where(File.path.in_(chunk))))
            placed = {(where[t.path, t.kind, t.position], t.label_set, t.label): t.score
                      for t in tags if (t.path, t.kind, t.position) in where}
            s.add_all(Tag(item_id=item_id, label_set=label_set, label=label, score=score)
                      for (item_id, label_set, label), score in placed.items())
        return len(placed)



# A current store's schema version: index.migrations.LATEST, which imports SQLAlchemy
# (tests/test_store_reader.py keeps the two equal).
SCHEMA_VERSION = 6


class SqliteReader(Store):
    """A current SQLite store read through the standard library's sqlite3: the reads a search
    makes, in the SQL `Store` has SQLAlchemy run, with the same answers (tests/
    test_store_reader.py runs both), without SQLAlchemy's ~250 ms of imports: also the vector
    reads that rebuild a stale or damaged FAISS index in memory. Every other `Store` method is
    run by a read-only `Store` made on its first use (`_by_store`): a write raises
    `IndexReadOnly`."""

    def __init__(self, url: str, path: Path, db: sqlite3.Connection) -> None:
        # Store's attributes, without an engine (made on first use) or a migration
        self.url, self.read_only, self.path, self.postgresql = url, True, path, False
        self.name = str(path)
        self._db = db
        self._engine_store: Store | None = None

    @classmethod
    def open(cls, url: str, read_only: bool) -> SqliteReader | None:
        """The store at a `sqlite:///PATH` URL whose schema is current, or None: `Store` then
        opens it, migrates it or says what is wrong. `read_only`: its folder is read-only, and
        the file is opened as `Store` opens it then; else read-write, as a search always did:
        a read-only connection would leave behind the -wal and -shm files SQLite makes to read
        (the last read-write one to close removes them). No statement here writes."""
        path = _plain_sqlite_path(url)
        if path is None or not path.is_file():
            return None
        params = "&".join(f"{k}={v}" for k, v in
                          (_read_only_params(path) if read_only else {"mode": "rw"}).items())
        try:
            db = sqlite3.connect(f"file:{quote(str(path.absolute()))}?{params}", uri=True,
                                 timeout=30)
        except sqlite3.Error:
            return None
        try:
            versions = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
        except sqlite3.Error:  # no store yet, or a damaged one
            versions = set()
        if versions.issuperset(range(1, SCHEMA_VERSION + 1)):
            return cls(url, path, db)
        db.close()
        return None

    @property  # Store's attribute, made here on first use
    def engine(self) -> Engine:  # type: ignore[override]
        return self.sqlalchemy_store().engine

    def sqlalchemy_store(self) -> Store:
        """This store opened by SQLAlchemy, read-only, on first use: what runs the reads this
        class does not write in sqlite3 (and refuses writes). Making it binds SQLAlchemy's
        names (`_import_sqlalchemy`), which `Store`'s own methods use."""
        if self._engine_store is None:
            self._engine_store = Store(self.url, read_only=True)
        return self._engine_store

    def close(self) -> None:
        self._db.close()
        if self._engine_store is not None:
            self._engine_store.close()

    def _rows(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._named_errors():
            return self._db.execute(sql, params).fetchall()

    @contextmanager
    def _named_errors(self) -> Iterator[None]:
        """sqlite3's errors as `Store` names them (`_named_error`)."""
        try:
            yield
        except sqlite3.Error as err:
            named = _named_error(self.path or Path(self.url), err)
            if named is None:
                raise
            raise named from err

    def model(self) -> ModelRecord | None:
        rows = self._rows("SELECT name, pretrained, dim, fingerprint FROM collection_model "
                          "WHERE id = 1")
        return ModelRecord(*rows[0]) if rows else None

    def generation(self) -> int:
        rows = self._rows("SELECT store_state.generation FROM store_state")
        return int(rows[0][0] or 0) if rows else 0

    def has_items(self, kind: str) -> bool:
        return bool(self._rows("SELECT items.id FROM items WHERE items.kind = ? LIMIT 1",
                               (kind,)))

    def count_items(self, kind: str) -> int:
        return int(self._rows("SELECT count(items.id) FROM items WHERE items.kind = ?",
                              (kind,))[0][0] or 0)

    def items(self, ids: Sequence[int]) -> dict[int, ItemView]:
        found: dict[int, ItemView] = {}
        for chunk in _chunks(sorted({int(i) for i in ids})):
            found.update((r[0], ItemView(*r)) for r in self._rows(
                "SELECT items.id, files.path, items.kind, items.position, items.passage, "
                "files.caption, items.time, files.taken_at FROM items JOIN files ON "
                f"files.id = items.file_id WHERE items.id IN ({', '.join('?' * len(chunk))})",
                chunk))
        return found

    def tags(self, ids: Sequence[int]) -> dict[int, list[str]]:
        rows: list[tuple] = []
        for chunk in _chunks(sorted({int(i) for i in ids})):  # ascending: chunks stay in order
            rows += self._rows("SELECT DISTINCT tags.item_id, tags.label FROM tags WHERE "
                               f"tags.item_id IN ({', '.join('?' * len(chunk))}) "
                               "ORDER BY tags.item_id, tags.label", chunk)
        return _labels_by_item(rows)

    def item_ids_where(self, kind: str, prefix: str | None = None, after: float | None = None,
                       before: float | None = None, tag: str | None = None) -> np.ndarray:
        where: list[str] = ["items.kind = ?"]
        params: list[object] = [kind]
        for clause, value in (
                ("items.id IN (SELECT tags.item_id FROM tags WHERE tags.label = ?)", tag),
                (UNDER_SQL, None if prefix is None else under_bounds(prefix)),
                ("files.taken_at >= ?", after), ("files.taken_at < ?", before)):
            if value is not None:
                where.append(clause)
                params.extend(value if isinstance(value, tuple) else [value])  # UNDER_SQL: 3
        rows = self._rows("SELECT items.id FROM items JOIN files ON files.id = items.file_id "
                          f"WHERE {' AND '.join(where)}", params)
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def item_vector(self, item_id: int) -> tuple[str, np.ndarray] | None:
        rows = self._rows("SELECT items.kind, vectors.data FROM items JOIN vectors ON "
                          "items.id = vectors.item_id WHERE items.id = ?", (int(item_id),))
        return (rows[0][0], _decode(rows[0][1])) if rows else None

    def vectors_of(self, ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows: list[tuple] = []
        for chunk in _chunks(sorted({int(i) for i in ids})):  # ascending: chunks stay in order
            rows += self._rows("SELECT vectors.item_id, vectors.data FROM vectors WHERE "
                               f"vectors.item_id IN ({', '.join('?' * len(chunk))}) "
                               "ORDER BY vectors.item_id", chunk)
        return _stacked(rows)

    def vector_batches(self, kind: str, size: int = 10_000
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """What rebuilds a stale or damaged FAISS index in memory: one query read `size` rows
        at a time, in one read snapshot (a writer committing meanwhile is not seen half)."""
        with self._named_errors():
            cursor = self._db.execute(
                "SELECT vectors.item_id, vectors.data FROM vectors JOIN items ON items.id = "
                "vectors.item_id WHERE items.kind = ? ORDER BY vectors.item_id", (kind,))
            while rows := cursor.fetchmany(size):
                yield _stacked(rows)

    def image_items_at(self, paths: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in _chunks(list(paths)):
            found.update(self._rows(
                "SELECT files.path, items.id FROM files JOIN items ON files.id = items.file_id "
                f"WHERE items.kind = ? AND files.path IN ({', '.join('?' * len(chunk))})",
                [IMAGE, *chunk]))
        return found


def _by_store(name: str) -> Callable[..., object]:
    """`Store.<name>` for a `SqliteReader`: run by its read-only `Store` (`sqlalchemy_store`),
    as `Store`'s code needs SQLAlchemy's names bound, which the reader never imports itself."""
    def method(self: SqliteReader, *args: object, **kwargs: object) -> object:
        return getattr(self.sqlalchemy_store(), name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


for _name, _method in list(vars(Store).items()):  # every public Store method the reader lacks
    if callable(_method) and not _name.startswith("_") and _name not in vars(SqliteReader):
        setattr(SqliteReader, _name, _by_store(_name))


def open_store(url: str, read_only: bool = False, reading: bool = False) -> Store:
    """The store at `url`, as `Store(url, read_only)` opens it; or, for a caller that will only
    read (`reading`: a one-off search), a current SQLite store as a `SqliteReader`."""
    reader = SqliteReader.open(url, read_only) if reading else None
    return reader if reader is not None else Store(url, read_only)


def _plain_sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///PATH` URL, PATH as SQLAlchemy reads it, or None for any other
    URL, and for one SQLAlchemy would decode (%-escapes, a query) or not open as a file."""
    head = "sqlite:///"
    path = url[len(head):] if url.startswith(head) else ""
    return Path(path) if path and path != ":memory:" and not set(path) & set("%?") else None


# A folder filter: the folder's own key (a file given as the folder), or a key below it. Keys
# below a folder are those that start with its key and '/' (retriever.media.scan.path_key),
# which sort in [low, high) byte-wise, '0' being '/' + 1: an indexed range query, exact on a
# path component and case-sensitive, where LIKE ignores ASCII case and sees wildcards.
UNDER_SQL = "(files.path = ? OR (files.path >= ? AND files.path < ?))"


def under_bounds(folder: str) -> tuple[str, str, str]:
    """(own, low, high) of UNDER_SQL for the key of a folder, a trailing '/' or not."""
    base = folder.rstrip("/")
    return base or "/", base + "/", base + "0"


def _labels_by_item(rows: Iterable[tuple[int, str]]) -> dict[int, list[str]]:
    """(item id, label) rows, in order -> item id -> its labels."""
    found: dict[int, list[str]] = {}
    for item_id, label in rows:
        found.setdefault(item_id, []).append(label)
    return found


# The columns write_files fills, in the order of the tuples it builds for each table.
BULK_COLUMNS = {
    "files": ("id", "path", "kind", "content_hash", "size", "mtime", "width", "height",
              "caption", "taken_at", "indexed_at"),
    "items": ("id", "file_id", "kind", "position", "passage", "time"),
    "vectors": ("item_id", "data"),
}
PG_BINARY_TYPES = {int: "int8", float: "float8", str: "text", bytes: "bytea"}  # COPY's types


def _insert_rows(conn: Connection, batch: Sequence[tuple[FileRecord, Sequence[ItemRecord]]],
                 blobs: list[bytes], name: str) -> list[int]:
    """Insert the files, their items and vectors, with the ids the database's own counters
    give them (`_new_ids`), so nothing is read back: one executemany of a prepared INSERT a
    table on SQLite, a binary COPY on PostgreSQL. No ORM, no SQLAlchemy statement compiled per
    row (bench/scale.py). `blobs`: the items' vectors, encoded. Returns the new item ids, in
    batch order."""
    items = [(n, it) for n, (_, its) in enumerate(batch) for it in its]
    file_ids = _new_ids(conn, "files", len(batch))
    item_ids = _new_ids(conn, "items", len(items))
    now = time.time()
    _bulk_insert(conn, name, "files", [
        (i, f.path, f.kind, f.content_hash, f.size, f.mtime, f.width, f.height, f.caption,
         f.taken_at, now) for i, (f, _) in zip(file_ids, batch, strict=True)])
    _bulk_insert(conn, name, "items", [(i, file_ids[n], it.kind, it.position, it.passage,
                                        it.time) for i, (n, it) in zip(item_ids, items,
                                                                       strict=True)])
    _bulk_insert(conn, name, "vectors", list(zip(item_ids, blobs, strict=True)))
    return item_ids


def _new_ids(conn: Connection, table: str, count: int) -> list[int]:
    """The ids `count` rows inserted into `table` now get, in order, from the database's own
    counter, as an INSERT leaving out the id would: the table's PostgreSQL sequence; on SQLite
    one past the largest id the table holds, or (AUTOINCREMENT: items) ever held. The write
    lock is held by then (`_delete_files` ran in this transaction); were it not, a writer
    taking the same ids would make the insert fail, never share them."""
    if count == 0:
        return []
    if conn.dialect.name == "postgresql":  # the sequence named once: 8x faster than per id
        sequence = conn.exec_driver_sql("SELECT pg_get_serial_sequence(%s, 'id')",
                                        (table,)).scalar_one()
        return list(conn.exec_driver_sql(
            "SELECT nextval(%s::regclass) AS id FROM generate_series(1, %s) ORDER BY id",
            (sequence, count)).scalars().all())
    last = conn.exec_driver_sql(
        f"SELECT max(coalesce(max(id), 0), coalesce((SELECT seq FROM sqlite_sequence "
        f"WHERE name = ?), 0)) FROM {table}", (table,)).scalar_one()
    return list(range(last + 1, last + 1 + count))


def _bulk_insert(conn: Connection, name: str, table: str, rows: list[tuple]) -> None:
    """Insert `rows`, tuples in BULK_COLUMNS[table]'s order, in this transaction."""
    if not rows:
        return
    columns = BULK_COLUMNS[table]
    if conn.dialect.name == "postgresql":
        _copy(conn, name, table, rows)
    else:
        conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(columns)}) "
                             f"VALUES ({', '.join('?' * len(columns))})", rows)


def _copy(conn: Connection, name: str, table: str, rows: list[tuple]) -> None:
    """PostgreSQL's COPY FROM STDIN, binary, on the transaction's own connection: several
    times faster than INSERTs (bench/scale.py). The driver's errors are named here, as the
    engine's `handle_error` names those of the statements it runs."""
    import psycopg

    columns = BULK_COLUMNS[table]
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    types = [PG_BINARY_TYPES[Base.metadata.tables[table].c[c].type.python_type]
             for c in columns]
    raw: psycopg.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as error:
        raise (_server_error(name, error, raw.broken)
               or DBAPIError.instance(statement, None, error, psycopg.Error)) from error


def _delete_files(conn: Connection, paths: list[str]) -> list[int]:
    """Delete the files at `paths` (their items, vectors and tags cascade); returns the ids of
    their items. Driver SQL: binding thousands of paths through SQLAlchemy's expanding IN
    costs more than the statements (bench/scale.py). PostgreSQL takes the paths as one array,
    sent binary (`%b`), in one statement (its SELECT sees the items before the cascade)."""
    if conn.dialect.name == "postgresql":
        return list(conn.exec_driver_sql(
            "WITH gone AS (DELETE FROM files WHERE path = ANY(%b) RETURNING id) "
            "SELECT items.id FROM items JOIN gone ON gone.id = items.file_id", (paths,))
            .scalars().all())
    where = f"IN ({', '.join('?' * len(paths))})"
    ids = list(conn.exec_driver_sql(
        "SELECT items.id FROM items JOIN files ON files.id = items.file_id "
        f"WHERE files.path {where}", tuple(paths)).scalars().all())
    conn.exec_driver_sql(f"DELETE FROM files WHERE path {where}", tuple(paths))
    return ids


def _encode(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=VECTOR_DTYPE).tobytes()


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


def _stacked(rows: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(item id, vector blob) rows -> ids (n,) int64 and vectors (n, dim) float32; (0, 0)
    when there are none (the dimension unknown)."""
    if not rows:
        return np.empty(0, np.int64), np.empty((0, 0), np.float32)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    blob = b"".join(bytes(r[1]) for r in rows)
    return ids, np.frombuffer(blob, dtype=VECTOR_DTYPE).reshape(len(rows), -1).astype(np.float32)


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
# Seconds to connect (psycopg's connect_timeout): a port that accepts and never answers
# (a firewall, a server hung) is one line after this, not minutes of TCP retries
PG_CONNECT_TIMEOUT = 10


def _server_error(name: str, error: BaseException, lost: bool) -> StoreError | None:
    """A PostgreSQL error as a named one, or None. `lost`: no connection, or not any more."""
    state = getattr(error, "sqlstate", None) or ""
    if lost or state.startswith(PG_UNREACHABLE):
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
    server restarted under `retriever serve`), gives up connecting after PG_CONNECT_TIMEOUT
    (unless the URL sets its own connect_timeout), and a read-only store's sessions are
    read-only."""
    if url.get_backend_name() != "postgresql":
        return {}
    connect: dict = {} if "connect_timeout" in url.query else {
        "connect_timeout": PG_CONNECT_TIMEOUT}
    if read_only:
        connect["options"] = "-c default_transaction_read_only=on"
    return {"pool_pre_ping": True, "connect_args": connect}


def _check_kept(url: URL) -> None:
    """Refuse a SQLite URL of a database that vanishes when the run ends (in memory, or the
    private temporary file of an empty name): an index would report success and keep
    nothing."""
    if url.get_backend_name() != "sqlite":  # a server's database outlives the run
        return
    database = url.database or ""
    uri = url.query.get("uri") in ("true", "1")
    if database in ("", ":memory:") or (uri and (database.startswith("file::memory:") or
                                                 "mode=memory" in database or
                                                 url.query.get("mode") == "memory")):
        raise ArgumentError("an in-memory or temporary database keeps nothing after the run")


def _bad_url(url: str, error: Exception) -> BadStoreUrl:
    """A URL SQLAlchemy cannot open (shown without its password), with the fix in `reason`."""
    try:
        parsed = make_url(url)
        shown = url if parsed.password is None else parsed.render_as_string(hide_password=True)
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
    query = {**_read_only_params(path), "uri": "true"}
    return url.set(database=f"file:{quote(str(path))}", query=query)


def _read_only_params(path: Path) -> dict[str, str]:
    """The SQLite URI parameters of `_read_only`."""
    wal = path.with_name(f"{path.name}-wal").exists()
    return {"mode": "ro", **({} if wal else {"immutable": "1"})}


def _sqlite_pragmas_ro(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.close()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")  # ON DELETE CASCADE needs it in SQLite
    # a new store's pages (an existing one keeps its own): set before WAL mode creates the file
    cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
    cursor.execute("PRAGMA journal_mode = WAL")  # readers (search) never block the writer
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.execute(f"PRAGMA cache_size = -{SQLITE_WRITER_CACHE_KIB}")
    page_size = cursor.execute("PRAGMA page_size").fetchone()[0]  # an old store's: 4 KiB
    cursor.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_CHECKPOINT_BYTES // page_size}")
    cursor.close()
