"""A throw-away PostgreSQL server for the tests that run on both stores (`stores` in conftest).

$RETRIEVER_TEST_POSTGRES_URL names a server to use (a superuser URL: every test gets new
databases on it, dropped after). Without it, where PostgreSQL's programs are installed (Debian:
/usr/lib/postgresql/<version>/bin), a cluster is made in a temporary folder, listening on a unix
socket there and nowhere else, and removed at the end of the session. With neither, the
PostgreSQL variants are skipped with the reason; `.ci/run` installs PostgreSQL, so CI runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ENV_TEST_URL = "RETRIEVER_TEST_POSTGRES_URL"


class Unavailable(Exception):
    """No PostgreSQL server for the tests; the message says how to get one."""


@dataclass
class Server:
    """A PostgreSQL server the tests may create and drop databases on."""

    admin_url: str  # postgresql+psycopg://... of a superuser, on a database that stays
    made: list[str] = field(default_factory=list)

    def create_database(self) -> str:
        """A new, empty database: its URL."""
        from sqlalchemy.engine import make_url

        name = f"retriever_test_{uuid.uuid4().hex[:16]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_databases(self) -> None:
        """Drop every database made here, closing what is still connected to them."""
        while self.made:
            self._admin(f'DROP DATABASE IF EXISTS "{self.made.pop()}" WITH (FORCE)')

    def check(self) -> None:
        """Raise `Unavailable` unless the server answers (within PG_CONNECT_TIMEOUT)."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import OperationalError

        try:
            self._admin("SELECT 1")
        except OperationalError as err:
            shown = make_url(self.admin_url).render_as_string(hide_password=True)
            said = (str(err.orig).strip().splitlines() or [type(err.orig).__name__])[0]
            raise Unavailable(f"${ENV_TEST_URL} {shown}: {said}") from None

    def _admin(self, statement: str) -> None:
        from sqlalchemy import create_engine, text

        from index.connection import PG_CONNECT_TIMEOUT

        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT",
                               connect_args={"connect_timeout": PG_CONNECT_TIMEOUT})
        try:
            with engine.connect() as conn:
                conn.execute(text(statement))
        finally:
            engine.dispose()


@contextmanager
def postgres_server() -> Iterator[Server]:
    """The server named by $RETRIEVER_TEST_POSTGRES_URL, else a cluster of our own."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise Unavailable("psycopg is not installed: pip install -e '.[postgres]'") from None
    if os.environ.get(ENV_TEST_URL):
        server = Server(os.environ[ENV_TEST_URL])
        server.check()  # a server that never answers: one reason, not a hang in every test
        yield server
        return
    with _cluster(_programs()) as url:
        yield Server(url)


def _programs() -> Path:
    """The folder holding initdb and pg_ctl, newest version first."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if not versions:
        raise Unavailable(f"no PostgreSQL programs (pg_ctl) here and no ${ENV_TEST_URL}: "
                          f"apt-get install postgresql, or set ${ENV_TEST_URL}")
    return versions[-1].parent


@contextmanager
def _cluster(programs: Path) -> Iterator[str]:
    """A cluster in a temporary folder on a unix socket in that folder (no TCP), trusting
    local connections. PostgreSQL refuses to run as root: as root it runs as `postgres`."""
    folder = Path(tempfile.mkdtemp(prefix="retriever-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    try:
        _run([*as_user, str(programs / "initdb"), "-D", str(data), "-A", "trust", "-U",
              "postgres", "-E", "UTF8", "--no-locale", "--no-sync"])
        # fsync off: a test server need not survive a power cut, and is much faster without
        _run([*as_user, str(programs / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"),
              "-w", "-o", f"-k {folder} -c listen_addresses='' -c fsync=off "
              f"-c max_connections=300", "start"])
        try:
            yield f"postgresql+psycopg://postgres@/postgres?host={folder}"
        finally:
            _run([*as_user, str(programs / "pg_ctl"), "-D", str(data), "-m", "immediate",
                  "-w", "stop"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        program = next(Path(c).name for c in command if c.startswith("/"))
        raise Unavailable(f"{program} failed: {done.stderr.strip() or done.stdout.strip()}")


@dataclass
class Stores:
    """Fresh stores for one test, all on one backend (the `stores` fixture's parameter)."""

    server: Server | None  # None: SQLite files
    folder: Path  # the test's tmp_path: where SQLite files go
    urls: dict[str, str] = field(default_factory=dict)

    def url(self, name: str = "store") -> str:
        """Store `name`'s URL, empty when first asked for: a SQLite file in the test's folder,
        or a new PostgreSQL database."""
        if name not in self.urls:
            self.urls[name] = (self.server.create_database() if self.server
                               else f"sqlite:///{self.folder / name}.db")
        return self.urls[name]

    def for_index(self, directory: Path) -> str | None:
        """What to pass as an index folder's store URL: None for SQLite (the folder's own
        store.db), a database of its own on PostgreSQL."""
        return None if self.server is None else self.url(str(directory))
