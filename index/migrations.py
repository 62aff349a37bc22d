"""Numbered schema migrations for the metadata store.

Each migration runs in one transaction together with the row that records it, so a store is
always at exactly one known version. Never edit a released migration: append a new one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, inspect, text

Migration = tuple[int, str, Callable[[Connection], None]]


def _v1_initial(conn: Connection) -> None:
    statements = [
        """CREATE TABLE collection_model (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            name TEXT NOT NULL,
            pretrained TEXT NOT NULL,
            dim INTEGER NOT NULL,
            created_at FLOAT NOT NULL
        )""",
        """CREATE TABLE files (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime FLOAT NOT NULL,
            width INTEGER,
            height INTEGER,
            caption TEXT,
            indexed_at FLOAT NOT NULL
        )""",
        "CREATE INDEX ix_files_content_hash ON files (content_hash)",
        # AUTOINCREMENT: an item id is never reused, so a stale FAISS id can never name
        # another item.
        """CREATE TABLE items (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            file_id INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            position INTEGER NOT NULL,
            passage TEXT
        )""",
        "CREATE INDEX ix_items_file_id ON items (file_id)",
        "CREATE INDEX ix_items_kind ON items (kind)",
        """CREATE TABLE vectors (
            item_id INTEGER PRIMARY KEY REFERENCES items (id) ON DELETE CASCADE,
            data BLOB NOT NULL
        )""",
    ]
    for statement in statements:
        conn.execute(text(statement))


def _v2_runs_failures_generation(conn: Connection) -> None:
    statements = [
        # Bumped by every write transaction; a FAISS file records the generation it was saved
        # at, so a reader can tell a stale file from a current one.
        """CREATE TABLE store_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            generation INTEGER NOT NULL
        )""",
        "INSERT INTO store_state (id, generation) VALUES (1, 0)",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at FLOAT NOT NULL,
            finished_at FLOAT,
            status TEXT NOT NULL,
            stats TEXT NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE failures (
            path TEXT PRIMARY KEY,
            size INTEGER,
            mtime FLOAT,
            reason TEXT NOT NULL,
            run_id INTEGER NOT NULL
        )""",
    ]
    for statement in statements:
        conn.execute(text(statement))


def _v3_taken_at(conn: Connection) -> None:
    # When a photo was taken (EXIF DateTimeOriginal), else the file's mtime: --after/--before.
    conn.execute(text("ALTER TABLE files ADD COLUMN taken_at FLOAT"))
    conn.execute(text("UPDATE files SET taken_at = mtime"))
    conn.execute(text("CREATE INDEX ix_files_taken_at ON files (taken_at)"))


def _v4_model_fingerprint(conn: Connection) -> None:
    # sha256 of the model's config and weights (retriever.encoding.models.model_fingerprint):
    # a config
    # or weights file edited in place changes it, and the index refuses the changed model.
    # NULL for stores made before: the next `retriever index` records it.
    conn.execute(text("ALTER TABLE collection_model ADD COLUMN fingerprint TEXT"))


MIGRATIONS: list[Migration] = [
    (1, "initial: collection_model, files, items, vectors", _v1_initial),
    (2, "store_state generation, runs, failures", _v2_runs_failures_generation),
    (3, "files.taken_at", _v3_taken_at),
    (4, "collection_model.fingerprint", _v4_model_fingerprint),
]
LATEST = MIGRATIONS[-1][0]


def applied_versions(conn: Connection) -> set[int]:
    if not inspect(conn).has_table("schema_migrations"):
        return set()
    return {row[0] for row in conn.execute(text("SELECT version FROM schema_migrations"))}


def pending(conn: Connection) -> list[int]:
    """Versions a store still lacks (read without writing: a read-only store is checked)."""
    done = applied_versions(conn)
    return [version for version, _, _ in MIGRATIONS if version not in done]


def migrate(connect: Callable[[], object]) -> list[int]:
    """Apply every pending migration; returns the versions applied now.

    `connect` is `engine.begin`: each migration gets its own transaction.
    """
    with connect() as conn:  # type: ignore[attr-defined]
        conn.execute(text(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at FLOAT NOT NULL)"
        ))
        done = applied_versions(conn)
    applied = []
    for version, name, apply in MIGRATIONS:
        if version in done:
            continue
        with connect() as conn:  # type: ignore[attr-defined]
            apply(conn)
            conn.execute(
                text("INSERT INTO schema_migrations VALUES (:v, :n, :t)"),
                {"v": version, "n": name, "t": time.time()},
            )
        applied.append(version)
    return applied
