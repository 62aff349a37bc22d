"""SIGKILL `retriever index` at random moments; nothing committed may be lost or inconsistent.
On a SQLite store, then on a PostgreSQL one (the killed process's connection simply drops).

RETRIEVER_FAULT_KILLS sets how many kills (default 5; the full run uses 20 or more).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from index.kinds import IMAGE, KINDS
from index.saved import VECTOR_FILES
from index.vectors import VectorIndex
from retriever.encoding.clip_encoder import ClipEncoder
from retriever.encoding.models import load_model
from retriever.ingest.inflight import JOURNAL_FILE
from retriever.library.collection import Collection
from retriever.search.query import Query, search

from .helpers import TINY, contents, write_photo
from .postgres import Stores

ROOT = Path(__file__).resolve().parents[1]
KILLS = int(os.environ.get("RETRIEVER_FAULT_KILLS", "5"))
IMAGES = 120


def index_cmd(media: Path, db: Path, stores: Stores) -> list[str]:
    url = stores.for_index(db)  # PostgreSQL: the killed process's store is a database
    return [sys.executable, str(ROOT / "cli.py"), "index", str(media), "--db", str(db),
            "--model", "retriever-tiny", "--pretrained", "none", "--batch-size", "8",
            *(["--store", url] if url else [])]


def timed_run(cmd: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.monotonic() - start


def check_consistent(db: Path, encoder: ClipEncoder, stores: Stores) -> None:
    """What a reader sees: vector indexes hold exactly the store's vectors; search works."""
    collection = Collection.open(db, store_url=stores.for_index(db))
    for kind in KINDS:
        # a writer may commit between the two reads: compare them only when the store's
        # generation shows none did, so both saw one state of the store
        generation = collection.store.generation()
        stored_ids, _ = collection.store.vectors(kind)
        loaded = len(collection.vectors(kind))
        if collection.store.generation() == generation:
            assert loaded == len(stored_ids)
    if collection.reads.model() is not None:
        for result in search(collection, encoder, Query(text="a photo", k=5)):
            assert collection.store.items([result.id])  # every hit names a stored item
    collection.close()


def write_media(media: Path) -> None:
    for i in range(IMAGES):
        write_photo(media / f"p{i:03d}.jpg", (i, 255 - i, (7 * i) % 256))
    for i in range(12):
        (media / f"n{i:02d}.txt").write_text(f"note {i}: " + "words about photos " * (i + 1))


def test_sigkill_loses_nothing_committed(tmp_path, stores):
    """Kills from outside: each one's crash journal is removed (no file is the culprit)."""
    media = tmp_path / "media"
    write_media(media)
    encoder = ClipEncoder(load_model(TINY))

    full = timed_run(index_cmd(media, tmp_path / "clean", stores))
    idle = timed_run(index_cmd(media, tmp_path / "clean", stores))  # start-up, scan, no work
    clean = contents(tmp_path / "clean", stores)

    rng, kills, partial, chains = random.Random(1234), 0, 0, 0
    db, kept = None, {}
    while kills < KILLS:
        if db is None:  # a chain: kill runs on one index until a run completes by itself
            chains += 1
            db, kept = tmp_path / f"killed-{chains}", {}
        proc = subprocess.Popen(index_cmd(media, db, stores), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:  # aim at the indexing itself: start-up takes most of a run on 2 cores
            proc.wait(timeout=rng.uniform(0.8 * idle, full))
            finished = True
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            finished = False
        now = contents(db, stores) if stores.server or (db / "store.db").exists() else {}
        assert kept.keys() <= now.keys(), "a file indexed before a kill went missing"
        for key, vector in now.items():
            np.testing.assert_allclose(vector, clean[key], atol=1e-5)
        check_consistent(db, encoder, stores)
        if finished:
            assert now.keys() == clean.keys()
            db = None
            continue
        kills += 1
        partial += 0 < len(now) < len(clean)
        kept = now
        (db / JOURNAL_FILE).unlink(missing_ok=True)  # a kill from outside: no file's fault

    # The last chain completes, with readers searching while it writes.
    assert db is not None
    proc = subprocess.Popen(index_cmd(media, db, stores), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    searches = 0
    while proc.poll() is None:
        check_consistent(db, encoder, stores)
        searches += 1
        time.sleep(0.2)  # a reader now and then, not a second core spinning
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    print(f"\nfaults: {kills} kills in {chains} chains ({partial} with a partial index), "
          f"{len(kept)} of {len(clean)} items committed at the last kill, "
          f"{searches} consistent searches during the final run")
    final = contents(db, stores)
    assert final.keys() == clean.keys()
    for key, vector in final.items():
        np.testing.assert_allclose(vector, clean[key], atol=1e-5)
    for kind in KINDS:  # the saved FAISS files themselves, not a rebuild
        saved = VectorIndex.load(db / VECTOR_FILES[kind])
        assert len(saved) == sum(1 for k in final if k[1] == kind)
    assert sum(1 for k in final if k[1] == IMAGE) == IMAGES
