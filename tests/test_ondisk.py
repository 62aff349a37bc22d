"""An IVF searched from disk (index.ondisk): the same results as the index loaded in memory,
before and after delta saves with additions and removals; damage still means a rebuild."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from index import ann, ondisk
from index import saved as saved_module
from index.ann import ENV_ON_DISK, AnnConfig, configured
from index.kinds import IMAGE
from index.ondisk import DiskIndex, wanted
from index.records import ModelRecord
from index.vectors import VectorIndex
from retriever.errors import UsageError
from retriever.library.collection import Collection
from tests.helpers import clustered, files, user_settings

DIM = 32
N = 3000


def run(folder, kind, change) -> None:
    collection = Collection.open(folder, AnnConfig(kind))
    with collection.writing():
        change(collection)
        collection.save()
    collection.close()


@pytest.fixture(params=["ivf", "ivfpq"])
def saved(request, tmp_path, monkeypatch):
    """N image vectors saved whole as an IVF (or IVF-PQ), past a lowered flat limit."""
    monkeypatch.setattr(ann, "FLAT_UP_TO", 1000)
    monkeypatch.delenv(ENV_ON_DISK, raising=False)
    folder, kind = tmp_path / "index", request.param
    collection = Collection.open(folder, AnnConfig(kind))
    collection.bind_model(ModelRecord("m", "none", DIM))
    collection.close()
    run(folder, kind, lambda c: c.write_files(files(clustered(N))))
    return folder, kind


def with_deltas(folder, kind) -> None:
    """Two more runs saved as deltas: files added, replaced (their saved items removed) and
    removed, among them files only the first delta added."""
    def first(c):
        c.write_files(files(clustered(200, seed=1), start=N))
        c.write_files(files(clustered(30, seed=2), start=0, tag="new"))  # files 0..29 replaced

    def second(c):
        c.remove_files([f"/m/{i}.jpg" for i in [*range(30, 90), *range(N, N + 50)]])
        c.write_files(files(clustered(10, seed=3), start=N + 500))

    run(folder, kind, first)
    run(folder, kind, second)
    assert sorted(p.name for p in folder.glob("images.faiss.delta*")) == [
        "images.faiss.delta1", "images.faiss.delta2"]


def readers(folder):
    """The same saved files searched from disk and loaded in memory."""
    on_disk = Collection.open(folder, AnnConfig(on_disk="yes")).searcher(IMAGE)
    in_memory = Collection.open(folder, AnnConfig(on_disk="no")).searcher(IMAGE)
    assert isinstance(on_disk, DiskIndex) and isinstance(in_memory, VectorIndex)
    return on_disk, in_memory


def assert_same(found, expected) -> None:
    """Same scores (1e-5) and ids; ids of equal scores may come out in another order."""
    np.testing.assert_allclose(found[0], expected[0], atol=1e-5)
    for scores, ids, want in zip(expected[0], found[1], expected[1], strict=True):
        assert {(round(float(s), 4), int(i)) for s, i in zip(scores, ids, strict=True)} == \
               {(round(float(s), 4), int(i)) for s, i in zip(scores, want, strict=True)}


QUERIES = np.concatenate([clustered(300, seed=7), clustered(90, seed=0)])  # + removed ones


def test_a_saved_ivf_is_searched_from_its_file(saved):
    folder, _ = saved
    on_disk, in_memory = readers(folder)
    lists = faiss.downcast_InvertedLists(on_disk.saved.invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)  # mapped, not read into memory
    assert len(on_disk) == len(in_memory) == N and on_disk.added.ntotal == 0
    assert_same(on_disk.search(QUERIES, 10), in_memory.search(QUERIES, 10))


def test_deltas_search_as_the_whole_index_would(saved):
    folder, kind = saved
    with_deltas(folder, kind)
    on_disk, in_memory = readers(folder)
    assert len(on_disk) == len(in_memory) == N + 200 - 60 - 50 + 10
    assert on_disk.added.ntotal == 200 - 50 + 30 + 10
    for k in (1, 10, 50):
        assert_same(on_disk.search(QUERIES, k), in_memory.search(QUERIES, k))
    allowed = np.arange(0, N + 600, 3)
    assert_same(on_disk.search(QUERIES, 10, allowed), in_memory.search(QUERIES, 10, allowed))


def test_a_removed_id_never_comes_back_and_k_live_ones_do(saved):
    folder, kind = saved
    with_deltas(folder, kind)
    on_disk, in_memory = readers(folder)
    gone = np.concatenate([np.arange(1, 91), np.arange(N + 1, N + 51)])  # ids from 1, in order
    assert np.isin(gone, on_disk.removed).sum() >= 90  # saved ones; delta1's went with it
    # the removed vectors themselves as queries: each one's best hit was itself
    scores, ids = on_disk.search(clustered(90, seed=0), 10)
    assert not np.isin(ids, gone).any()
    assert (ids >= 0).all()  # ten live results for every query, as in memory
    assert_same((scores, ids), in_memory.search(clustered(90, seed=0), 10))


def test_an_index_saved_whole_again_has_no_deltas_to_hold(saved, monkeypatch):
    folder, kind = saved
    monkeypatch.setattr(saved_module, "MAX_DELTAS", 1)
    for seed in range(2):  # a delta, then (one is the most) the whole index again
        run(folder, kind, lambda c, s=seed: c.write_files(
            files(clustered(5, seed=s), start=N + 5 * s)))
    assert list(folder.glob("images.faiss.delta*")) == []
    on_disk, in_memory = readers(folder)
    assert on_disk.added.ntotal == 0 and len(on_disk.removed) == 0
    assert_same(on_disk.search(QUERIES, 10), in_memory.search(QUERIES, 10))


@pytest.mark.parametrize("name", ["images.faiss", "images.faiss.delta2"])
def test_a_damaged_file_is_a_rebuild_from_the_store(saved, name):
    folder, kind = saved
    with_deltas(folder, kind)
    path = folder / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    reader = Collection.open(folder, AnnConfig(on_disk="yes"))
    searcher = reader.searcher(IMAGE)
    assert reader.rebuilt == [IMAGE] and isinstance(searcher, VectorIndex)
    assert len(searcher) == N + 200 - 60 - 50 + 10


def test_on_a_gpu_the_index_stays_in_memory(saved):
    folder, _ = saved  # `Settings.gpu`: FAISS sees a GPU here
    assert isinstance(Collection.open(folder, AnnConfig(on_disk="yes", gpu=True))
                      .searcher(IMAGE), VectorIndex)


def test_a_flat_index_keeps_its_mirror(tmp_path):
    folder = tmp_path / "index"
    collection = Collection.open(folder)
    collection.bind_model(ModelRecord("m", "none", DIM))
    collection.close()
    run(folder, "auto", lambda c: c.write_files(files(clustered(100))))
    reader = Collection.open(folder, AnnConfig(on_disk="yes"))
    assert type(reader.searcher(IMAGE)).__name__ == "ExactIndex"
    (folder / "images.vectors.npy").write_bytes(b"damaged")
    reader = Collection.open(folder, AnnConfig(on_disk="yes"))
    assert isinstance(reader.searcher(IMAGE), VectorIndex) and reader.rebuilt == []


def test_the_setting_comes_from_the_environment_and_a_bad_one_is_one_line(saved, monkeypatch):
    folder, _ = saved
    monkeypatch.setenv(ENV_ON_DISK, "yes")  # read as the CLI reads it (retriever.settings)
    assert configured(user_settings()).on_disk == "yes"
    assert isinstance(Collection.open(folder, configured(user_settings())).searcher(IMAGE),
                      DiskIndex)
    monkeypatch.setenv(ENV_ON_DISK, "sometimes")
    with pytest.raises(UsageError, match=r"\$RETRIEVER_INDEX_ON_DISK 'sometimes': use one of "
                                         r"auto, yes, no"):
        Collection.open(folder, configured(user_settings())).searcher(IMAGE)


def test_auto_maps_a_file_over_a_share_of_the_memory_available(tmp_path, monkeypatch):
    path = tmp_path / "images.faiss"
    path.write_bytes(b"x" * 1000)
    enough = int(1000 / ondisk.ON_DISK_SHARE)
    monkeypatch.setattr(ondisk, "available_memory", lambda: enough)
    assert not wanted(path, "auto")
    monkeypatch.setattr(ondisk, "available_memory", lambda: enough - 1)
    assert wanted(path, "auto") and not wanted(path, "no")
    monkeypatch.setattr(ondisk, "available_memory", lambda: None)  # not Linux: in memory
    assert not wanted(path, "auto") and wanted(path, "yes")
    assert not wanted(tmp_path / "missing.faiss", "auto")


def test_memory_available_is_read_from_this_machine():
    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024  # MemTotal, first
    available = ondisk.available_memory()
    assert available is not None and 0 < available <= total


def test_a_count_its_files_cannot_hold_is_refused(saved):
    """`Collection` passes the .faiss.json's count: one outside what the saved index and its
    deltas can hold is a ValueError, which `Collection` answers with a rebuild."""
    folder, kind = saved
    with_deltas(folder, kind)
    deltas = [folder / "images.faiss.delta1", folder / "images.faiss.delta2"]
    live = N + 200 - 60 - 50 + 10
    assert len(DiskIndex.load(folder / "images.faiss", deltas, live)) == live
    for wrong in (N + 190 + 1, live - 200):  # 190 held in memory, 140 ids removed
        with pytest.raises(ValueError, match="vectors recorded"):
            DiskIndex.load(folder / "images.faiss", deltas, wrong)
