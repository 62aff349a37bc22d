"""A reader opens a saved IVF reading its head, not its lists; damage is still found.

Bytes read are counted from /proc/self/io's rchar (every read() of this process, FAISS's own
included), around opening a collection and asking for its searcher. The writer stamps each
saved file (index.checksums): while its stat still matches, a reader checks only the head
FAISS parses (header, centroids, list sizes); a file written since (any mtime, even one set
back: its ctime moved) or copied is read whole against its checksum, and a damaged one is
rebuilt from the store. Damage no stat shows (bit rot) is found by `retriever check`, which
reads every file whole and rebuilds what is damaged.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from index import ann
from index.ann import AnnConfig
from index.checksums import checksum
from index.kinds import IMAGE, KINDS
from index.ondisk import DiskIndex, lists_start
from index.records import ModelRecord
from index.saved import VECTOR_FILES
from index.vectors import VectorIndex
from retriever.library.collection import Collection
from tests.helpers import clustered, files

DIM = 64
N = 20_000  # an IVF-Flat of 5.3 MB: over index.checksums.WHOLE_UP_TO, so not read whole
QUERIES = clustered(50, seed=7, dim=DIM)

if not Path("/proc/self/io").exists():
    pytest.skip("bytes read are counted from /proc/self/io (Linux)", allow_module_level=True)


def bytes_read() -> int:
    return int(next(line.split()[1] for line in Path("/proc/self/io").read_text().splitlines()
                    if line.startswith("rchar:")))


def opened(folder: Path, on_disk: str = "yes") -> tuple[Collection, object, int]:
    """A reader's collection, its searcher for images, and the bytes read to get them."""
    before = bytes_read()
    collection = Collection.open(folder, AnnConfig(on_disk=on_disk))
    searcher = collection.searcher(IMAGE)
    return collection, searcher, bytes_read() - before


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("open-cost") / "index"
    collection = Collection.open(folder, AnnConfig("ivf"))
    collection.bind_model(ModelRecord("m", "none", DIM))
    with collection.writing():
        for start in range(0, N, 5000):
            collection.write_files(files(clustered(5000, seed=start, dim=DIM), start=start))
        collection.save()
    collection.close()
    opened(folder)  # FAISS and the rest imported: later counts are the files' bytes
    return folder


@pytest.fixture
def index(clean, tmp_path) -> Path:
    """A copy of the clean index (new inodes: a copy is read whole), its files read whole and
    stamped again (`retriever check`'s verify), as a freshly saved index's are."""
    folder = Path(shutil.copytree(clean, tmp_path / "index"))
    Collection.open(folder).saved(IMAGE).verify()
    return folder


def searched(searcher) -> tuple[np.ndarray, np.ndarray]:
    return searcher.search(QUERIES, 10)


def test_an_ivf_opens_reading_its_head_not_its_lists(index, clean):
    path = index / "images.faiss"
    size, head = path.stat().st_size, lists_start(path)
    assert head < size // 20  # the lists are nearly all of the file
    collection, searcher, read = opened(index)
    assert isinstance(searcher, DiskIndex) and collection.rebuilt == []
    # the head checked once and parsed twice (the mapped index and its empty twin for
    # deltas); the store's few pages; none of the lists
    assert read < 3 * head + (1 << 20) < size // 2
    _, in_memory, read_whole = opened(index, on_disk="no")  # FAISS reads every byte
    assert isinstance(in_memory, VectorIndex) and read_whole >= size
    found, expected = searched(searcher), searched(in_memory)
    np.testing.assert_array_equal(found[1], expected[1])
    np.testing.assert_allclose(found[0], expected[0], atol=1e-5)


def test_an_index_saved_before_stamps_is_read_whole(index):
    meta_path = index / "images.faiss.json"
    meta = json.loads(meta_path.read_text())
    del meta["stamps"]
    meta_path.write_text(json.dumps(meta))
    collection, searcher, read = opened(index)
    assert isinstance(searcher, DiskIndex) and collection.rebuilt == []
    assert read >= (index / "images.faiss").stat().st_size


def flip_in_lists(path: Path, keep_mtime: bool) -> None:
    """One byte of the inverted lists (past the head) inverted, in place: same size; with
    `keep_mtime`, its mtime set back as it was (os.utime moves the ctime all the same)."""
    before = path.stat()
    where = (lists_start(path) + before.st_size) // 2
    with open(path, "r+b") as fh:
        fh.seek(where)
        byte = fh.read(1)
        fh.seek(where)
        fh.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert path.stat().st_size == before.st_size


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["new mtime", "mtime set back"])
def test_a_flipped_byte_in_the_lists_is_found_at_open(index, clean, keep_mtime):
    flip_in_lists(index / "images.faiss", keep_mtime)
    collection, searcher, _ = opened(index)
    assert collection.rebuilt == [IMAGE] and isinstance(searcher, VectorIndex)
    _, pristine, _ = opened(clean)
    np.testing.assert_array_equal(searched(searcher)[1], searched(pristine)[1])


def as_if_rotted(path: Path) -> None:
    """Damage below the file system: a byte of the lists flipped, and the stamp made to
    show the file's stat now (bit rot changes no stat field)."""
    flip_in_lists(path, keep_mtime=True)
    meta_path = path.with_name(f"{path.name}.json")
    meta = json.loads(meta_path.read_text())
    now = path.stat()
    meta["stamps"][path.name]["stat"] = [now.st_dev, now.st_ino, now.st_size,
                                         now.st_mtime_ns, now.st_ctime_ns]
    meta_path.write_text(json.dumps(meta))


@pytest.fixture
def ivf_from_auto(monkeypatch):
    """Rebuilds (by `check`, whose collection chooses the type) make an IVF of N, as the
    fixture's writer asked for one."""
    monkeypatch.setattr(ann, "FLAT_UP_TO", N // 10)


def test_damage_no_stat_shows_is_found_and_rebuilt_by_check(index, clean, cli, ivf_from_auto):
    path = index / "images.faiss"
    as_if_rotted(path)
    collection, searcher, _ = opened(index)
    assert collection.rebuilt == [] and isinstance(searcher, DiskIndex)  # open cannot tell
    collection.close()
    damaged, saved_as = checksum(path), checksum(clean / "images.faiss")
    result = cli("check", "--db", index)
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        f"{path}: damaged (checksum {damaged}, saved as {saved_as}); rebuilt from the store"]
    meta = json.loads((index / "images.faiss.json").read_text())
    assert checksum(path) == meta["checksums"]["images.faiss"]
    collection, searcher, read = opened(index)
    assert collection.rebuilt == [] and isinstance(searcher, DiskIndex)
    assert read < path.stat().st_size // 2  # saved again, stamped again
    _, pristine, _ = opened(clean)
    np.testing.assert_array_equal(searched(searcher)[1], searched(pristine)[1])
    again = cli("check", "--db", index)
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines() == [f"{index}: every saved index file matches its checksum"]


def test_a_copied_index_is_read_whole_until_check_stamps_it(clean, tmp_path, cli):
    copy = Path(shutil.copytree(clean, tmp_path / "copy"))
    size = (copy / "images.faiss").stat().st_size
    _, searcher, read = opened(copy)
    assert isinstance(searcher, DiskIndex) and read >= size  # another inode: read whole
    stamps = json.loads((copy / "images.faiss.json").read_text())["stamps"]
    result = cli("check", "--db", copy)
    assert result.exit_code == 0, result.output
    assert json.loads((copy / "images.faiss.json").read_text())["stamps"] != stamps
    collection, searcher, read = opened(copy)
    assert isinstance(searcher, DiskIndex) and collection.rebuilt == [] and read < size // 2


def test_check_rebuilds_a_stale_index_and_names_it(index, cli, ivf_from_auto):
    collection = Collection.open(index, AnnConfig("ivf"))
    collection.store.write_files(files(clustered(10, seed=1, dim=DIM), start=N))  # not saved
    collection.close()
    result = cli("check", "--db", index)
    assert result.exit_code == 1, result.output
    # a store write makes every kind's saved files stale (one generation for all)
    assert result.stdout.splitlines() == [
        f"{index / VECTOR_FILES[kind]}.json: stale: saved before the store's last change; "
        f"rebuilt from the store" for kind in KINDS]
    collection, searcher, _ = opened(index)
    assert collection.rebuilt == [] and len(searcher) == N + 10


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_the_writer_stamps_the_head_where_faiss_finds_the_lists(tmp_path, kind):
    """The head the writer computes (the file less its lists: a code and an id a vector) is
    where FAISS, mapping the file, finds the first list."""
    from index import saved as saved_module

    vectors = clustered(3000, dim=32)
    index = VectorIndex.from_vectors(32, np.arange(3000), vectors, AnnConfig(kind))
    assert index.kind == kind
    path = tmp_path / "images.faiss"
    index.save(path)
    assert saved_module._head_of(index, path) == lists_start(path)
    assert 0 < lists_start(path) < path.stat().st_size


def test_check_names_a_damaged_faiss_json_and_rebuilds_it(index, cli, ivf_from_auto):
    (index / "images.faiss.json").write_text('{"generation": 1, "cou')
    result = cli("check", "--db", index)
    assert result.exit_code == 1, result.output
    [line] = result.stdout.splitlines()
    assert line.startswith(f"{index / 'images.faiss.json'}: damaged (")
    assert line.endswith("; rebuilt from the store")
    collection, searcher, _ = opened(index)
    assert collection.rebuilt == [] and isinstance(searcher, DiskIndex) and len(searcher) == N


def test_check_on_a_read_only_index_reports_and_writes_nothing(index, cli, monkeypatch):
    monkeypatch.setattr("retriever.library.collection._writable", lambda directory: False)
    path = index / "images.faiss"
    as_if_rotted(path)
    before = {p.name: p.read_bytes() for p in index.iterdir() if p.name.endswith(
        (".faiss", ".json"))}
    result = cli("check", "--db", index)
    assert result.exit_code == 1, result.output
    [line] = result.stdout.splitlines()
    assert line.startswith(f"{path}: damaged (checksum ")
    assert line.endswith("run `retriever check` where the index is writable to rebuild it")
    assert {p.name: p.read_bytes() for p in index.iterdir() if p.name.endswith(
        (".faiss", ".json"))} == before
