"""Incremental indexing, counted: what a second run reads, encodes, reuses and removes.
Every test runs on a SQLite store, then on a PostgreSQL one (`store_env`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retriever.errors import IndexBusy, ModelMismatch
from retriever.ingest.pipeline import IngestOptions, ingest_media
from retriever.library.collection import Collection
from retriever.search.query import Query, search

from .helpers import write_photo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _on_each_store(store_env):
    """Collections opened here use SQLite, then PostgreSQL ($RETRIEVER_STORE_URL)."""


def colour(i):
    return (i * 37 % 256, i * 91 % 256, i * 53 % 256)


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "lib"
    for i in range(20):
        write_photo(root / f"p{i:02d}.jpg", colour(i))
    for i in range(5):
        (root / "docs").mkdir(exist_ok=True)
        (root / "docs" / f"d{i}.txt").write_text(f"document number {i} about colour {i}")
    return root


@pytest.fixture
def run(library, tiny_encoder, tmp_path):
    collection = Collection.open(tmp_path / "index")

    def index():
        with collection.writing():
            return ingest_media(collection, tiny_encoder, IngestOptions((library,), batch_size=8))

    yield index
    collection.close()


def test_first_run_encodes_everything_and_a_second_run_nothing(run):
    first = run()
    assert (first.images, first.texts, first.encoded) == (20, 5, 25)
    second = run()
    assert (second.encoded, second.reused, second.touched, second.unchanged) == (0, 0, 0, 25)


def test_renaming_ten_files_encodes_none(run, library):
    run()
    for i in range(10):
        (library / f"p{i:02d}.jpg").rename(library / f"renamed-{i}.jpg")
    report = run()
    assert (report.encoded, report.reused, report.removed) == (0, 10, 10)


def test_moving_and_duplicating_reuse_vectors(run, library):
    run()
    (library / "sub").mkdir()
    os.replace(library / "p00.jpg", library / "sub" / "p00.jpg")
    (library / "copy.jpg").write_bytes((library / "p01.jpg").read_bytes())
    report = run()
    assert (report.encoded, report.reused, report.removed) == (0, 2, 1)


def test_touching_three_files_encodes_none(run, library):
    run()
    for i in range(3):
        path = library / f"p{i:02d}.jpg"
        st = path.stat()
        os.utime(path, (st.st_atime, st.st_mtime + 100))
    report = run()
    assert (report.encoded, report.touched, report.unchanged) == (0, 3, 22)
    assert run().touched == 0  # the new mtimes were stored


def test_editing_two_files_encodes_two(run, library):
    run()
    write_photo(library / "p05.jpg", (255, 255, 0))
    (library / "docs" / "d1.txt").write_text("an entirely new text")
    report = run()
    assert (report.encoded, report.images, report.texts) == (2, 1, 1)


def test_deleting_five_removes_them_from_results(run, library, tiny_encoder, tmp_path):
    run()
    deleted = {str(library / f"p{i:02d}.jpg") for i in range(5)}
    for path in deleted:
        os.unlink(path)
    assert run().removed == 5
    collection = Collection.open(tmp_path / "index")
    results = search(collection, tiny_encoder, Query(text="colour", target="images", k=50))
    assert len(results) == 15 and not deleted & {r.path for r in results}


def test_a_failed_file_is_retried_only_once_it_changes(run, library):
    (library / "bad.jpg").write_bytes(b"not an image")
    first = run()
    assert [f.path for f in first.failures] == [str(library / "bad.jpg")]
    second = run()
    assert second.failures == [] and second.known_failures == 1
    write_photo(library / "bad.jpg", (1, 2, 3))
    third = run()
    assert third.images == 1 and third.known_failures == 0


def test_changed_sidecar_updates_the_caption_without_encoding_the_image(run, library, tmp_path):
    (library / "p03.txt").write_text("first caption")
    run()
    (library / "p03.txt").write_text("second caption, longer")
    report = run()
    assert report.images == 0 and report.texts == 1 and report.touched == 1
    collection = Collection.open(tmp_path / "index")
    ids = collection.store.item_ids_where("image", str(library / "p03.jpg"))
    assert collection.store.items(ids)[int(ids[0])].caption == "second caption, longer"


def test_deleted_sidecar_clears_the_caption_without_encoding_the_image(run, library, tmp_path):
    (library / "p03.txt").write_text("a caption that will be deleted")
    (library / "p04.txt").write_text("a caption that stays")
    run()
    os.unlink(library / "p03.txt")
    report = run()
    assert (report.images, report.touched, report.removed, report.unchanged) == (0, 1, 1, 25)
    collection = Collection.open(tmp_path / "index")
    captions = {}
    for name in ("p03.jpg", "p04.jpg"):
        ids = collection.store.item_ids_where("image", str(library / name))
        captions[name] = collection.store.items(ids)[int(ids[0])].caption
    assert captions == {"p03.jpg": None, "p04.jpg": "a caption that stays"}
    assert run().touched == 0  # noticed once: the next run has nothing to clear


def test_a_second_writer_is_refused_with_one_line(tmp_path):
    first = Collection.open(tmp_path / "index")
    second = Collection.open(tmp_path / "index")
    with first.writing(), pytest.raises(IndexBusy, match="--wait"), second.writing():
        pass
    with second.writing():  # released when the first writer is done
        pass


def test_indexing_with_another_model_names_reindex(run, library, tmp_path):
    from retriever.encoding.clip_encoder import ClipEncoder
    from retriever.encoding.models import ModelSpec, load_model

    run()
    other = ClipEncoder(load_model(ModelSpec("RN50", "none")))
    collection = Collection.open(tmp_path / "index")
    with pytest.raises(ModelMismatch, match="--reindex"):
        ingest_media(collection, other, IngestOptions((library,)))


def test_reindex_starts_over_with_the_new_model(library, cli, tmp_path):
    import json

    import open_clip

    cfg = open_clip.get_model_config("retriever-tiny")
    cfg["embed_dim"] = 48
    other = tmp_path / "other-arch.json"
    other.write_text(json.dumps(cfg))
    db = tmp_path / "cli-index"
    assert cli("index", library, "--db", db, "--model", "retriever-tiny", "--pretrained",
               "none").exit_code == 0
    (db / "thumbs" / "256").mkdir(parents=True)
    (db / "thumbs" / "256" / "1.jpg").write_bytes(b"stale")
    refused = cli("index", library, "--db", db, "--model", other)
    assert refused.exit_code == 1 and "--reindex" in refused.stderr
    redone = cli("index", library, "--db", db, "--model", other, "--reindex", "--json")
    report = json.loads(redone.stdout)
    assert report["run"]["encoded"] == 25 and report["images"] == 20
    info = json.loads(cli("info", "--db", db, "--json").stdout)
    assert info["model"]["dim"] == 48 and info["model"]["name"] == str(other)
    assert not (db / "thumbs").exists()


def test_bytes_that_move_to_a_new_file_while_the_old_one_changes_are_encoded(tmp_path,
                                                                              tiny_encoder):
    """b.jpg takes a.jpg's old bytes while a.jpg gets new ones. The reader skips decoding b
    (its bytes are stored), but a's batch replaces them before b's batch is written: b is
    read again and encoded, not lost."""
    root = tmp_path / "lib"
    write_photo(root / "a.jpg", (220, 30, 30))
    collection = Collection.open(tmp_path / "idx")
    options = IngestOptions((root,), batch_size=1)  # a and b in separate batches
    with collection.writing():
        ingest_media(collection, tiny_encoder, options)
    before = collection.store.vectors("image")[1][0]  # a.jpg's first picture
    (root / "b.jpg").write_bytes((root / "a.jpg").read_bytes())
    write_photo(root / "a.jpg", (30, 60, 220))
    os.utime(root / "a.jpg", (1, 1))
    with collection.writing():
        report = ingest_media(collection, tiny_encoder, options)
    assert (report.encoded, report.reused, len(report.failures)) == (2, 0, 0)
    found = {os.path.basename(r.path): r for r in search(
        collection, tiny_encoder, Query(text="x", target="images", k=5))}
    assert set(found) == {"a.jpg", "b.jpg"}
    ids, vectors = collection.store.vectors("image")
    b_vector = vectors[list(ids).index(found["b.jpg"].id)]
    assert abs(float(b_vector @ before) - 1) < 1e-5  # b holds a's old picture


HOLD_THE_LOCK = """
import os, sys
from pathlib import Path
from retriever.library.collection import Collection
# as the CLI's --store reads it: on PostgreSQL, the test's database
with Collection.open(Path(sys.argv[1]), store_url=os.environ.get("RETRIEVER_STORE_URL")).writing():
    print("holding", flush=True)
    sys.stdin.read()  # until the test closes it
"""


def test_a_second_writer_process_is_refused_or_queued_with_wait(library, tmp_path):
    """Two processes (on PostgreSQL, sharing only the database, as two machines would): the
    second `index` exits with code 3 and one line; with --wait it waits, then does the work."""
    db = tmp_path / "index"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(db)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout and holder.stdin and holder.stdout.readline() == "holding\n"
    index = [sys.executable, str(ROOT / "cli.py"), "index", str(library), "--db", str(db),
             "--model", "retriever-tiny", "--pretrained", "none", "--json"]
    start = time.monotonic()
    refused = subprocess.run(index, capture_output=True, text=True)
    to_the_lock = time.monotonic() - start
    assert refused.returncode == 3 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "pass --wait" in refused.stderr
    waiting = subprocess.Popen([*index, "--wait"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(max(3.0, 2 * to_the_lock))  # twice as long as the refused run took to get there
    assert waiting.poll() is None and Collection.open(db).summary().last_run is None
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err
    assert json.loads(out)["run"]["encoded"] == 25
