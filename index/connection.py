"""A store's URL opened, and the two executors that run the statements of index.sql on it:
`CoreExecutor` (SQLAlchemy Core, any database, migrated on opening unless read-only) and
`PlainExecutor` (sqlite3 on a current SQLite store: a one-off read without SQLAlchemy's ~250 ms
of imports). Both answer `rows` and `batches` alike; writes go through `begin`. SQLAlchemy is
imported inside the functions that need it, never by importing this module."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

from index.migrations import APPLIED, LATEST
from index.store_errors import bad_url, sqlite_error, translator

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.engine import URL

Params = Mapping[str, Any]
Rows = Sequence[Sequence[Any]]

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
# Seconds a SQLite connection waits for another's write lock before "database is locked"
# (sqlite3's `timeout` for a one-off read, the PRAGMA on each of SQLAlchemy's connections)
SQLITE_BUSY_S = 30
SQLITE_BUSY = f"PRAGMA busy_timeout = {SQLITE_BUSY_S * 1000}"
# Seconds to connect (psycopg's connect_timeout): a port that accepts and never answers
# (a firewall, a server hung) is one line after this, not minutes of TCP retries
PG_CONNECT_TIMEOUT = 10


class Place(NamedTuple):  # not a dataclass: cheaper to define, in every one-off search
    """Where a store is: `path` its SQLite file (None on a server), `name` what messages
    call it (the file, or the URL without its password)."""

    url: str
    read_only: bool
    path: Path | None
    postgresql: bool
    name: str


class CoreTransaction:
    """One transaction of a `CoreExecutor`: statements of index.sql, committed together.
    `connection`: SQLAlchemy's, for the bulk writes that talk to the driver (index.bulk)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def rows(self, sql: str, params: Params | Sequence[Params] | None = None) -> Rows:
        """Run `sql` (once per mapping, given several) and return what it answers."""
        from sqlalchemy import text

        result = self.connection.execute(text(sql), params or {})
        return result.all() if result.returns_rows else []

    def many(self, sql: str, params: Sequence[Params]) -> None:
        """Run `sql` once per mapping of `params` (an executemany); none: nothing."""
        if params:
            self.rows(sql, params)


class CoreExecutor:
    """Statements run by SQLAlchemy Core on the engine of any database it opens."""

    def __init__(self, place: Place, engine: Engine) -> None:
        self.place, self.engine = place, engine

    def rows(self, sql: str, params: Params | None = None) -> Rows:
        with self.engine.connect() as conn:  # rolled back: a read commits nothing
            return CoreTransaction(conn).rows(sql, params)

    def batches(self, sql: str, params: Params, size: int) -> Iterator[Rows]:
        """What `sql` answers, `size` rows at a time, as one query read as it goes (a
        server-side cursor on PostgreSQL), in one read snapshot."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=size).execute(text(sql), params)
            yield from result.partitions(size)

    @contextmanager
    def begin(self) -> Iterator[CoreTransaction]:
        with self.engine.begin() as conn:
            yield CoreTransaction(conn)

    def core(self) -> CoreExecutor:
        return self

    def close(self) -> None:
        self.engine.dispose()


class PlainExecutor:
    """Statements run by sqlite3 on a current SQLite store, which is read-only here: a write
    (`begin`) or anything else SQLAlchemy's executor does goes to a read-only `CoreExecutor`
    made on first use (`core`), which refuses writes with `IndexReadOnly`."""

    def __init__(self, place: Place, db: sqlite3.Connection) -> None:
        self.place, self._db = place, db
        self._core: CoreExecutor | None = None

    def rows(self, sql: str, params: Params | None = None) -> Rows:
        with self._named_errors():
            return self._db.execute(sql, params or {}).fetchall()

    def batches(self, sql: str, params: Params, size: int) -> Iterator[Rows]:
        """One query read `size` rows at a time, in one read snapshot (a writer committing
        meanwhile is not seen half)."""
        with self._named_errors():
            cursor = self._db.execute(sql, params)
            while rows := cursor.fetchmany(size):
                yield rows

    def begin(self) -> Any:  # a CoreTransaction's context, of the read-only core
        return self.core().begin()

    def core(self) -> CoreExecutor:
        if self._core is None:
            self._core = open_core(self.place.url, read_only=True)
        return self._core

    def close(self) -> None:
        self._db.close()
        if self._core is not None:
            self._core.close()

    @contextmanager
    def _named_errors(self) -> Iterator[None]:
        """sqlite3's errors as the core's engine names them (`sqlite_error`)."""
        try:
            yield
        except sqlite3.Error as err:
            named = sqlite_error(self.place.path or Path(self.place.url), err)
            if named is None:
                raise
            raise named from err


def open_core(url: str, read_only: bool) -> CoreExecutor:
    """The store at `url` opened by SQLAlchemy: migrated (each migration all or nothing), or
    `read_only` (SQLite: nothing written, no WAL files created; PostgreSQL: read-only
    transactions), refused if older than this code. Errors are named (`translator`)."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from index.migrations import check_current, migrate

    try:
        parsed = _with_driver(make_url(url))
        sqlite = parsed.get_backend_name() == "sqlite"
        _check_kept(parsed)
        engine = create_engine(_read_only(parsed) if read_only and sqlite else parsed,
                               **_options(parsed, read_only))
    except (ArgumentError, ImportError) as err:  # garbage, unknown dialect, missing driver
        raise bad_url(url, err) from None
    path = Path(parsed.database or "") if sqlite else None
    postgresql = parsed.get_backend_name() == "postgresql"  # the writer lock is in the store
    place = Place(url, read_only, path, postgresql,
                  str(path) if sqlite else parsed.render_as_string(hide_password=True))
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas_ro if read_only else _sqlite_pragmas)
    if sqlite or postgresql:
        event.listen(engine, "handle_error", translator(place.name, path, postgresql))
    try:
        if read_only:
            with engine.connect() as conn:
                check_current(conn, place.name)
        else:
            migrate(engine.begin)
    except BaseException:
        engine.dispose()  # a store that cannot open keeps no connection
        raise
    return CoreExecutor(place, engine)


def open_plain(url: str, read_only: bool) -> PlainExecutor | None:
    """The store at a `sqlite:///PATH` URL whose schema is current, through sqlite3, or None
    (`open_core` then opens it, migrates it or says what is wrong). `read_only`: its folder
    is, and the file is opened as `open_core` opens it then; else read-write, as a search
    always did: a read-only connection would leave behind the -wal and -shm files SQLite
    makes to read. No statement the executor runs itself writes."""
    path = plain_sqlite_path(url)
    if path is None or not path.is_file():
        return None
    params = "&".join(f"{k}={v}" for k, v in
                      (_read_only_params(path) if read_only else {"mode": "rw"}).items())
    try:
        db = sqlite3.connect(f"file:{quote(str(path.absolute()))}?{params}", uri=True,
                             timeout=SQLITE_BUSY_S)
    except sqlite3.Error:
        return None
    try:
        versions = {row[0] for row in db.execute(APPLIED)}
    except sqlite3.Error:  # no store yet, or a damaged one
        versions = set()
    if versions.issuperset(range(1, LATEST + 1)):
        return PlainExecutor(Place(url, True, path, False, str(path)), db)
    db.close()
    return None


def plain_sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///PATH` URL, PATH as SQLAlchemy reads it, or None for any other
    URL, and for one SQLAlchemy would decode (%-escapes, a query) or not open as a file."""
    head = "sqlite:///"
    path = url[len(head):] if url.startswith(head) else ""
    return Path(path) if path and path != ":memory:" and not set(path) & set("%?") else None


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
    from sqlalchemy.exc import ArgumentError

    if url.get_backend_name() != "sqlite":  # a server's database outlives the run
        return
    database = url.database or ""
    uri = url.query.get("uri") in ("true", "1")
    if database in ("", ":memory:") or (uri and (database.startswith("file::memory:") or
                                                 "mode=memory" in database or
                                                 url.query.get("mode") == "memory")):
        raise ArgumentError("an in-memory or temporary database keeps nothing after the run")


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
    cursor.execute(SQLITE_BUSY)
    cursor.close()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")  # ON DELETE CASCADE needs it in SQLite
    # a new store's pages (an existing one keeps its own): set before WAL mode creates the file
    cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
    cursor.execute("PRAGMA journal_mode = WAL")  # readers (search) never block the writer
    cursor.execute(SQLITE_BUSY)
    cursor.execute(f"PRAGMA cache_size = -{SQLITE_WRITER_CACHE_KIB}")
    page_size = cursor.execute("PRAGMA page_size").fetchone()[0]  # an old store's: 4 KiB
    cursor.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_CHECKPOINT_BYTES // page_size}")
    cursor.close()
