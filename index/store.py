"""The metadata store: the source of truth, which the FAISS indexes are rebuilt from.

It holds files, the items embedded from them (an image, or one passage of a text), and each
item's vector as a float32 blob. SQLite by default, or PostgreSQL (`postgresql+psycopg://...`).
The store is a room of small modules, each with one job:
- index/records.py: the records it takes and answers, and the vector blob's format;
- index/sql.py: every statement, written once, in SQL both databases read;
- index/queries.py: the reads (`Queries`); this module: the writes, runs, tags, the lock;
- index/connection.py: a URL opened, and the executor that runs the statements: SQLAlchemy
  Core, or for a one-off search of a current SQLite store sqlite3 alone (`open_store`);
- index/bulk.py: `write_files`' bulk inserts (executemany, PostgreSQL's binary COPY);
- index/keywords.py: the keyword rows kept in step with the writes, and the keyword query;
- index/store_errors.py: the database's errors as named ones;
- index/migrations.py: the schema, stated once, and its version.
"""

from __future__ import annotations

import json
import os
import socket
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from index import keywords, sql
from index.bulk import delete_files, insert_rows
from index.connection import CoreExecutor, CoreTransaction, PlainExecutor, open_core, open_plain
from index.kinds import KINDS
from index.queries import Queries
from index.records import (
    VECTOR_DTYPE,
    FailureRecord,
    FileRecord,
    ItemRecord,
    ModelRecord,
    PlacedTag,
    TagRecord,
    ThresholdRecord,
    WriteResult,
    encode,
)
from retriever.errors import StoreError

if TYPE_CHECKING:
    from sqlalchemy import Engine

WRITER_LOCK_SPACE = 0x52455452  # "RETR": the first key of the writer's advisory lock


class Store(Queries):
    """`read_only`: a store is opened without writing anything (SQLite: no migration, no WAL
    files created; PostgreSQL: read-only transactions); a write raises `IndexReadOnly`. The
    database's errors (damaged file, full disk, read-only, a server out of reach) are raised as
    the named errors of `retriever.errors` (index.store_errors)."""

    def __init__(self, url: str, read_only: bool = False) -> None:
        self._attach(open_core(url, read_only))

    @classmethod
    def on(cls, executor: CoreExecutor | PlainExecutor) -> Store:
        """The store an executor has opened (`open_store`)."""
        store = cls.__new__(cls)
        store._attach(executor)
        return store

    def _attach(self, executor: CoreExecutor | PlainExecutor) -> None:
        self.executor = executor
        place = executor.place
        self.url, self.read_only, self.name = place.url, place.read_only, place.name
        self.path = place.path  # the SQLite file
        self.postgresql = place.postgresql  # then the writer lock is in the store

    @property
    def engine(self) -> Engine:
        """SQLAlchemy's engine of this store (made on first use where sqlite3 reads it)."""
        return self.executor.core().engine

    def close(self) -> None:
        self.executor.close()

    # --- the writer lock (PostgreSQL; a SQLite store's writer locks a file beside it) -------

    @contextmanager
    def writer_lock(self, wait: bool) -> Iterator[bool]:
        """Hold this store's writer lock for the duration: an advisory lock of a connection of
        its own, which the server releases when that connection ends, also when this process
        dies, on whichever machine. Yields False, holding nothing, if another session holds it
        (unless `wait`: then it waits for it)."""
        from sqlalchemy.exc import SQLAlchemyError

        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        session = CoreTransaction(conn)
        keys, held = _writer_keys(session), False
        try:
            session.rows(sql.PG_NAME_SESSION, {
                "name": f"retriever pid {os.getpid()} on {socket.gethostname()} "
                        f"since {time.strftime('%H:%M:%S')}"})
            if wait:
                session.rows(sql.PG_LOCK, keys)
            held = wait or bool(session.rows(sql.PG_TRY_LOCK, keys)[0][0])
            yield held
        finally:
            # released now: a server ends a session a moment after its connection closes
            with suppress(SQLAlchemyError, StoreError):  # a lost connection released it
                if held:
                    session.rows(sql.PG_UNLOCK, keys)
            conn.invalidate()  # closed, not pooled: its name goes with it

    def writer(self) -> str | None:
        """Who holds the writer lock ("retriever pid N on HOST since HH:MM:SS"), or None."""
        with self.engine.connect() as conn:
            session = CoreTransaction(conn)
            rows = session.rows(sql.PG_LOCK_HOLDER, _writer_keys(session))
            return rows[0][0] if rows else None

    # --- writing ----------------------------------------------------------------------------

    def set_model(self, record: ModelRecord) -> None:
        with self.executor.begin() as tx:
            tx.rows(sql.SET_MODEL, _model_params(record))

    def set_duplicate_threshold(self, record: ThresholdRecord) -> None:
        """Record `duplicates`' measured threshold (replacing the one before)."""
        with self.executor.begin() as tx:
            tx.rows(sql.SET_DUPLICATE_THRESHOLD, asdict(record))

    def write_files(self, batch: Sequence[tuple[FileRecord, Sequence[ItemRecord]]]) -> WriteResult:
        """Insert or replace each file with its items and vectors, all in one transaction.
        A vector holding NaN or inf is a caller's bug (the indexer reports such files): it is
        refused, whole batch and all, rather than stored to rank nonsense forever."""
        items = [it for _, its in batch for it in its]
        with np.errstate(over="ignore"):  # a float64 past float32's range: inf, refused
            blobs = [encode(it.vector) for it in items]  # as stored, in the order of `items`
        if not np.isfinite(np.frombuffer(b"".join(blobs), VECTOR_DTYPE)).all():
            raise ValueError("refusing to store a vector with NaN or inf")
        if len({len(blob) for blob in blobs}) > 1:  # one model, one dim
            raise ValueError("refusing to store vectors of different lengths in one batch")
        result = WriteResult()
        with self.executor.begin() as tx:
            for chunk in sql.chunks([f.path for f, _ in batch]):  # replaced files go first
                result.removed += delete_files(tx.connection, chunk)
            item_ids = insert_rows(tx.connection, batch, blobs, self.name)
            tx.rows(sql.BUMP)
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
        with self.executor.begin() as tx:
            for chunk in sql.chunks(list(paths)):
                ids += delete_files(tx.connection, chunk)
            tx.rows(sql.BUMP)
        return ids

    def clear(self) -> None:
        """Delete every file, item, vector, failure and the model record, in one transaction."""
        with self.executor.begin() as tx:
            keywords.clear(tx, self.postgresql)
            for statement in (*sql.CLEAR, sql.BUMP):
                tx.rows(statement)

    def touch_files(self, records: Sequence[FileRecord]) -> None:
        """Update size, mtime and caption of files whose content is unchanged (no re-encode),
        and the keyword rows of those whose caption changed."""
        with self.executor.begin() as tx:
            recaptioned = keywords.recaption(tx, records, self.postgresql)
            tx.many(sql.TOUCH_FILE, [{"path": r.path, "size": r.size, "mtime": r.mtime,
                                      "caption": r.caption, "taken_at": r.taken_at}
                                     for r in records])
            keywords.add_at(tx, recaptioned, self.postgresql)

    # --- runs and failures ------------------------------------------------------------------

    def start_run(self) -> int:
        """Open a run; runs a killed process left open are marked interrupted."""
        with self.executor.begin() as tx:
            tx.rows(sql.INTERRUPT_RUNS)
            return int(tx.rows(sql.START_RUN, {"started_at": time.time()})[0][0])

    def finish_run(self, run_id: int, stats: dict) -> None:
        with self.executor.begin() as tx:
            tx.rows(sql.FINISH_RUN, {"id": run_id, "finished_at": time.time(),
                                     "stats": json.dumps(stats)})

    def record_failures(self, run_id: int, failures: Sequence[FailureRecord]) -> None:
        with self.executor.begin() as tx:
            tx.many(sql.RECORD_FAILURE, [{"path": f.path, "size": f.size, "mtime": f.mtime,
                                          "reason": f.reason, "run_id": run_id}
                                         for f in failures])

    def clear_failures(self, paths: Iterable[str]) -> None:
        with self.executor.begin() as tx:
            for statement, params in sql.with_list(sql.CLEAR_FAILURES, list(paths), "paths"):
                tx.rows(statement, params)

    def mark_words_read(self, paths: Sequence[str]) -> None:
        """Record that `--ocr` read the words of these images (found some or not): a later
        `--ocr` run leaves them be until their bytes change (a rewritten row starts unread)."""
        with self.executor.begin() as tx:
            tx.many(sql.MARK_WORDS_READ, [{"path": path} for path in paths])

    # --- tags ---------------------------------------------------------------------------------

    def replace_tags(self, label_set: str, item_ids: Sequence[int],
                     tags: Sequence[TagRecord]) -> None:
        """In one transaction: drop `label_set`'s tags of `item_ids`, then store `tags` under it.
        Tags leave FAISS alone, so the generation is not bumped."""
        with self.executor.begin() as tx:
            for statement, params in sql.with_list(sql.DROP_TAGS, [int(i) for i in item_ids],
                                                   "ids", {"label_set": label_set}):
                tx.rows(statement, params)
            tx.many(sql.ADD_TAG, [{"item_id": t.item_id, "label_set": label_set,
                                   "label": t.label, "score": t.score} for t in tags])

    def place_tags(self, tags: Sequence[PlacedTag]) -> int:
        """Put each tag on the item now at its place, in one transaction; a tag whose place
        holds no item any more is dropped. Returns how many were put back."""
        with self.executor.begin() as tx:
            return _place_tags(tx, tags)

    def replace_all(self, batches: Iterable[Sequence[tuple[FileRecord, Sequence[ItemRecord]]]],
                    model: ModelRecord, failures: Sequence[FailureRecord],
                    words_read: Sequence[str]) -> None:
        """In ONE transaction: every file, item, vector, failure and the model become those
        given (`index --switch`: a staged store's, `batches` of files read from it as this
        runs); the tags go back on the items at their places, the images whose words were
        read stay so marked. New ids, as `write_files` gives them; the generation is bumped."""
        tags = self.placed_tags()  # the writer holds the lock: no tag changes meanwhile
        with self.executor.begin() as tx:
            keywords.clear(tx, self.postgresql)
            for statement in sql.CLEAR:
                tx.rows(statement)
            for batch in batches:
                insert_rows(tx.connection, batch,
                            [encode(it.vector) for _, its in batch for it in its], self.name)
            tx.rows(sql.SET_MODEL, _model_params(model))
            tx.many(sql.MARK_WORDS_READ, [{"path": path} for path in words_read])
            tx.many(sql.RECORD_FAILURE, [{"path": f.path, "size": f.size, "mtime": f.mtime,
                                          "reason": f.reason, "run_id": 0} for f in failures])
            _place_tags(tx, tags)
            tx.rows(sql.BUMP)


def open_store(url: str, read_only: bool = False, reading: bool = False) -> Store:
    """The store at `url`, as `Store(url, read_only)` opens it; or, for a caller that will only
    read (`reading`: a one-off search), a current SQLite store read through sqlite3 alone."""
    plain = open_plain(url, read_only) if reading else None
    return Store.on(plain) if plain is not None else Store(url, read_only)


def _model_params(record: ModelRecord) -> dict[str, object]:
    return {"name": record.name, "pretrained": record.pretrained, "dim": record.dim,
            "fingerprint": record.fingerprint, "precision": record.precision,
            "created_at": time.time()}


def _place_tags(tx: CoreTransaction, tags: Sequence[PlacedTag]) -> int:
    """`Store.place_tags` in the transaction `tx`."""
    where: dict[tuple[str, str, int], int] = {}
    for statement, params in sql.with_list(sql.ITEMS_AT, sorted({t.path for t in tags}),
                                           "paths"):
        where.update(((path, kind, position), item_id)
                     for path, kind, position, item_id in tx.rows(statement, params))
    placed = {(where[t.path, t.kind, t.position], t.label_set, t.label): t.score
              for t in tags if (t.path, t.kind, t.position) in where}
    tx.many(sql.ADD_TAG, [{"item_id": item_id, "label_set": label_set, "label": label,
                           "score": score}
                          for (item_id, label_set, label), score in placed.items()])
    return len(placed)


def _writer_keys(session: CoreTransaction) -> dict[str, int]:
    """The writer lock's two keys: retriever's, and this store's schema (advisory locks are
    per database already)."""
    schema = str(session.rows(sql.PG_CURRENT_SCHEMA)[0][0])
    return {"space": WRITER_LOCK_SPACE, "key": zlib.crc32(schema.encode()) & 0x7FFFFFFF}
