"""Damaged index files, a full disk, a read-only index folder: never trusted, never a traceback.

Saved vector files carry checksums: a damaged one (same size or not) is rebuilt from the store,
and results stay those of brute force over the stored vectors. A damaged store.db, a full disk
and a bad RETRIEVER_STORE_URL are one named error. A folder the user cannot write is searched
without anything being written to it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event

from index.checksums import ChecksumMismatch, Summing, checksum, verified
from index.kinds import IMAGE, KINDS, TEXT
from index.records import FileRecord, ItemRecord, ModelRecord
from index.saved import VECTOR_FILES
from index.store import Store
from retriever.errors import BadStoreUrl, DiskFull, IndexReadOnly, StoreDamaged
from retriever.library.collection import Collection

from .helpers import flip_middle, truncate, write_photo

DIM = 16
ROOT = Path(__file__).resolve().parents[1]


def unit(rng, n, dim=DIM):
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


MODEL = ModelRecord("m", "none", DIM)


def build(directory: Path, model: ModelRecord = MODEL) -> Path:
    """An index of 60 images and 25 passages (random unit vectors), saved by the writer."""
    rng = np.random.default_rng(3)
    collection = Collection.open(directory)
    with collection.writing():
        collection.bind_model(model)
        for kind, n in ((IMAGE, 60), (TEXT, 25)):
            vectors = unit(rng, n, model.dim)
            collection.write_files([
                (FileRecord(f"/m/{kind}{i}", kind, f"{kind}{i}", 1, 1.0),
                 [ItemRecord(kind, 0, None, vectors[i])]) for i in range(n)])
        collection.save()
    collection.close()
    return directory


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("damaged") / "index")


@pytest.fixture
def index(clean, tmp_path) -> Path:
    """A fresh copy of the clean index, to damage."""
    return Path(shutil.copytree(clean, tmp_path / "index"))


def brute_force(collection: Collection, kind: str, queries: np.ndarray, k: int):
    """Top-k ids by inner product over the store's own vectors: what any search must return."""
    ids, vectors = collection.store.vectors(kind)
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    return ids[order]


QUERIES = unit(np.random.default_rng(11), 8)


def assert_true_results(searcher, collection: Collection, kind: str = IMAGE) -> None:
    _, found = searcher.search(QUERIES, 5)
    np.testing.assert_array_equal(found, brute_force(collection, kind, QUERIES, 5))


DAMAGES = {"flipped": flip_middle, "truncated": truncate}
FILES = ["images.faiss", "images.ids.npy", "images.vectors.npy"]


# --- saved vector files --------------------------------------------------------------------


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_saved_file_is_never_searched(index, name, damage):
    """Readers (the exact mirror, else FAISS) and the writer (FAISS) both answer what the
    store holds; a damaged FAISS file is rebuilt from the store."""
    DAMAGES[damage](index / name)
    collection = Collection.open(index)
    assert_true_results(collection.searcher(IMAGE), collection)
    assert_true_results(collection.vectors(IMAGE), collection)
    assert collection.rebuilt == (["image"] if name.endswith(".faiss") else [])
    collection.close()


@pytest.mark.parametrize("name", FILES)
def test_the_writer_saves_a_repaired_index_even_when_nothing_changed(index, name):
    flip_middle(index / name)
    collection = Collection.open(index)
    with collection.writing():
        collection.save()
    collection.close()
    meta = json.loads((index / "images.faiss.json").read_text())
    assert {n: checksum(index / n) for n in FILES} == meta["checksums"]
    again = Collection.open(index)
    assert_true_results(again.vectors(IMAGE), again)
    assert again.rebuilt == []


def test_damaged_meta_json_is_a_rebuild(index):
    (index / "images.faiss.json").write_text("{\"generation\": 1, \"cou")
    collection = Collection.open(index)
    assert_true_results(collection.searcher(IMAGE), collection)
    assert collection.rebuilt == ["image"]


def test_an_index_saved_before_checksums_is_rebuilt_once_then_saved_with_them(index):
    """The old format (meta without checksums) opens; unverified, it is rebuilt from the
    store, and the next writer run saves it with checksums."""
    for kind in KINDS:
        meta_path = index / f"{VECTOR_FILES[kind]}.json"
        meta = json.loads(meta_path.read_text())
        del meta["checksums"]
        meta_path.write_text(json.dumps(meta))
    old = Collection.open(index)
    assert_true_results(old.searcher(IMAGE), old)
    assert old.rebuilt == ["image"]
    with old.writing():
        old.save()
    old.close()
    upgraded = Collection.open(index)
    assert_true_results(upgraded.vectors(TEXT), upgraded, TEXT)
    assert upgraded.rebuilt == []
    assert "checksums" in json.loads((index / "texts.faiss.json").read_text())


def test_a_file_replaced_while_it_is_loaded_is_not_trusted(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"first")
    expected = checksum(path)
    with pytest.raises(ChecksumMismatch, match="replaced"), verified(path, expected):
        (tmp_path / "b.bin").write_bytes(b"other")
        os.replace(tmp_path / "b.bin", path)
    with pytest.raises(ChecksumMismatch, match="no checksum"), verified(path, None):
        pass


# --- the store ----------------------------------------------------------------------------


def garbage_header(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.write(b"not a database, not at all")


def flip_middle_page(path: Path) -> None:
    """The first 64 bytes of the page in the middle of a SQLite file inverted: that b-tree
    page's header and cell pointers, which every read of the page checks (bytes inside a
    value are not checked by anything: SQLite keeps no checksums)."""
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big") or 65536  # 1 in the header: 64 KiB
    start = len(data) // 2 // page_size * page_size
    data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    path.write_bytes(bytes(data))


STORE_DAMAGES = {"truncated": truncate, "garbage header": garbage_header,
                 "damaged page": flip_middle_page}


BIGGER = 1000  # passages in `bigger_store`


def bigger_store(directory: Path) -> Path:
    """A store of 2.6 MB (80 pages of 32 KiB: long passages), so damage in the middle of the
    file lands inside its data (the passages, their vectors, or their keyword index); in a
    smaller one it lands in the first page of some empty table, which nothing reads."""
    store = Store(f"sqlite:///{directory / 'store.db'}")
    store.write_files([(FileRecord(f"/m/t{i}", TEXT, f"t{i}", 1, 1.0),
                        [ItemRecord(TEXT, 0, "words " * 300, unit(np.random.default_rng(i), 1)[0])])
                       for i in range(BIGGER)])
    store.close()
    return directory


@pytest.mark.parametrize("damage", STORE_DAMAGES)
def test_a_damaged_store_is_one_line_naming_integrity_check(tmp_path, damage, cli):
    db = bigger_store(tmp_path)
    STORE_DAMAGES[damage](db / "store.db")
    with pytest.raises(StoreDamaged) as raised:
        collection = Collection.open(db)
        collection.store.vectors(TEXT)
        collection.store.items(list(range(1, BIGGER + 1)))
        collection.store.keyword_hits("words", [TEXT], BIGGER)  # the FTS5 index's pages
    assert str(db / "store.db") in str(raised.value)
    assert "PRAGMA integrity_check" in str(raised.value)
    if damage == "damaged page":
        return  # `info` reads only the pages it needs: these may be whole
    result = cli("info", "--db", db)
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "PRAGMA integrity_check" in result.stderr and "retriever index" in result.stderr


def test_a_full_disk_under_sqlite_is_one_line(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.engine.dispose()
    event.listen(store.engine, "connect",  # SQLite's own SQLITE_FULL once the file has 20 pages
                 lambda conn, _: conn.execute("PRAGMA max_page_count = 20"))
    with pytest.raises(DiskFull, match="free space") as raised:
        for i in range(100):
            store.write_files([(FileRecord(f"/m/{i}", TEXT, "h", 1, 1.0),
                                [ItemRecord(TEXT, 0, "x" * 4000, np.ones(DIM, np.float32))])])
    assert str(tmp_path) in str(raised.value)


@pytest.mark.parametrize("failing", ["index", "mirror"])
def test_a_full_disk_while_saving_keeps_the_saved_index(index, monkeypatch, failing):
    """ENOSPC half-way through writing a FAISS file or its mirror: one line naming the folder,
    and the index saved before is untouched and still current for readers."""
    before = saved_files(index)
    collection = Collection.open(index)
    collection.vectors(IMAGE)  # loaded: saved again
    written = 0

    def write(self, data):
        nonlocal written
        written += 1
        if (failing == "index") == (written == 1):  # the FAISS file's first write, else later
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.fh.write(data)

    monkeypatch.setattr(Summing, "write", write)
    with collection.writing(), pytest.raises(DiskFull, match="free space") as raised:
        collection.save()
    assert str(index) in str(raised.value)
    collection.close()
    assert saved_files(index) == before  # no temp file left, nothing half-written
    reader = Collection.open(index)
    assert_true_results(reader.searcher(IMAGE), reader)
    assert reader.rebuilt == []


def saved_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()
            if not p.name.startswith("store.db") and p.name != "write.lock"}


@pytest.mark.parametrize("url", ["not a url", "nosuchdialect://x/y",
                                 "postgresql+nosuchdriver://u@h/db",
                                 "postgresql+psycopg2://u@h/db"])
def test_a_bad_store_url_is_one_line_naming_the_variable(tmp_path, monkeypatch, url, cli):
    monkeypatch.setenv("RETRIEVER_STORE_URL", url)
    if url == "postgresql+psycopg2://u@h/db":  # (postgresql:// means psycopg 3, installed)
        try:
            import psycopg2  # noqa: F401
            pytest.skip("psycopg2 is installed: the URL is valid")
        except ImportError:
            pass
    with pytest.raises(BadStoreUrl, match="RETRIEVER_STORE_URL"):
        Collection.open(tmp_path / "index", store_url=url)  # as the CLI passes the variable
    result = cli("info", "--db", tmp_path / "index")
    assert result.exit_code == 2 and "RETRIEVER_STORE_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- a read-only index folder ---------------------------------------------------------------


def listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.fixture
def read_only(monkeypatch):
    """As if the user could not write the index folder (the tests run as root, which may)."""
    monkeypatch.setattr("retriever.library.collection._writable", lambda directory: False)


def test_a_read_only_index_is_searched_and_nothing_is_written(index, read_only):
    (index / "texts.faiss.json").unlink()  # stale: rebuilt in memory, not saved
    before = listing(index)
    collection = Collection.open(index)
    assert collection.read_only
    assert_true_results(collection.searcher(IMAGE), collection)
    assert_true_results(collection.searcher(TEXT), collection, TEXT)
    assert collection.rebuilt == ["text"]
    assert collection.store.counts().images == 60
    with pytest.raises(IndexReadOnly, match="read-only"):
        collection.writing().__enter__()
    with pytest.raises(IndexReadOnly, match="read-only"):  # SQLite itself refuses, even root
        collection.store.set_model(ModelRecord("other", "none", DIM))
    collection.close()
    assert listing(index) == before


def test_a_read_only_index_sees_what_a_live_writer_committed(index, read_only):
    """With a -wal file (a writer still open), the read-only store reads the WAL too."""
    writer = Store(f"sqlite:///{index / 'store.db'}")
    writer.write_files([(FileRecord("/m/late", IMAGE, "late", 1, 1.0),
                         [ItemRecord(IMAGE, 0, None, np.ones(DIM, np.float32))])])
    assert (index / "store.db-wal").exists()
    collection = Collection.open(index)
    assert collection.store.counts().images == 61
    collection.close()
    writer.close()


def test_a_read_only_store_older_than_the_code_says_so(index, read_only):
    import sqlite3

    with sqlite3.connect(index / "store.db") as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = 3")
    with pytest.raises(IndexReadOnly, match="schema version 2"):
        Collection.open(index)


def test_a_read_only_index_is_served(index, read_only, tiny_encoder):
    from starlette.testclient import TestClient

    from retriever.server.app import create_app

    collection = Collection.open(index)
    with TestClient(create_app(collection, tiny_encoder), base_url="http://127.0.0.1") as web:
        response = web.get("/api/info")
        assert response.status_code == 200, response.text
    collection.close()


nobody = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run a command as an unprivileged user")


@nobody
def test_info_and_search_as_a_user_who_cannot_write_the_index():
    """For real: the index belongs to root, `nobody` runs `info` and `search` on it."""
    shared = Path(tempfile.mkdtemp(prefix="retriever-ro-"))
    try:
        shared.chmod(0o755)
        media = shared / "media"
        write_photo(media / "red.jpg", (220, 30, 30))
        db = build(shared / "index", ModelRecord("retriever-tiny", "none", 64))
        for path in (db, *db.rglob("*")):
            path.chmod(0o555 if path.is_dir() else 0o444)
        before = listing(db)
        home = shared / "home"
        home.mkdir(mode=0o777)
        home.chmod(0o777)
        env = {**os.environ, "HOME": str(home), "HF_HOME": str(home / "hf"),
               "RETRIEVER_BACKEND": "torch", "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("RETRIEVER_STORE_URL", None)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                     sys.executable, str(ROOT / "cli.py")]
        for args in (["info", "--db", str(db), "--json"],
                     ["search", "red", "--db", str(db), "--json"]):
            done = subprocess.run(as_nobody + args, env=env, capture_output=True, text=True,
                                  cwd=home, timeout=300)
            assert done.returncode == 0, done.stderr
            assert "Traceback" not in done.stderr
        assert len(done.stdout.splitlines()) == 10  # search answered, one JSON line a hit
        written = subprocess.run(as_nobody + ["index", str(media), "--db", str(db)], env=env,
                                 capture_output=True, text=True, cwd=home, timeout=300)
        assert written.returncode == 1, written.stderr
        assert written.stderr.strip().splitlines() == [
            f"error: {db} is read-only: `retriever search`, `info` and `serve` work on it; to "
            f"index, make it writable or pass --db DIR to index elsewhere"]
        assert listing(db) == before
    finally:
        for path in shared.rglob("*"):
            path.chmod(0o755)
        shutil.rmtree(shared)
