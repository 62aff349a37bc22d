"""The CLI's way to a running server (retriever.server.remote) against a real one on its Unix
socket (retriever.server.discovery), beside a loopback TCP port.

A uvicorn server runs in a thread of this process over a small index; every search through it
must give exactly what `retriever.search.query.search` gives here, and every failure to answer must
be `ServerUnavailable` (the CLI then searches locally). A socket is trusted only when it is this
user's socket file held by this user's live process, which answers at once.
"""

from __future__ import annotations

import http.client
import http.server
import os
import signal
import socket
import socketserver
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from index.records import ModelRecord
from retriever import errors
from retriever.library.collection import Collection
from retriever.search.query import Query, Term, search
from retriever.server.app import ServerSettings, create_app
from retriever.server.discovery import SOCKET_FILE, runtime_folder, socket_paths
from retriever.server.lifecycle import Server, announce, listen, withdraw
from retriever.server.remote import (
    CONNECT_TIMEOUT,
    ServerUnavailable,
    find_server,
    remote_search,
    request_for,
)

from .helpers import CAP, OLD, indexed_media, make_media, open_index

ROOT = Path(__file__).resolve().parents[1]
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="making another user's socket needs root")
NOBODY = 65534
OTHER_PYTHON = "/usr/bin/python3"


@contextmanager
def running(collection: Collection, encoder, announce_in: Path | None = None
            ) -> Iterator[Path]:
    """The Unix socket of a real server (`running_on`)."""
    with running_on(collection, encoder, announce_in) as (address, _port):
        yield address


@contextmanager
def running_on(collection: Collection, encoder, announce_in: Path | None = None
               ) -> Iterator[tuple[Path, int]]:
    """The Unix socket and the TCP port (on 127.0.0.1, port 0: any free one) of a real
    server, stopped on exit. It announces itself for `announce_in`, by default the
    collection's directory."""
    app = create_app(collection, encoder, ServerSettings(max_upload_bytes=CAP))
    server = Server(uvicorn.Config(app, log_level="warning"),
                    announce_in or collection.directory)
    sock = listen("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.announced.is_set():  # started, and its Unix socket bound (or not)
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    assert server.announced_at is not None, "the server has no Unix socket"
    try:
        yield server.announced_at.path, sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_encoder):
    yield from indexed_media(tmp_path_factory.mktemp("remote"), tiny_encoder)


@pytest.fixture(scope="module")
def url(media, tiny_encoder):
    """The running server's address: its Unix socket."""
    with running(media[1], tiny_encoder) as address:
        yield address


def through_server(url: Path, query: Query) -> list[tuple[int, float]]:
    request, image = request_for(query)
    return [(row["id"], row["score"]) for row in remote_search(url, request, image)]


def locally(collection: Collection, encoder, query: Query) -> list[tuple[int, float]]:
    return [(r.id, r.score) for r in search(collection, encoder, query)]


def assert_same(remote: list[tuple[int, float]], local: list[tuple[int, float]]) -> None:
    assert [i for i, _ in remote] == [i for i, _ in local]
    assert [s for _, s in remote] == pytest.approx([s for _, s in local], abs=1e-6)


def item_id(collection: Collection, encoder, name: str) -> int:
    found = search(collection, encoder, Query(text="x", k=50))
    return next(r.id for r in found if Path(r.path).name == name)


def peer_pid(path: Path) -> int:
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        return struct.unpack("3i", client.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]


def test_the_server_announces_itself_while_it_runs(media, tiny_encoder):
    _, collection = media
    with running(collection, tiny_encoder) as address:
        assert address in socket_paths(collection.directory)
        found = os.lstat(address)
        assert stat.S_ISSOCK(found.st_mode) and stat.S_IMODE(found.st_mode) == 0o600
        assert found.st_uid == os.geteuid() and peer_pid(address) == os.getpid()
        assert find_server(collection.directory) == address
        assert remote_search(address, {"text": "red", "k": 1})
    assert not address.exists() and find_server(collection.directory) is None


SERVING = textwrap.dedent("""
    import sys
    from pathlib import Path
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from retriever.server.lifecycle import listen, serve_forever
    async def ping(request):  # retriever.server.app's, without loading a model
        return JSONResponse({"retriever": True})
    serve_forever(Starlette(routes=[Route("/api/ping", ping)]), listen("127.0.0.1", 0),
                  Path(sys.argv[1]))
""")


@contextmanager
def serving_process(index: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """`serve_forever` in a process of its own, announced for `index`; its socket."""
    process = subprocess.Popen([sys.executable, "-c", SERVING, str(index)], cwd=ROOT,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120  # importing torch on a busy 2-core machine
        while (found := find_server(index)) is None:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "serve_forever did not announce itself"
            time.sleep(0.05)
        yield process, found
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_forever_withdraws_the_socket_on_ctrl_c_and_sigterm(tmp_path, stop):
    """In a process of its own: uvicorn re-raises a SIGTERM after shutting down, and its
    default action would end the process before a `finally` could remove the socket."""
    with serving_process(tmp_path) as (process, announced):
        assert peer_pid(announced) == process.pid
        process.send_signal(stop)
        process.wait(timeout=30)
    assert not announced.exists() and find_server(tmp_path) is None


def test_an_index_folder_it_cannot_write_is_announced_in_the_runtime_folder(
        media, tiny_encoder, tmp_path):
    """A read-only index is still served and found; nothing is written into it. (A file where
    the folder should be: root, running these tests, writes read-only folders.)"""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    with running(media[1], tiny_encoder, announce_in=blocked) as address:
        assert address.parent == runtime_folder()
        assert find_server(blocked) == address
        assert remote_search(address, {"text": "red", "k": 1})
        assert list(tmp_path.iterdir()) == [blocked]
    assert find_server(blocked) is None


def test_an_index_path_too_long_for_a_socket_is_announced_in_the_runtime_folder(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert [path.parent for path in socket_paths(deep)] == [runtime_folder()]
    announced = announce(deep)
    assert announced is not None and announced.path.parent == runtime_folder()
    withdraw(announced)
    announced.sock.close()
    assert not announced.path.exists()


def unix_listener(path: Path) -> socket.socket:
    """A socket listening at `path` that never accepts: connections queue, never answered."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    return sock


def test_find_server_ignores_what_is_not_this_users_live_socket(tmp_path, media, tiny_encoder):
    assert find_server(tmp_path) is None  # nothing there
    planted = socket_paths(tmp_path)[0]
    planted.write_text('{"url": "http://127.0.0.1:1"}')  # a file, as serve.json was
    assert find_server(tmp_path) is None
    planted.unlink()
    with running(media[1], tiny_encoder) as address:
        planted.symlink_to(address)  # a link to a live server's socket is not its socket
        assert find_server(tmp_path) is None
    planted.unlink()


def test_a_killed_servers_socket_is_removed(tmp_path):
    planted = socket_paths(tmp_path)[0]
    unix_listener(planted).close()  # bound and closed: the file stays, connections refused
    assert planted.exists()
    assert find_server(tmp_path) is None
    assert not planted.exists()


@AS_ROOT
def test_another_users_socket_is_not_trusted_nor_removed(tmp_path):
    planted = socket_paths(tmp_path)[0]
    with unix_listener(planted):
        os.chown(planted, NOBODY, NOBODY)
        assert find_server(tmp_path) is None
    assert planted.exists()  # closed now, but not this user's to remove
    planted.unlink()


@AS_ROOT
@pytest.mark.skipif(not os.access(OTHER_PYTHON, os.X_OK), reason=f"needs {OTHER_PYTHON}")
def test_a_socket_held_by_another_users_process_is_not_trusted():
    """This user's socket file (chowned), but the process behind it is not this user's: the
    kernel's SO_PEERCRED tells, whatever the file says."""
    with tempfile.TemporaryDirectory(prefix="retriever-shared-") as folder:  # nobody enters it
        Path(folder).chmod(0o777)
        peer_of_another_user(Path(folder))


def peer_of_another_user(shared: Path) -> None:
    planted = shared / SOCKET_FILE
    code = ("import socket, sys, time; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); "
            "s.listen(); print('ready', flush=True); time.sleep(60)")
    # the system's Python: nobody may not enter this user's virtual environment
    other = subprocess.Popen([OTHER_PYTHON, "-c", code, str(planted)], user=NOBODY,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ready"
        os.chown(planted, os.geteuid(), os.getegid())
        with pytest.raises(ServerUnavailable, match="another user's process"):
            remote_search(planted, {"text": "x"})
        assert find_server(shared) is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="stops a process (POSIX)")
def test_find_server_ignores_a_stopped_server(tmp_path):
    """A server stopped with Ctrl-Z still accepts connections (the kernel's backlog) and would
    never answer: every search would wait for the whole timeout."""
    with serving_process(tmp_path) as (process, _announced):
        process.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        assert find_server(tmp_path) is None
        assert time.monotonic() - started < CONNECT_TIMEOUT * len(socket_paths(tmp_path)) + 5
        process.send_signal(signal.SIGCONT)


def test_withdraw_leaves_another_servers_socket(tmp_path):
    first = announce(tmp_path)
    second = announce(tmp_path)  # a later server for the same index took the name over
    assert first is not None and second is not None and first.path == second.path
    withdraw(first)
    assert second.path.exists()
    withdraw(second)
    assert not second.path.exists()
    first.sock.close()
    second.sock.close()


def test_the_tcp_port_answers_as_the_socket_does(media, tiny_encoder):
    """The page and the JSON API stay on the TCP port; the socket is the same server."""
    with running_on(media[1], tiny_encoder) as (address, port):
        assert remote_search(address, {"text": "red", "k": 1})
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/api/ping")
        assert connection.getresponse().read() == b'{"retriever":true}'
        connection.close()


def test_text_search_is_the_local_search(url, media, tiny_encoder):
    root, collection = media
    query = Query(text="a red disc", k=8, target="all")
    rows = remote_search(url, *request_for(query))
    expected = [r.to_json() for r in search(collection, tiny_encoder, query)]
    assert [{**row, "score": 0} for row in rows] == [{**row, "score": 0} for row in expected]
    assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in expected], abs=1e-6)
    assert list(rows[0]) == ["id", "path", "score", "kind", "position", "passage", "caption",
                             "time", "tags", "found_in", "taken_at", "page", "section",
                             "snippet", "marks"]
    assert len(rows) == 8 and {r["kind"] for r in rows} == {"image", "text"}


def test_filters_are_the_local_filters(url, media, tiny_encoder, monkeypatch):
    root, collection = media
    monkeypatch.chdir(root)  # `in` relative to the CLI's folder, as a local search takes it
    for query in (Query(text="red", target="images", path_prefix="photos", k=50),
                  Query(text="red", path_prefix="notes", k=50, target="all"),
                  Query(text="red", target="images", before=OLD + 1, k=50),
                  Query(text="red", after=OLD + 1, min_score=-0.05, k=50, target="all")):
        remote = through_server(url, query)
        assert remote, query  # each keeps something ...
        assert_same(remote, locally(collection, tiny_encoder, query))
    everything = through_server(url, Query(text="red", k=50, target="all"))
    assert len(remote) < len(everything)  # ... and drops something


def test_weighted_terms_are_the_local_search(url, media, tiny_encoder):
    _, collection = media
    green = item_id(collection, tiny_encoder, "green.jpg")
    query = Query(text="red", add=(Term(0.5, item=green),), sub=(Term(2.0, text="blue"),), k=6)
    assert_same(through_server(url, query), locally(collection, tiny_encoder, query))
    by_item = Query(item=green, target="images", k=3)
    assert through_server(url, by_item)[0][0] == green


def test_image_search_uploads_the_file(url, media, tiny_encoder, monkeypatch):
    root, collection = media
    monkeypatch.chdir(root)
    photo = root / "photos" / "blue.jpg"
    for query in (Query(image=photo, target="images", k=3),
                  Query(image=photo, path_prefix="notes", after=0.0, k=50, target="all")):
        assert_same(through_server(url, query), locally(collection, tiny_encoder, query))
    assert through_server(url, Query(image=photo, target="images", k=1))[0][1] == \
        pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(("query", "error"), [
    (Query(text="x", k=0), errors.UsageError),
    (Query(text="x", target="movies"), errors.UsageError),
    (Query(item=999999), errors.ItemNotFound),
    (Query(text="x", add=(Term(item=999999),)), errors.ItemNotFound),
])
def test_a_bad_request_is_the_library_error_with_the_servers_line(url, media, tiny_encoder,
                                                                   query, error):
    _, collection = media
    with pytest.raises(error) as local:  # what the CLI would print searching here
        search(collection, tiny_encoder, query)
    with pytest.raises(error) as remote:
        remote_search(url, *request_for(query))
    assert type(remote.value) is type(local.value) and str(remote.value) == str(local.value)


def test_a_non_image_upload_is_an_image_error(url, tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_text("not a picture")
    with pytest.raises(errors.ImageError, match="uploaded file 'fake.jpg': not a readable"):
        remote_search(url, {"target": "images"}, fake)


def test_what_the_server_cannot_take_is_searched_locally(url, media, tmp_path):
    root, _ = media
    photo = root / "photos" / "red.jpg"
    with pytest.raises(ServerUnavailable, match="no image files in --add/--sub"):
        request_for(Query(text="x", add=(Term(image=photo),)))
    with pytest.raises(ServerUnavailable, match="no multipart form"):
        remote_search(url, {"sub": [{"text": "x"}]}, photo)
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + os.urandom(2 * CAP))  # a local search has no upload cap
    with pytest.raises(ServerUnavailable, match="over the 64 kB limit"):
        remote_search(url, {}, big)


def test_a_server_reindexed_with_another_model_sends_the_search_local(tiny_encoder, tmp_path):
    collection = open_index(make_media(tmp_path / "media"), tiny_encoder)
    with running(collection, tiny_encoder) as address:
        assert remote_search(address, {"text": "red"})
        # what `retriever index --reindex --model ...` records; the server has the old model
        collection.store.set_model(ModelRecord("other-model", "other-weights", 64))
        with pytest.raises(ServerUnavailable, match="restart `retriever serve`"):
            remote_search(address, {"text": "red"})
    collection.close()


def test_no_server_listening_is_server_unavailable(tmp_path):
    bound = tmp_path / SOCKET_FILE
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(bound))  # bound, never listening: connections are refused
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match=f"no answer from {bound}"):
            remote_search(bound, {"text": "x"})
    assert time.monotonic() - started < 5


def test_a_server_that_never_answers_is_server_unavailable(tmp_path):
    silent = tmp_path / SOCKET_FILE
    with unix_listener(silent), pytest.raises(ServerUnavailable, match="timed out"):
        remote_search(silent, {"text": "x"}, timeout=0.5)  # the kernel accepts; nobody reads


class Teapot(http.server.BaseHTTPRequestHandler):
    """Something else on the socket: it answers, but not with the API's JSON."""

    def do_POST(self) -> None:
        # the body read first: on a Unix socket, closing before it arrived breaks the send
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(404)
        self.end_headers()
        self.wfile.write(b"<html>no such page</html>")

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


def test_another_program_on_the_socket_is_server_unavailable(tmp_path):
    address = tmp_path / SOCKET_FILE
    other = socketserver.UnixStreamServer(str(address), Teapot)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ServerUnavailable, match="without JSON: not a retriever server"):
            remote_search(address, {"text": "x"})
        assert find_server(tmp_path) is None
    finally:
        other.shutdown()
        other.server_close()


def test_importing_the_client_loads_nothing_heavy():
    """It is on the cold path of every `retriever search`: no torch, numpy, faiss, starlette."""
    code = ("import sys, retriever.server.remote; heavy = {'torch', 'numpy', 'faiss', 'starlette', "
            "'sqlalchemy', 'retriever.search.query', 'retriever.library.collection'}; "
            "print(sorted(heavy & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_a_socket_refused_mid_search_is_server_unavailable(media, tiny_encoder):
    """A server stopped between find_server and the search: refused, so search locally."""
    _, collection = media
    with running(collection, tiny_encoder) as address:
        assert remote_search(address, {"text": "red", "k": 1})
    with pytest.raises(ServerUnavailable):
        remote_search(address, {"text": "red", "k": 1})


def test_the_port_takes_connections_as_soon_as_it_is_bound():
    """`serve` prints its address after `listen` and before uvicorn's loop starts (the model
    loads between): a client that connects on seeing the line is queued, not refused."""
    import socket

    sock = listen("127.0.0.1", 0)
    try:
        with socket.create_connection(sock.getsockname(), timeout=5) as client:
            accepted, _ = sock.accept()
            client.sendall(b"ping")
            assert accepted.recv(4) == b"ping"
            accepted.close()
    finally:
        sock.close()
