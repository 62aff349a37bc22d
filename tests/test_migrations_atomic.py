"""Migrations are atomic: the disk fills at any step of a first run's migrations, and the store
is left at exactly the version before, opening and migrating fully once space is freed. On
SQLite and PostgreSQL (`stores`).

The disk is filled by the driver itself failing the n-th statement or commit with its own
disk-full error (SQLITE_FULL, SQLSTATE 53100), raised where the database's would be, so it takes
the store's own error path; every step is tried in turn."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine.default import DefaultDialect

from index.migrations import LATEST
from index.store import Store
from retriever.errors import DiskFull

from .helpers import engine_at_version

STEPS = ("do_execute", "do_execute_no_params", "do_executemany", "do_commit")
SQLITE_FULL = 13


def disk_full(backend: str) -> Exception:
    """The driver's own error for a full disk."""
    if backend == "sqlite":
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorcode = SQLITE_FULL  # type: ignore[attr-defined]
        return error
    import psycopg.errors

    return psycopg.errors.DiskFull("could not extend file: No space left on device")


@contextmanager
def full_at(step: int | None, backend: str) -> Iterator[list[str]]:
    """While inside, the disk is full from the `step`-th (0-based) statement or commit on; the
    list yielded names each step taken (None: nothing fails, the steps are only counted)."""
    taken: list[str] = []

    def failing(name: str):
        original = getattr(DefaultDialect, name)

        def run(self, *args, **kwargs):
            taken.append(f"{name} {args[1] if name != 'do_commit' else ''}".strip())
            if step is not None and len(taken) > step:
                raise disk_full(backend)
            return original(self, *args, **kwargs)

        return run

    with pytest.MonkeyPatch.context() as patch:
        for name in STEPS:
            patch.setattr(DefaultDialect, name, failing(name))
        yield taken


def shape(url: str) -> tuple[set[int], dict[str, tuple[list[str], list[str]]]]:
    """(versions recorded, table -> (its columns, its named indexes)) of the store at `url`,
    the bookkeeping table left out of the second."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            schema = inspect(conn)
            tables = schema.get_table_names()
            versions = ({r[0] for r in conn.execute(text("SELECT version FROM schema_migrations"))}
                        if "schema_migrations" in tables else set())
            return versions, {t: (sorted(c["name"] for c in schema.get_columns(t)),
                                  sorted(str(i["name"]) for i in schema.get_indexes(t)
                                         if str(i["name"]).startswith("ix_")))
                              for t in tables if t != "schema_migrations"}
    finally:
        engine.dispose()


def emptied(url: str) -> str:
    """`url` with its store made empty again, as a first run finds it."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    finally:
        engine.dispose()
    if engine.dialect.name == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{engine.url.database}{suffix}").unlink(missing_ok=True)
    return url


def test_a_full_disk_at_any_step_of_the_migrations_leaves_the_version_before(stores):
    backend = "sqlite" if stores.server is None else "postgresql"
    url = stores.url()
    expected = {}  # version -> the shape a store of that release has
    for version in range(LATEST + 1):
        engine_at_version(emptied(url), version).dispose()
        expected[version] = shape(url)
    emptied(url)
    with full_at(None, backend) as steps:
        Store(url).close()
    assert shape(url) == expected[LATEST]
    assert len(steps) > 3 * LATEST  # each migration: its statements, its record, its commit
    for step in range(len(steps)):
        emptied(url)
        with full_at(step, backend) as taken, pytest.raises(DiskFull):
            Store(url)
        assert len(taken) == step + 1, taken  # the same steps, up to the one that failed
        versions, tables = shape(url)
        done = max(versions, default=0)
        assert versions == set(range(1, done + 1)), (steps[step], versions)
        assert tables == expected[done][1], (steps[step], done)
        Store(url).close()  # space freed: the store opens, and is migrated to the end
        assert shape(url) == expected[LATEST], steps[step]
