"""The CLI's way to a running server (retriever.server.remote) against a real one on a
loopback port.

A uvicorn server runs in a thread of this process over a small index; every search through it
must give exactly what `retriever.search.query.search` gives here, and every failure to answer must
be `ServerUnavailable` (the CLI then searches locally).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from index.store import ModelRecord
from retriever import errors
from retriever.library.collection import Collection
from retriever.search.query import Query, Term, search
from retriever.server.app import Server, ServerSettings, create_app, listen, local_url, withdraw
from retriever.server.remote import (
    SERVE_FILE,
    ServerUnavailable,
    find_server,
    remote_search,
    request_for,
)

from .test_server import CAP, OLD, indexed_media, make_media, open_index

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def running(collection: Collection, encoder, announce_in: Path | None = None) -> Iterator[str]:
    """The url of a real server on 127.0.0.1 (port 0: any free one), stopped on exit. It
    announces itself in `announce_in`, by default the collection's directory."""
    app = create_app(collection, encoder, ServerSettings(max_upload_bytes=CAP))
    server = Server(uvicorn.Config(app, log_level="warning"),
                    announce_in or collection.directory)
    sock = listen("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.announced.is_set():  # started, and serve.json written (or not writable)
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_encoder):
    yield from indexed_media(tmp_path_factory.mktemp("remote"), tiny_encoder)


@pytest.fixture(scope="module")
def url(media, tiny_encoder):
    with running(media[1], tiny_encoder) as address:
        yield address


def through_server(url: str, query: Query) -> list[tuple[int, float]]:
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


def test_the_server_announces_itself_while_it_runs(media, tiny_encoder):
    _, collection = media
    announced = collection.directory / SERVE_FILE
    with running(collection, tiny_encoder) as address:
        written = json.loads(announced.read_text())
        port = int(address.rsplit(":", 1)[1])
        assert port != 0 and written["url"] == address  # the port bound, not the 0 asked for
        assert written["pid"] == os.getpid()
        assert written["directory"] == str(collection.directory.resolve())
        assert find_server(collection.directory) == address
    assert not announced.exists() and find_server(collection.directory) is None


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_forever_withdraws_the_file_on_ctrl_c_and_sigterm(tmp_path, stop):
    """In a process of its own: uvicorn re-raises a SIGTERM after shutting down, and its
    default action would end the process before a `finally` could remove the file."""
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from starlette.applications import Starlette
        from retriever.server.app import listen, serve_forever
        serve_forever(Starlette(), listen("127.0.0.1", 0), Path(sys.argv[1]))
    """)
    announced = tmp_path / SERVE_FILE
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120  # importing torch on a busy 2-core machine
        while not announced.exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "serve_forever did not announce itself"
            time.sleep(0.05)
        assert json.loads(announced.read_text())["pid"] == process.pid
        assert find_server(tmp_path) is not None
        process.send_signal(stop)
        process.wait(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert not announced.exists() and find_server(tmp_path) is None


def test_an_index_folder_it_cannot_write_is_served_unannounced(media, tiny_encoder, tmp_path):
    """A read-only index is still served; the CLI just finds no server and searches locally.
    (A file where the folder should be: root, running these tests, writes read-only folders.)"""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    with running(media[1], tiny_encoder, announce_in=blocked) as address:
        assert remote_search(address, {"text": "red", "k": 1})
        assert find_server(blocked) is None and list(tmp_path.iterdir()) == [blocked]


def test_only_loopback_sockets_are_announced():
    with listen("127.0.0.1", 0) as loopback, listen("0.0.0.0", 0) as everywhere:
        assert local_url(loopback) == f"http://127.0.0.1:{loopback.getsockname()[1]}"
        assert local_url(everywhere) is None


def announce_as(directory: Path, pid: int, url: str = "http://127.0.0.1:1") -> None:
    (directory / SERVE_FILE).write_text(json.dumps(
        {"url": url, "pid": pid, "directory": str(directory.resolve())}))


def listening_process() -> tuple[subprocess.Popen, str]:
    """Another process listening on a loopback port, and its url."""
    code = ("import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
            "s.listen(); print(s.getsockname()[1], flush=True); time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, f"http://127.0.0.1:{process.stdout.readline().strip()}"


def test_find_server_ignores_a_stale_or_foreign_file(tmp_path):
    assert find_server(tmp_path) is None  # no file
    (tmp_path / SERVE_FILE).write_text("{half a fi")
    assert find_server(tmp_path) is None  # not JSON
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with listen("127.0.0.1", 0) as sock:
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        announce_as(tmp_path, dead.pid, url)
        assert find_server(tmp_path) is None  # a killed server's file
        announce_as(tmp_path, os.getpid(), url)
        assert find_server(tmp_path) == url  # the same file, a live pid holding the socket
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / SERVE_FILE).write_text((tmp_path / SERVE_FILE).read_text())
    assert find_server(copy) is None  # an index folder copied with the file inside


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_find_server_ignores_a_stopped_server(tmp_path):
    """A server stopped with Ctrl-Z still accepts connections (the kernel's backlog) and would
    never answer: every search would wait for the whole timeout."""
    sleeper, url = listening_process()
    try:
        announce_as(tmp_path, sleeper.pid, url)
        assert find_server(tmp_path) == url
        sleeper.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while find_server(tmp_path) is not None and time.monotonic() < deadline:
            time.sleep(0.01)  # the state changes once the signal is delivered
        assert find_server(tmp_path) is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_withdraw_leaves_another_servers_file(tmp_path):
    announce_as(tmp_path, os.getpid() + 1)  # a later server for the same index wrote it
    withdraw(tmp_path)
    assert (tmp_path / SERVE_FILE).exists()
    announce_as(tmp_path, os.getpid())
    withdraw(tmp_path)
    assert not (tmp_path / SERVE_FILE).exists()


def test_text_search_is_the_local_search(url, media, tiny_encoder):
    root, collection = media
    query = Query(text="a red disc", k=8, target="all")
    rows = remote_search(url, *request_for(query))
    expected = [r.to_json() for r in search(collection, tiny_encoder, query)]
    assert [{**row, "score": 0} for row in rows] == [{**row, "score": 0} for row in expected]
    assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in expected], abs=1e-6)
    assert list(rows[0]) == ["id", "path", "score", "kind", "position", "passage", "caption",
                             "time", "tags", "section", "taken_at"]
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


def test_no_server_listening_is_server_unavailable():
    with listen("127.0.0.1", 0) as bound:  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{bound.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match=f"no answer from {url}"):
            remote_search(url, {"text": "x"})
    assert time.monotonic() - started < 5


def test_a_server_that_never_answers_is_server_unavailable():
    with listen("127.0.0.1", 0) as silent:
        silent.listen()  # the kernel accepts connections; nobody reads them
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ServerUnavailable, match="timed out"):
            remote_search(url, {"text": "x"}, timeout=0.5)


class Teapot(http.server.BaseHTTPRequestHandler):
    """Something else on the port: it answers, but not with the API's JSON."""

    def do_POST(self) -> None:
        self.send_response(404)
        self.end_headers()
        self.wfile.write(b"<html>no such page</html>")

    def log_message(self, *args: object) -> None:
        pass


def test_another_program_on_the_port_is_server_unavailable():
    other = http.server.HTTPServer(("127.0.0.1", 0), Teapot)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{other.server_address[1]}"
        with pytest.raises(ServerUnavailable, match="without JSON: not a retriever server"):
            remote_search(url, {"text": "x"})
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
