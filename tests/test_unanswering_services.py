"""Services that do not answer: a store URL or a --ray-address whose port accepts a connection
and then says nothing (a firewall that swallows packets, a hung server), closes it at once, or
speaks another protocol is one line naming it, within seconds, never minutes of retries nor a
traceback. A Ray cluster that refuses this machine's token is one line saying so.

Each command runs as the user runs it (a process of its own); the bound asserted is generous
(BOUND), the waits being bounded at about 10 s (CONNECT_TIMEOUT, PG_CONNECT_TIMEOUT)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import write_photo

ROOT = Path(__file__).resolve().parents[1]
BOUND = 60.0  # seconds: before the fix, 131 s (PostgreSQL) and minutes (Ray)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own


class Server:
    """A TCP server on 127.0.0.1 that accepts every connection and then, by `behaviour`:
    says nothing and keeps it open ("silent"), closes it ("closes"), or answers as an HTTP/1
    server does ("http")."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.port = self._socket.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except OSError:  # the accept's timeout: look at _stop again
                continue
            if self.behaviour == "http":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            if self.behaviour == "silent":
                self._held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in [*self._held, self._socket]:
            conn.close()


@pytest.fixture
def server(request) -> Iterator[Server]:
    running = Server(request.param)
    yield running
    running.close()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i in range(3):
        write_photo(root / f"p{i}.jpg", (80 * i, 40, 200 - 60 * i))
    return root


def run(*args: object, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess,
                                                                     float]:
    """The CLI in a process of its own: its result, and the seconds it took."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    return done, time.monotonic() - started


def assert_one_line(done: subprocess.CompletedProcess, *naming: str) -> str:
    """The command failed with one line (besides the CLI's notes) naming `naming`."""
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("note: ")]
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    assert all(name in lines[0] for name in naming), lines[0]
    return lines[0]


@pytest.mark.parametrize("server", ["silent", "closes", "http"], indirect=True)
def test_a_store_url_that_does_not_answer_is_one_line_for_index(server, photos, tmp_path):
    url = f"postgresql+psycopg://retriever@127.0.0.1:{server.port}/photos"
    done, seconds = run("index", photos, "--db", tmp_path / "db", "--store", url,
                        "--model", "retriever-tiny", "--pretrained", "none")
    assert_one_line(done, f"127.0.0.1:{server.port}/photos", "check that its server is running")
    assert seconds < BOUND


@pytest.mark.parametrize("command", [("info",), ("search", "a red photo"),
                                     ("tag", "cat", "dog")])
@pytest.mark.parametrize("server", ["silent"], indirect=True)
def test_a_silent_store_url_is_one_line_for_every_command(server, command, tmp_path):
    url = f"postgresql+psycopg://retriever@127.0.0.1:{server.port}/photos"
    (tmp_path / "db").mkdir()
    done, seconds = run(*command, "--db", tmp_path / "db", "--store", url)
    assert_one_line(done, f"127.0.0.1:{server.port}/photos")
    assert seconds < BOUND


@pytest.mark.parametrize("server", ["silent"], indirect=True)
def test_the_test_suites_own_postgresql_url_that_does_not_answer_is_a_reason(server,
                                                                               monkeypatch):
    """$RETRIEVER_TEST_POSTGRES_URL: the PostgreSQL variants are skipped (or fail, in CI) with
    a reason naming it, rather than each test waiting on it."""
    from .postgres import ENV_TEST_URL, Unavailable, postgres_server

    monkeypatch.setenv(ENV_TEST_URL, f"postgresql+psycopg://u@127.0.0.1:{server.port}/postgres")
    started = time.monotonic()
    with pytest.raises(Unavailable, match=f"127.0.0.1:{server.port}/postgres"), \
            postgres_server():
        pass
    assert time.monotonic() - started < BOUND


@pytest.mark.ray
@pytest.mark.parametrize("server", ["silent", "closes", "http"], indirect=True)
def test_a_ray_address_that_does_not_answer_is_one_line(server, photos, tmp_path):
    address = f"127.0.0.1:{server.port}"
    done, seconds = run("index", photos, "--db", tmp_path / "db", "--engine", "ray",
                        "--ray-address", address, "--model", "retriever-tiny",
                        "--pretrained", "none")
    assert_one_line(done, f"--ray-address {address}", "ray start --head")
    assert seconds < BOUND


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray of this process (127.0.0.1, token authentication on): its address."""
    import ray

    from retriever.ingest.ray_engine import start_local

    start_local(1)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.parametrize("token", ["none", "another"])
def test_a_cluster_that_refuses_this_machines_token_is_one_line(ray_head, token, photos,
                                                                  tmp_path):
    """No token here (another HOME, none in the environment): Ray's AuthenticationError; a
    token that is not the cluster's: Ray gives up after its retries. Either is one line."""
    env = {"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "no-token")}
    if token == "another":
        env["RAY_AUTH_TOKEN"] = "0" * 32
    done, seconds = run("index", photos, "--db", tmp_path / "db", "--engine", "ray",
                        "--ray-address", ray_head, "--model", "retriever-tiny",
                        "--pretrained", "none", env=env)
    assert "Traceback" not in done.stderr and done.returncode != 0, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]  # Ray's own log lines may come before it
    assert last.startswith(f"error: --ray-address {ray_head}") and "token" in last, last
    assert seconds < BOUND
