"""A search answers from the last committed batch, whatever state the saved FAISS index is in.

The store is the truth (index/store.py). A saved index that is stale (a run still going, or one
killed with SIGKILL), damaged, truncated or missing, or whose .json or .npy copies are, is
rebuilt from the store in memory, and nothing is written. Each state is searched by a one-off
`retriever search` (a process of its own: the plain-sqlite3 reader, SQLAlchemy never imported)
and by the server's /api/search, in a writable and in a read-only index folder (as `nobody`
when the tests run as root, who may write anything). Every answer is checked against the
store's own vectors by brute force: the queried photo (the last one committed) first, then the
k best of the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from index.ann import ENV_ON_DISK, configured
from index.kinds import IMAGE
from retriever.library import collection as collection_module
from retriever.library.collection import Collection
from retriever.server.app import create_app

# the same damages as a FAISS file's tests
from .helpers import flip_middle, truncate, user_settings, write_photo

ROOT = Path(__file__).resolve().parent.parent
MODEL = ["--model", "retriever-tiny", "--pretrained", "none"]
K = 10
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
ROOT_WITHOUT_SETPRIV = os.geteuid() == 0 and shutil.which("setpriv") is None
# a one-off search, and the modules it loaded (test_one_off_search's probe)
PROBE = """import sys, runpy
sys.argv = ['retriever', 'search', *sys.argv[1:]]
try:
    runpy.run_module('cli', run_name='__main__')
finally:
    print('LOADED', sorted(m for m in ('sqlalchemy', 'torch') if m in sys.modules),
          file=sys.stderr)
"""


def colour(n: int) -> tuple[int, int, int]:
    """The n-th of many distinct colours."""
    return (n * 67) % 256, (n * 131 + 40) % 256, (n * 29 + 90) % 256


def photos(folder: Path, count: int, start: int = 0) -> list[Path]:
    return [write_photo(folder / f"p{n:04d}.jpg", colour(n)) for n in range(start, start + count)]


@dataclass
class Places:
    """What the module's tests share: a folder every user may read (`nobody` too), the
    environment of the commands run in it, and the indexes each state starts from."""

    base: Path
    env: dict[str, str]
    old: dict[str, dict[str, bytes]]  # index -> the saved files of its first run, by name

    def command(self, *args: object) -> list[str]:
        return [sys.executable, str(ROOT / "cli.py"), *map(str, args)]

    def index(self, media: Path, db: Path, *options: str) -> None:
        done = subprocess.run(self.command("index", media, "--db", db, *MODEL, *options),
                              env=self.env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr


def saved_files(db: Path) -> dict[str, bytes]:
    """The saved vector index files of `db`: everything but the store and the lock."""
    return {p.name: p.read_bytes() for p in db.iterdir()
            if p.name.split(".")[0] in ("images", "texts", "videos", "image-texts")}


def store_count(db: Path) -> int:
    """Items committed to `db`'s store so far (read-only: a writer may be running)."""
    with sqlite3.connect(f"file:{db / 'store.db'}?mode=ro", uri=True, timeout=30) as conn:
        count = conn.execute("SELECT count(*) FROM items").fetchone()[0]
    conn.close()
    return int(count)


@contextmanager
def index_run(places: Places, media: Path, db: Path, batch_size: int
              ) -> Iterator[subprocess.Popen]:
    """`retriever index` running for the duration, SIGKILLed at its end, when it must have
    been still going (files left to do)."""
    run = subprocess.Popen(places.command("index", media, "--db", db, *MODEL, "--batch-size",
                                          batch_size),
                           env=places.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield run
    finally:
        alive = run.poll() is None
        run.send_signal(signal.SIGKILL)
        _, err = run.communicate()
    assert alive, f"the run ended before it was killed: {err!r}"


def kill_after_batches(places: Places, media: Path, db: Path, more: int) -> None:
    """SIGKILL a `retriever index` run once `more` items beyond the store's are committed."""
    first = store_count(db)
    with index_run(places, media, db, 8) as run:
        deadline = time.monotonic() + 600
        while run.poll() is None and store_count(db) < first + more:
            assert time.monotonic() < deadline, "no batch committed in 10 minutes"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def places() -> Iterator[Places]:
    """Three indexes of the same kind of photos, each run twice (a first run saved, then more
    photos): `flat` and `ivf` (--index-type ivf) completed, `killed` SIGKILLed in its second
    run after a few batches. The ONNX export one-off searches use is made here, once."""
    base = Path(tempfile.mkdtemp(prefix="retriever-states-"))
    base.chmod(0o755)
    for shared in ("home", "data"):  # written by whoever searches
        (base / shared).mkdir(mode=0o777)
        (base / shared).chmod(0o777)
    env = {key: value for key, value in os.environ.items()
           if key not in ("RETRIEVER_STORE_URL", "RETRIEVER_DB", ENV_ON_DISK)}
    env.update(RETRIEVER_BACKEND="auto", HOME=str(base / "home"),
               HF_HOME=str(base / "home" / "hf"), XDG_DATA_HOME=str(base / "data"),
               XDG_CACHE_HOME=str(base / "cache"), PYTHONDONTWRITEBYTECODE="1")
    places = Places(base, env, {})
    try:
        for name, options in (("flat", ()), ("ivf", ("--index-type", "ivf")), ("killed", ())):
            media, db = base / "media" / name, base / name
            photos(media, 6)
            places.index(media, db, *options)
            places.old[name] = saved_files(db)
            if name == "killed":
                photos(media, 300, start=6)
                kill_after_batches(places, media, db, more=16)
            else:
                photos(media, 4, start=6)
                places.index(media, db, *options)
        for path in (base / "cache").rglob("*"):  # the export, for `nobody` too (made 0700)
            path.chmod(0o755)
        yield places
    finally:
        writable_again(base)
        shutil.rmtree(base)


# --- the states ----------------------------------------------------------------------------


def unlink(path: Path) -> None:
    path.unlink()


def garbage(path: Path) -> None:
    path.write_text("[" * 100_000)  # deeper than Python's recursion limit


def fifo(path: Path) -> None:
    """A FIFO in its place: a plain read would wait for a writer forever."""
    path.unlink()
    os.mkfifo(path)


def first_run_saved(db: Path, old: dict[str, bytes]) -> None:
    """The files the first run saved, back: the store was written after them (a run going)."""
    for name, data in old.items():
        (db / name).write_bytes(data)


@dataclass(frozen=True)
class State:
    index: str  # which of `places`' indexes
    damage: Callable[[Path], None] | None = None  # done to `files` of the copy
    files: tuple[str, ...] = ("images.faiss",)
    stale: bool = False  # the files the first run saved put back
    rebuilt: bool = True  # the images' index is rebuilt from the store
    on_disk: bool = False  # RETRIEVER_INDEX_ON_DISK=yes


STATES = {
    "current": State("flat", rebuilt=False),
    "stale generation": State("flat", stale=True),
    "after SIGKILL": State("killed"),
    "json missing": State("flat", unlink, ("images.faiss.json",)),
    "json garbage": State("flat", garbage, ("images.faiss.json",)),
    "json a FIFO": State("flat", fifo, ("images.faiss.json",)),
    # the FAISS file searched instead of its damaged copies: loaded, not rebuilt
    "npy copies damaged": State("flat", flip_middle, ("images.ids.npy", "images.vectors.npy"),
                                rebuilt=False),
    "faiss and npy truncated": State("flat", truncate, ("images.faiss", "images.vectors.npy")),
    "ivf on disk, current": State("ivf", rebuilt=False, on_disk=True),
    "ivf on disk, stale": State("ivf", stale=True, on_disk=True),
    "ivf on disk, flipped": State("ivf", flip_middle, on_disk=True),
    "ivf on disk, truncated": State("ivf", truncate, on_disk=True),
    "ivf on disk, missing": State("ivf", unlink, on_disk=True),
}


@dataclass
class Copy:
    """An index copied for one test, in one of the STATES."""

    db: Path
    state: State
    query: Path  # the last photo committed to the store
    truth: tuple[np.ndarray, np.ndarray]  # the store's image ids (n,), vectors (n, dim)

    def check(self, found: list[tuple[int, str, float]]) -> None:
        """(id, path, score) hits: the queried photo first, then the k best of the rest by
        the store's vectors (up to float noise: another encoder backend made the query)."""
        ids, vectors = self.truth
        assert found, "no hits"
        assert found[0][1] == str(self.query) and found[0][2] > 0.999, found[0]
        scores = vectors @ vectors[-1]  # the query is the last image committed
        by_id = dict(zip(ids.tolist(), scores.tolist(), strict=True))
        best = np.sort(scores)[::-1][:K]
        assert len(found) == len(best)
        np.testing.assert_allclose([by_id[i] for i, _, _ in found], best, atol=1e-3)
        np.testing.assert_allclose([s for _, _, s in found], best, atol=1e-3)


def the_store(db: Path) -> tuple[Path, tuple[np.ndarray, np.ndarray]]:
    """The last image committed (its file) and every image vector the store holds."""
    with sqlite3.connect(f"file:{db / 'store.db'}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT items.id, vectors.data, files.path FROM items JOIN vectors "
                            "ON vectors.item_id = items.id JOIN files ON files.id = items.file_id"
                            " WHERE items.kind = ? ORDER BY items.id", (IMAGE,)).fetchall()
    conn.close()
    vectors = np.stack([np.frombuffer(r[1], "<f4") for r in rows]).astype(np.float32)
    return Path(rows[-1][2]), (np.array([r[0] for r in rows], np.int64), vectors)


@pytest.fixture(params=STATES)
def copy(request, places) -> Iterator[Copy]:
    state = STATES[request.param]
    db = Path(tempfile.mkdtemp(prefix="copy-", dir=places.base))
    db.rmdir()
    shutil.copytree(places.base / state.index, db)
    if state.stale:
        first_run_saved(db, places.old[state.index])
    for name in state.files:
        if state.damage is not None:
            state.damage(db / name)
    query, truth = the_store(db)
    yield Copy(db, state, query, truth)
    writable_again(db)
    shutil.rmtree(db)


def listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


# --- searched -------------------------------------------------------------------------------


def one_off(places: Places, db: Path, query: list[object], read_only: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`retriever search QUERY --db db --json` in a process of its own (as `nobody` when
    `read_only` and root)."""
    as_user = AS_NOBODY if read_only and os.geteuid() == 0 else []
    command = [*as_user, sys.executable, "-c", PROBE, *query, "--db", db, "--json", "-k", K]
    return subprocess.run(list(map(str, command)), env=env or places.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def hits(done: subprocess.CompletedProcess) -> list[tuple[int, str, float]]:
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    return [(r["id"], r["path"], r["score"]) for r in rows]


def made_read_only(folder: Path) -> None:
    for path in (*folder.rglob("*"), folder):
        path.chmod(0o555 if path.is_dir() else 0o444)


def writable_again(folder: Path) -> None:
    for path in (folder, *folder.rglob("*")):
        path.chmod(0o755)


@pytest.mark.skipif(ROOT_WITHOUT_SETPRIV, reason="as root, needs setpriv to search as nobody")
@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only"])
def test_a_one_off_search_answers_what_the_store_holds(places, copy, read_only):
    env = {**places.env, **({ENV_ON_DISK: "yes"} if copy.state.on_disk else {})}
    if read_only:
        made_read_only(copy.db)
    before = listing(copy.db)
    done = one_off(places, copy.db, ["--image", copy.query], read_only, env)
    copy.check(hits(done))
    assert "LOADED []" in done.stderr  # the reader answered every state without SQLAlchemy
    if read_only:
        assert listing(copy.db) == before


@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only"])
def test_the_server_answers_what_the_store_holds(copy, read_only, monkeypatch, tiny_encoder):
    if copy.state.on_disk:
        monkeypatch.setenv(ENV_ON_DISK, "yes")
    if read_only:  # as if the user could not write the folder (root may)
        monkeypatch.setattr(collection_module, "_writable", lambda directory: False)
    before = listing(copy.db)
    collection = Collection.open(copy.db, configured(user_settings()))  # as `serve` opens it
    with TestClient(create_app(collection, tiny_encoder), base_url="http://127.0.0.1") as web:
        response = web.post("/api/search", data={"target": "images", "k": str(K)},
                            files={"image": ("q.jpg", copy.query.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    copy.check([(r["id"], r["path"], r["score"]) for r in response.json()["results"]])
    assert (IMAGE in collection.rebuilt) == copy.state.rebuilt
    collection.close()
    if read_only:  # the -shm file is SQLite's shared memory, which a reader may update
        assert {k: v for k, v in listing(copy.db).items() if not k.endswith("-shm")} == \
               {k: v for k, v in before.items() if not k.endswith("-shm")}


# --- the "done when" ------------------------------------------------------------------

SEARCHES = 5  # one-off searches that must answer while the run is alive
NOTES = 15_000  # files the run adds: 5 searches took the first 1,800 at load 9 (2 cores)


@pytest.mark.skipif(ROOT_WITHOUT_SETPRIV, reason="as root, needs setpriv to search as nobody")
def test_searches_answer_during_a_run_after_its_sigkill_and_read_only(places):
    """One-off searches every 0.5 s while `retriever index` adds photos to an index (its saved
    files stale all along), after the run is SIGKILLed, and once the folder is read-only: each
    answers, the queried photo first. Only the count of searches made while the run was alive
    is asked of the machine's speed."""
    media, db = places.base / "media" / "during", places.base / "during"
    first = photos(media, 3)
    places.index(media, db)
    for n in range(NOTES):  # cheap to write, one commit each (--batch-size 1): a long run
        (media / "notes" / f"{n // 1000}").mkdir(parents=True, exist_ok=True)
        (media / "notes" / f"{n // 1000}" / f"{n}.txt").write_text(f"note {n}: {colour(n)}")
    answered: list[list[tuple[int, str, float]]] = []
    with index_run(places, media, db, 1) as run:  # a commit a file
        while run.poll() is None and len(answered) < SEARCHES:
            answered.append(hits(one_off(places, db, ["--image", first[len(answered) % 3]])))
            time.sleep(0.5)
    assert [found[0][1] for found in answered] == \
           [str(first[n % 3]) for n in range(SEARCHES)]
    committed = store_count(db)
    assert 3 < committed < 3 + NOTES  # some batches committed, not all (saved: the first 3)
    with sqlite3.connect(f"file:{db / 'store.db'}?mode=ro", uri=True) as conn:
        last, words = conn.execute("SELECT files.path, items.passage FROM items JOIN files ON "
                                   "files.id = items.file_id ORDER BY items.id DESC").fetchone()
    conn.close()
    for read_only in (False, True):  # after the SIGKILL; then read-only, as nobody
        if read_only:
            made_read_only(db)
        # the last note committed, found by its own words (the same vector)
        found = hits(one_off(places, db, [words, "--to", "texts"], read_only))
        assert found[0][1] == last and found[0][2] > 0.999
    writable_again(db)


# --- the reader's own reads, in a process that never imported SQLAlchemy -----------------------

READER = """import json, sys
from index.kinds import IMAGE
from index.records import ModelRecord
from index.store import open_store
from retriever.errors import IndexReadOnly
reader = open_store(sys.argv[1], reading=True)
batches = [(ids.tolist(), vectors.tolist()) for ids, vectors in reader.vector_batches(IMAGE, 2)]
print(json.dumps([batches, 'sqlalchemy' in sys.modules]))
for name, args in json.loads(sys.argv[2]):
    print(json.dumps(repr(getattr(reader, name)(*args))))
try:
    reader.set_model(ModelRecord('other', 'none', 8))
except IndexReadOnly:
    print('refused')
"""
# Store reads beyond a search's: sqlite3 answers them as SQLAlchemy does
OTHER_READS = [("counts", []), ("last_run", []), ("failures", []), ("file_states", []),
               ("vectors", [IMAGE]), ("image_files", []), ("recent_images", [3]),
               ("file_state", ["/m/p1.jpg"]), ("items_with_hash", ["h2"])]


def test_every_store_read_answers_through_the_reader_as_through_sqlalchemy(tmp_path):
    """The rebuild's batches in plain SQL (no SQLAlchemy loaded for them), every other read
    as `Store` answers it, a write refused: in a fresh process, where SQLAlchemy's names are
    bound only if the reader binds them."""
    from index.records import FailureRecord, FileRecord, ItemRecord, ModelRecord
    from index.store import Store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.set_model(ModelRecord("m", "none", 8, "f" * 64))
    run = store.start_run()
    store.write_files([(FileRecord(f"/m/p{n}.jpg", IMAGE, f"h{n}", 10 + n, 1.0 + n),
                        [ItemRecord(IMAGE, 0, None, unit(n))]) for n in range(5)])
    store.remove_files(["/m/p3.jpg"])
    store.record_failures(run, [FailureRecord("/m/bad.jpg", "not an image", 4, 2.0)])
    store.finish_run(run, {"images": 5})
    done = subprocess.run([sys.executable, "-c", READER, url, json.dumps(OTHER_READS)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    first, *reads, refused = done.stdout.splitlines()
    batches, loaded = json.loads(first)
    assert not loaded
    assert batches == [[ids.tolist(), vectors.tolist()]
                       for ids, vectors in store.vector_batches(IMAGE, 2)]
    assert [len(ids) for ids, _ in batches] == [2, 2]  # 4 images left, 2 a batch
    assert [json.loads(read) for read in reads] == [
        repr(getattr(store, name)(*args)) for name, args in OTHER_READS]
    assert refused == "refused"
    store.close()


def unit(seed: int, dim: int = 8) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return vector / np.linalg.norm(vector)
