"""The database's errors as the named errors of `retriever.errors`: SQLite's result codes,
PostgreSQL's SQLSTATEs, a URL that cannot be opened. Standard library only (SQLAlchemy is
imported by `bad_url` alone, which only a store opened through it raises)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from retriever.errors import BadStoreUrl, DiskFull, IndexReadOnly, StoreDamaged, StoreError

if TYPE_CHECKING:
    from sqlalchemy.engine import ExceptionContext

# SQLite result codes (the low byte of an extended code): https://sqlite.org/rescode.html
SQLITE_READONLY, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 8, 11, 13, 14, 26

# PostgreSQL error codes (SQLSTATE): https://www.postgresql.org/docs/current/errcodes-appendix.html
PG_READ_ONLY_TRANSACTION, PG_DISK_FULL = "25006", "53100"
PG_UNREACHABLE = ("08", "28", "3D", "57P")  # connection, authorization, no such database, shutdown


def sqlite_error(path: Path, error: BaseException) -> StoreError | None:
    """A SQLite error (sqlite3's, also under SQLAlchemy) as a named one, or None."""
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


def server_error(name: str, error: BaseException, lost: bool) -> StoreError | None:
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


def translator(name: str, path: Path | None, postgresql: bool
               ) -> Callable[[ExceptionContext], None]:
    """An engine's `handle_error` listener: the one place the errors of the statements
    SQLAlchemy runs become named ones. `path`: a SQLite store's file."""
    def translate(context: ExceptionContext) -> None:
        original = context.original_exception
        error = (server_error(name, original, context.connection is None or context.is_disconnect)
                 if postgresql else sqlite_error(path or Path(name), original))
        if error is not None:
            raise error from original

    return translate


def bad_url(url: str, error: Exception) -> BadStoreUrl:
    """A URL SQLAlchemy cannot open (shown without its password), with the fix in `reason`."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

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
