"""`retriever index --model NEW --switch` (retriever.ingest.switch): searches keep the old model
while the new one's vectors are built beside them; a SIGKILL halfway loses nothing and the next
run goes on; afterwards the index holds the new model's vectors only, as an index built with it
from the start does.

The switching process is `retriever index` run by DRIVER, which counts the batches written to
the staged collection and, after the N-th, kills itself (SIGKILL) or waits for a file to go on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from retriever.ingest.inflight import JOURNAL_FILE
from retriever.ingest.switch import SWITCH_DIRNAME
from retriever.library.collection import Collection

from .helpers import TINY_ARGS, contents, make_media, tag_files, write_photo
from .postgres import Stores

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 300.0  # seconds: generous on a loaded machine, never a timing assertion
# argv: mode ("kill" | "pause" after that many staged batches; "kill-swapped": once the swap
# committed, before the staged folder is removed), the batches, the folder of the marker
# files, then `retriever`'s own arguments
DRIVER = f"""
import os, signal, sys, time
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from retriever.library.collection import Collection
mode, after, marks, args = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
write, done = Collection.write_files, []
def counted(self, batch):
    write(self, batch)
    if self.directory.name == {SWITCH_DIRNAME!r}:
        done.append(len(batch))
        if len(done) == after and mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if len(done) == after:
            (marks / "paused").write_text("")
            deadline = time.monotonic() + {DEADLINE}
            while not (marks / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
Collection.write_files = counted
take_over = Collection.take_over
def swapped(self, staged, *args):
    take_over(self, staged, *args)
    if mode == "kill-swapped":
        os.kill(os.getpid(), signal.SIGKILL)
Collection.take_over = swapped
from cli import app
app(args, prog_name="retriever")
"""


@pytest.fixture
def other_model(tmp_path) -> Path:
    """retriever-tiny's architecture with 48-d vectors (retriever-tiny's are 64-d)."""
    return tiny_config(tmp_path / "tiny-48.json", 48)


def tiny_config(path: Path, dim: int) -> Path:
    import open_clip

    config = open_clip.get_model_config("retriever-tiny")
    config["embed_dim"] = dim
    path.write_text(json.dumps(config))
    return path


def driven(mode: str, after: int, marks: Path, *args) -> subprocess.Popen:
    marks.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", DRIVER, mode, str(after), str(marks),
                             *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + DEADLINE
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def store_args(db: Path, stores: Stores) -> list[str]:
    url = stores.for_index(db)
    return ["--store", url] if url else []


def info(cli, db: Path, stores: Stores) -> dict:
    result = cli("info", "--db", db, "--json", *store_args(db, stores))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def hits(cli, db: Path, stores: Stores, query: str = "red paint") -> list[tuple[str, float]]:
    result = cli("search", query, "--db", db, "--json", "-k", "20", *store_args(db, stores))
    assert result.exit_code == 0, result.output
    return [(hit["path"], round(hit["score"], 4))
            for hit in map(json.loads, result.stdout.splitlines())]


def assert_same_vectors(db: Path, clean: Path, stores: Stores) -> None:
    """Same items at the same places, vectors within 1e-5."""
    got, want = contents(db, stores), contents(clean, stores)
    assert got.keys() == want.keys()
    for key, vector in got.items():
        np.testing.assert_allclose(vector, want[key], atol=1e-5)


def keyword_places(db: Path, stores: Stores, words: str) -> set[tuple[str, str, int]]:
    """Where the keyword search finds `words`; on SQLite, FTS5's integrity check passed first
    (its index matches the rows it indexes: tests/test_keywords.py)."""
    from sqlalchemy import text

    from index.kinds import KINDS
    from index.store import Store

    store = Store(stores.for_index(db) or f"sqlite:///{db / 'store.db'}")
    try:
        if not store.postgresql:
            with store.engine.begin() as conn:
                conn.execute(text("INSERT INTO keywords (keywords, rank) "
                                  "VALUES ('integrity-check', 1)"))
        views = store.items([item for item, _ in store.keyword_hits(words, KINDS, 100)])
        return {(view.path, view.kind, view.position) for view in views.values()}
    finally:
        store.close()


def indexed(cli, media: Path, db: Path, stores: Stores, *model) -> None:
    result = cli("index", media, "--db", db, "--batch-size", "2", *model, *store_args(db, stores))
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_searches_answer_with_the_old_model_until_the_switch_is_done(tmp_path, cli,
                                                                      other_model):
    stores = Stores(None, tmp_path)
    media, db = make_media(tmp_path / "media"), tmp_path / "idx"
    (media / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    indexed(cli, media, db, stores, *TINY_ARGS)
    red = media / "photos" / "red.jpg"
    collection = Collection.open(db)
    tag_files(collection, {red: "warm"})
    collection.close()
    before = hits(cli, db, stores)
    proc = driven("pause", 1, tmp_path / "marks", "index", media, "--db", db, "--batch-size", 2,
                  "--model", other_model, "--switch")
    wait_for(tmp_path / "marks" / "paused", proc)

    assert (db / SWITCH_DIRNAME).is_dir()  # the new model's first batch is staged
    assert info(cli, db, stores)["model"]["dim"] == 64
    assert hits(cli, db, stores) == before  # the old vectors answer, while the switch runs

    (tmp_path / "marks" / "go").write_text("")
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    model = info(cli, db, stores)["model"]
    assert (model["dim"], model["name"]) == (48, str(other_model))
    assert not (db / SWITCH_DIRNAME).exists()
    clean = tmp_path / "clean"
    indexed(cli, media, clean, stores, "--model", other_model)
    assert_same_vectors(db, clean, stores)
    assert hits(cli, db, stores) == hits(cli, clean, stores) != before
    collection = Collection.open(db)  # the tag is on the new item of its place, the failure kept
    assert collection.reads.tag_counts() == {"warm": 1}
    item = collection.reads.image_items_at([str(red)])[str(red)]
    assert collection.reads.tags([item]) == {item: ["warm"]}
    collection.close()
    assert [Path(f["path"]).name for f in info(cli, db, stores)["failures"]] == ["broken.jpg"]


@pytest.mark.slow
def test_a_switch_killed_halfway_goes_on_and_sees_the_files_as_they_are(tmp_path, cli,
                                                                         other_model, stores):
    """SIGKILL after two staged batches: the live index is as it was; files then change, go
    and come; `--switch` alone finishes the pending switch with the files as they are now."""
    media, db = make_media(tmp_path / "media"), tmp_path / "idx"
    indexed(cli, media, db, stores, *TINY_ARGS)
    before = contents(db, stores)
    proc = driven("kill", 2, tmp_path / "marks", "index", media, "--db", db, "--batch-size", 2,
                  "--model", other_model, "--switch", *store_args(db, stores))
    proc.communicate(timeout=DEADLINE)
    assert proc.returncode == -9
    # The kill is the test's, not a file's: the files the readers had in flight then (read
    # ahead of the batch, as many as the load allowed) would be blamed by the crash journal
    # and skipped until they change (retriever.ingest.inflight), and the clean index below
    # has them. test_faults removes its kills' journals alike.
    (db / SWITCH_DIRNAME / JOURNAL_FILE).unlink(missing_ok=True)

    assert info(cli, db, stores)["model"]["dim"] == 64
    now = contents(db, stores)
    assert now.keys() == before.keys()  # nothing of the live side lost or changed
    assert all(np.array_equal(now[key], before[key]) for key in before)
    staged = contents(db / SWITCH_DIRNAME, Stores(None, tmp_path))
    assert 0 < len({path for path, _, _ in staged}) < info(cli, db, stores)["files"]
    assert {len(v) for v in staged.values()} == {48}

    changed = sorted(p for p in media.rglob("*.jpg"))
    write_photo(changed[0], (3, 200, 90))  # new bytes
    changed[1].unlink()
    write_photo(media / "photos" / "late.jpg", (90, 3, 200))
    result = cli("index", media, "--db", db, "--switch", "--json", *store_args(db, stores))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["run"]["encoded"] < len(before)  # went on: not redone

    assert info(cli, db, stores)["model"]["dim"] == 48
    assert not (db / SWITCH_DIRNAME).exists()
    clean = tmp_path / "clean"
    indexed(cli, media, clean, stores, "--model", other_model)
    assert_same_vectors(db, clean, stores)
    for words in ("red", "field"):  # the keyword rows follow the swapped rows
        assert keyword_places(db, stores, words) == keyword_places(clean, stores, words) != set()


@pytest.mark.slow
def test_a_third_model_while_a_switch_is_pending_is_refused_until_cancelled(tmp_path, cli,
                                                                             other_model):
    stores = Stores(None, tmp_path)
    media, db = make_media(tmp_path / "media"), tmp_path / "idx"
    indexed(cli, media, db, stores, *TINY_ARGS)
    proc = driven("kill", 1, tmp_path / "marks", "index", media, "--db", db, "--batch-size", 2,
                  "--model", other_model, "--switch")
    proc.communicate(timeout=DEADLINE)
    third = tiny_config(tmp_path / "tiny-40.json", 40)

    refused = cli("index", media, "--db", db, "--model", third, "--switch")
    assert refused.exit_code == 2
    assert str(other_model) in refused.stderr and "--switch-cancel" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    plain = cli("index", media, "--db", db, "--model", third)  # no --switch: the fix says so
    assert plain.exit_code == 1 and "--switch" in plain.stderr

    cancelled = cli("index", media, "--db", db, "--switch-cancel")
    assert cancelled.exit_code == 0 and str(other_model) in cancelled.stdout
    assert not (db / SWITCH_DIRNAME).exists()
    indexed(cli, media, db, stores, "--model", third, "--switch")
    assert info(cli, db, stores)["model"]["dim"] == 40


def test_switch_asks_for_an_index_and_a_new_model(tmp_path, cli, other_model):
    stores = Stores(None, tmp_path)
    media, db = make_media(tmp_path / "media"), tmp_path / "idx"
    nothing = cli("index", media, "--db", db, "--model", other_model, "--switch")
    assert nothing.exit_code == 2 and "without --switch" in nothing.stderr
    indexed(cli, media, db, stores, *TINY_ARGS)
    same = cli("index", media, "--db", db, *TINY_ARGS, "--switch")
    assert same.exit_code == 2 and "nothing to switch" in same.stderr
    bare = cli("index", media, "--db", db, "--switch")
    assert bare.exit_code == 2 and "--switch needs --model" in bare.stderr
    both = cli("index", media, "--db", db, "--model", other_model, "--switch", "--reindex")
    assert both.exit_code == 2 and "pass one" in both.stderr
    assert info(cli, db, stores)["model"]["dim"] == 64 and not (db / SWITCH_DIRNAME).exists()


@pytest.mark.slow
def test_a_switch_killed_after_its_swap_leaves_the_new_model_and_no_pending_switch(
        tmp_path, cli, other_model):
    """The swap is one transaction, the staged folder's removal another step: killed between
    the two, the index has the new model, and the folder left is no pending switch."""
    stores = Stores(None, tmp_path)
    media, db = make_media(tmp_path / "media"), tmp_path / "idx"
    indexed(cli, media, db, stores, *TINY_ARGS)
    proc = driven("kill-swapped", 0, tmp_path / "marks", "index", media, "--db", db,
                  "--model", other_model, "--switch")
    proc.communicate(timeout=DEADLINE)
    assert proc.returncode == -9 and (db / SWITCH_DIRNAME).is_dir()
    assert info(cli, db, stores)["model"]["dim"] == 48

    indexed(cli, media, db, stores)  # a plain run: the new model, nothing pending refused
    third = tiny_config(tmp_path / "tiny-40.json", 40)
    indexed(cli, media, db, stores, "--model", third, "--switch")
    assert info(cli, db, stores)["model"]["dim"] == 40 and not (db / SWITCH_DIRNAME).exists()


@pytest.mark.slow
def test_a_running_server_answers_through_the_switch_then_with_the_new_model(tmp_path, cli,
                                                                            other_model):
    """`retriever serve` started before the switch: it answers with the old model while the
    switch runs, and with the new one once it is done, never restarted."""
    import re
    from urllib.parse import urlencode
    from urllib.request import urlopen

    stores = Stores(None, tmp_path)
    media, db, log = make_media(tmp_path / "media"), tmp_path / "idx", tmp_path / "serve.log"
    indexed(cli, media, db, stores, *TINY_ARGS)
    before = hits(cli, db, stores)
    with open(log, "ab") as sink:
        server = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", "--port", "0",
                                   "--db", str(db)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=sink)
    try:
        deadline = time.monotonic() + DEADLINE
        while not (url := re.search(r"at (http://\S+) ", log.read_text())):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

        def served() -> list[tuple[str, float]]:
            query = urlencode({"text": "red paint", "k": 20})
            with urlopen(f"{url[1]}/api/search?{query}", timeout=DEADLINE) as answer:
                return [(row["path"], round(row["score"], 4))
                        for row in json.load(answer)["results"]]

        assert served() == before
        proc = driven("pause", 1, tmp_path / "marks", "index", media, "--db", db,
                      "--batch-size", 2, "--model", other_model, "--switch")
        wait_for(tmp_path / "marks" / "paused", proc)
        assert served() == before  # the switch is under way: the old model answers
        (tmp_path / "marks" / "go").write_text("")
        assert proc.communicate(timeout=DEADLINE) and proc.returncode == 0
        result = cli("search", "red paint", "--db", db, "--json", "-k", "20", "--no-server")
        assert result.exit_code == 0, result.output  # in this process: the server not asked
        after = [(hit["path"], round(hit["score"], 4))
                 for hit in map(json.loads, result.stdout.splitlines())]
        assert after != before
        assert served() == after  # the new model, loaded by the running server
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=DEADLINE)
