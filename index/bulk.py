"""The bulk half of `Store.write_files`: files replaced by path, then new files, items and
vectors inserted with the ids the database's own counters give them, so nothing is read back.
One executemany of a prepared INSERT a table on SQLite, a binary COPY on PostgreSQL; driver
SQL, not SQLAlchemy statements compiled per row (bench/scale.py)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from index.keywords import add_new as add_keywords
from index.keywords import drop_files as drop_keywords
from index.records import FileRecord, ItemRecord
from index.sql import (
    PG_COPY,
    PG_DELETE_FILES,
    PG_NEXT_IDS,
    PG_SEQUENCE,
    SQLITE_DELETE_FILES,
    SQLITE_INSERT,
    SQLITE_ITEMS_OF_FILES,
    SQLITE_LAST_ID,
)
from index.store_errors import server_error

if TYPE_CHECKING:
    from sqlalchemy import Connection

# The columns write_files fills, in the order of the tuples it builds for each table, with the
# type PostgreSQL's binary COPY sends each as: the tables of index.migrations, which state the
# schema (tests/test_store_bulk.py holds these names and types to the migrated tables)
BULK_COLUMNS = {
    "files": (("id", "int8"), ("path", "text"), ("kind", "text"), ("content_hash", "text"),
              ("size", "int8"), ("mtime", "float8"), ("width", "int8"), ("height", "int8"),
              ("caption", "text"), ("taken_at", "float8"), ("indexed_at", "float8")),
    "items": (("id", "int8"), ("file_id", "int8"), ("kind", "text"), ("position", "int8"),
              ("passage", "text"), ("time", "float8"), ("page", "int8"), ("section", "text")),
    "vectors": (("item_id", "int8"), ("data", "bytea")),
}


def insert_rows(conn: Connection, batch: Sequence[tuple[FileRecord, Sequence[ItemRecord]]],
                blobs: list[bytes], name: str) -> list[int]:
    """Insert the files, their items, vectors and keyword rows (index.keywords; `blobs`: the
    items' vectors, encoded).
    Returns the new item ids, in batch order."""
    items = [(n, it) for n, (_, its) in enumerate(batch) for it in its]
    file_ids = _new_ids(conn, "files", len(batch))
    item_ids = _new_ids(conn, "items", len(items))
    now = time.time()
    _bulk_insert(conn, name, "files", [
        (i, f.path, f.kind, f.content_hash, f.size, f.mtime, f.width, f.height, f.caption,
         f.taken_at, now) for i, (f, _) in zip(file_ids, batch, strict=True)])
    _bulk_insert(conn, name, "items", [(i, file_ids[n], it.kind, it.position, it.passage,
                                        it.time, it.page, it.section)
                                       for i, (n, it) in zip(item_ids, items, strict=True)])
    _bulk_insert(conn, name, "vectors", list(zip(item_ids, blobs, strict=True)))
    add_keywords(conn, item_ids)
    return item_ids


def _new_ids(conn: Connection, table: str, count: int) -> list[int]:
    """The ids `count` rows inserted into `table` now get, in order, from the database's own
    counter, as an INSERT leaving out the id would: the table's PostgreSQL sequence; on SQLite
    one past the largest id the table holds, or (AUTOINCREMENT: items) ever held. The write
    lock is held by then (`delete_files` ran in this transaction); were it not, a writer
    taking the same ids would make the insert fail, never share them."""
    if count == 0:
        return []
    if conn.dialect.name == "postgresql":  # the sequence named once: 8x faster than per id
        sequence = conn.exec_driver_sql(PG_SEQUENCE, (table,)).scalar_one()
        return list(conn.exec_driver_sql(PG_NEXT_IDS, (sequence, count)).scalars().all())
    last = conn.exec_driver_sql(SQLITE_LAST_ID.format(table=table), (table,)).scalar_one()
    return list(range(last + 1, last + 1 + count))


def _bulk_insert(conn: Connection, name: str, table: str, rows: list[tuple]) -> None:
    """Insert `rows`, tuples in BULK_COLUMNS[table]'s order, in this transaction."""
    if not rows:
        return
    columns = [column for column, _ in BULK_COLUMNS[table]]
    if conn.dialect.name == "postgresql":
        _copy(conn, name, table, rows)
    else:
        conn.exec_driver_sql(SQLITE_INSERT.format(table=table, columns=", ".join(columns),
                                                  marks=", ".join("?" * len(columns))), rows)


def _copy(conn: Connection, name: str, table: str, rows: list[tuple]) -> None:
    """PostgreSQL's COPY FROM STDIN, binary, on the transaction's own connection: several
    times faster than INSERTs (bench/scale.py). The driver's errors are named here, as the
    engine's `handle_error` names those of the statements it runs."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    statement = PG_COPY.format(table=table,
                               columns=", ".join(column for column, _ in BULK_COLUMNS[table]))
    raw: psycopg.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types([kind for _, kind in BULK_COLUMNS[table]])
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as error:
        raise (server_error(name, error, raw.broken)
               or DBAPIError.instance(statement, None, error, psycopg.Error)) from error


def delete_files(conn: Connection, paths: Sequence[str]) -> list[int]:
    """Delete the files at `paths` (their items, vectors, tags and keyword rows cascade, or on
    SQLite the keyword rows are dropped first: index.keywords); returns the ids of
    their items. Driver SQL: binding thousands of paths through SQLAlchemy costs more than the
    statements (bench/scale.py). PostgreSQL takes the paths as one array, sent binary (`%b`),
    in one statement (its SELECT sees the items before the cascade)."""
    if conn.dialect.name == "postgresql":
        return list(conn.exec_driver_sql(PG_DELETE_FILES, (list(paths),)).scalars().all())
    marks = ", ".join("?" * len(paths))
    drop_keywords(conn, paths)  # first: FTS5 deletes a row by the values it was indexed with
    ids = list(conn.exec_driver_sql(SQLITE_ITEMS_OF_FILES.format(marks=marks),
                                    tuple(paths)).scalars().all())
    conn.exec_driver_sql(SQLITE_DELETE_FILES.format(marks=marks), tuple(paths))
    return ids
