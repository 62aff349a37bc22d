"""`--engine ray`: the same collection as the local engine, incremental, and a killed driver
loses nothing committed; read tasks get only what reading takes (no torch for photos, stored
hashes by 64 bits, where a chance match costs a second read and nothing else); a plan leaves
CPUs to reading; a read task that dies on a file makes that file one failure; the per-file limit
counts the file's own reading. One local Ray for the module (2 CPUs, on 127.0.0.1, no
dashboard), started as the engine starts its own."""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from retriever.ingest.pipeline import IngestOptions

from .helpers import assert_same, contents, file_states, index, with_reader_hook, write_photo
from .postgres import Stores

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 60
pytestmark = [pytest.mark.ray,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # Ray's own


@pytest.fixture(scope="module")
def ray_address():
    """The module's Ray: its address, for a driver in another process."""
    import ray

    from retriever.ingest.ray_engine import start_local

    start_local(2)  # a new one, never a cluster found running; on 127.0.0.1 alone
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Photos (one a copy of another), documents, a caption, and one broken image."""
    root = tmp_path_factory.mktemp("ray-media")
    for i in range(IMAGES):
        write_photo(root / f"p{i:03d}.jpg", (i * 37 % 256, i * 91 % 256, i * 53 % 256))
    (root / "copy.jpg").write_bytes((root / "p001.jpg").read_bytes())
    (root / "p002.txt").write_text("a caption for the third photo")
    for i in range(6):
        (root / f"n{i}.md").write_text(f"note {i}\n\n" + "words about photos " * (10 * i + 1))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def stored_files(db: Path) -> int:
    """Files in the store as a reader sees it while a writer works (0 before it has any)."""
    try:
        with closing(sqlite3.connect(f"file:{db / 'store.db'}?mode=ro", uri=True)) as con:
            return con.execute("SELECT count(*) FROM files").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def test_ray_indexes_what_local_does_then_nothing(ray_address, media, tmp_path):
    local = index(media, tmp_path / "local", "local")
    ray = index(media, tmp_path / "ray", "ray")
    assert ray.counts == local.counts
    assert (ray.report.images, ray.report.texts, ray.report.passages) == (
        local.report.images, local.report.texts, local.report.passages)
    assert ray.report.failures == local.report.failures  # broken.jpg, worded alike
    assert [f.path for f in ray.report.failures] == [str(media / "broken.jpg")]
    assert_same(tmp_path / "ray", tmp_path / "local")

    again = index(media, tmp_path / "ray", "ray")
    assert (again.report.encoded, again.report.unchanged) == (0, local.report.scanned - 1)
    assert again.report.known_failures == 1


# `retriever index` in a child process that SIGKILLs itself once its second block is stored:
# the kill comes mid-run whatever the machine's speed (a poll for "some stored" raced a fast
# run: every block stored within one 50 ms poll)
KILL_AFTER_SECOND_BLOCK = textwrap.dedent("""
    import os, runpy, signal, sys
    from index.store import Store

    real, stored = Store.write_files, []

    def write_files(self, batch):
        result = real(self, batch)
        stored.append(len(batch))
        if len(stored) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    Store.write_files = write_files
    sys.argv = ["retriever", *sys.argv[1:]]
    runpy.run_path(sys.argv.pop(1), run_name="__main__")
""")


def test_killed_driver_then_rerun_indexes_every_file_once(ray_address, media, tmp_path):
    index(media, tmp_path / "clean", "local")
    db = tmp_path / "killed"
    args = [str(ROOT / "cli.py"), "index", str(media), "--db", str(db),
            "--model", "retriever-tiny", "--pretrained", "none", "--batch-size", "4",
            "--backend", "torch", "--engine", "ray", "--ray-address", ray_address]
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SECOND_BLOCK, *args],
                            capture_output=True, text=True, cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    committed, total = stored_files(db), len(file_states(tmp_path / "clean"))
    assert 0 < committed < total, f"{committed} of {total} files stored at the kill"
    kept = contents(db, Stores(None, db))

    rerun = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert kept.keys() <= contents(db, Stores(None, db)).keys()
    assert_same(db, tmp_path / "clean")  # every file once: paths are the store's keys


def test_a_worker_with_other_weights_is_refused(ray_address, media, tiny_encoder):
    """Each actor builds the model from its names; weights that differ there are not used."""
    from retriever.errors import ModelMismatch
    from retriever.ingest.ray_engine import RayEngine
    from retriever.ingest.reader import reader_for
    from retriever.media.scan import scan

    engine = RayEngine(tiny_encoder, "torch", None, 60.0)
    engine._model = replace(engine._model, fingerprint="0" * 64)  # as another machine's differ
    read = reader_for(tiny_encoder.input_spec(), {}, IngestOptions((media,)))
    with pytest.raises(ModelMismatch, match="is not the driver's model"), engine:
        list(engine.chunks(scan([media], (), False).files[:4], read, 4))


def test_without_ray_it_is_one_line_naming_the_extra(cli, media, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as uninstalled
    result = cli("index", media, "--db", tmp_path / "db", "--engine", "ray",
                 "--model", "retriever-tiny", "--pretrained", "none")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --engine ray needs Ray, which is not installed: "
                                     "pip install 'retriever[ray]'")
    assert not (tmp_path / "db").exists()  # refused before anything was made


def test_a_ray_address_needs_the_ray_engine(cli, media, tmp_path):
    result = cli("index", media, "--db", tmp_path / "db", "--ray-address", "head:6379")
    assert result.exit_code == 2 and "--ray-address head:6379: it needs --engine ray" in (
        result.stderr)


def test_a_read_task_reads_photos_without_torch_and_texts_alike(media, tiny_encoder, tmp_path):
    """The reader a read task unpickles: a photo read without importing torch (open_clip's
    tokenizer is only unpickled for a text), and both read as the driver reads them."""
    from retriever.ingest.ray_engine import _for_tasks
    from retriever.ingest.reader import reader_for
    from retriever.media.scan import scan

    read = reader_for(tiny_encoder.input_spec(), {}, IngestOptions((media,)))
    found = {f.path.name: f for f in scan([media], (), False).files}
    photo, note = found["p003.jpg"], found["n5.md"]
    (tmp_path / "task.pkl").write_bytes(pickle.dumps((_for_tasks(read), photo, note)))
    script = ("import pickle, sys\n"
              "read, photo, note = pickle.loads(open(sys.argv[1], 'rb').read())\n"
              "out = [read(photo), 'torch' in sys.modules, read(note), 'torch' in sys.modules]\n"
              "open(sys.argv[2], 'wb').write(pickle.dumps(out))\n")
    subprocess.run([sys.executable, "-c", script, tmp_path / "task.pkl", tmp_path / "out.pkl"],
                   cwd=ROOT, check=True)
    got_photo, torch_for_photo, got_note, torch_for_note = pickle.loads(
        (tmp_path / "out.pkl").read_bytes())
    assert (torch_for_photo, torch_for_note) == (False, True)
    np.testing.assert_array_equal(got_photo.decoded.pixels.data, read(photo).decoded.pixels.data)
    assert got_note.decoded == read(note).decoded and len(got_note.decoded.passages) > 1


def test_known_hashes_hold_each_hash_by_its_first_64_bits():
    from retriever.ingest.ray_engine import _KnownHashes

    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    known = _KnownHashes(hashes[:1000])
    assert all(h in known for h in hashes[:1000])
    assert not any(h in known for h in hashes[1000:])
    assert hashes[7][:16] + "0" * 48 in known  # same first 64 bits: taken for a stored hash
    assert hashes[7] not in _KnownHashes([])


def test_a_hash_taken_for_a_stored_one_costs_a_read_not_a_result(
        ray_address, media, tmp_path, monkeypatch):
    """A read task that takes a new file's bytes for stored ones (`_KnownHashes` compares 64
    bits) leaves it undecoded: the driver reads it again, and the collection is the same."""
    from retriever.ingest import ray_engine

    digest = hashlib.sha256((media / "p005.jpg").read_bytes()).hexdigest()
    shipped = ray_engine._for_tasks
    monkeypatch.setattr(ray_engine, "_for_tasks", lambda read: replace(
        shipped(read), known=ray_engine._KnownHashes([digest[:16] + "0" * 48])))
    again: list[str] = []
    read_now = ray_engine.RayEngine.read_now
    monkeypatch.setattr(ray_engine.RayEngine, "read_now", lambda self, read, m: (
        again.append(m.path.name), read_now(self, read, m))[1])
    index(media, tmp_path / "local", "local")
    index(media, tmp_path / "ray", "ray")
    assert again == ["p005.jpg"]
    assert_same(tmp_path / "ray", tmp_path / "local")


def test_a_plan_leaves_cpus_to_reading_and_bounds_what_is_read_ahead():
    from retriever.ingest.ray_engine import READ_AHEAD_BYTES, _plan

    tiny, large = 64 * 3 * 32 * 32 * 4, 64 * 3 * 224 * 224 * 4  # a block's float32 pixels
    two = _plan({"CPU": 2.0}, large)
    assert (two.actors, two.actor_cpus, two.actor_gpus) == (1, 1, 0)
    assert two.window * large <= READ_AHEAD_BYTES and two.window >= 2 * 1 + 2 * 1
    assert _plan({"CPU": 2.0}, tiny).window == READ_AHEAD_BYTES // tiny  # all of it, small
    sixteen = _plan({"CPU": 16.0}, large)
    assert (sixteen.actors, sixteen.actor_cpus) == (4, 2)  # 8 CPUs left to read tasks
    gpus = _plan({"CPU": 64.0, "GPU": 8.0}, large)
    assert (gpus.actors, gpus.actor_cpus, gpus.actor_gpus) == (8, 1, 1)
    assert gpus.window == 2 * 56 + 2 * 8  # a block read and one read ahead per reading CPU


def with_own_ray(body: str) -> list[str]:
    """The words `body` prints in a fresh process, between a Ray started as a run without
    --ray-address starts one (`ray_engine._start(None)`) and its shutdown."""
    script = ("import os, ray\n"
              "from retriever.ingest.ray_engine import _start\n"
              f"_start(None)\n{body}ray.shutdown()\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_ray_started_for_the_run_runs_its_workers_at_the_users_priority():
    """Ray's default puts workers at nice 15, behind every other process on the machine."""
    worker, driver = with_own_ray("print(ray.get(ray.remote(lambda: os.nice(0)).remote()), "
                                  "os.nice(0))\n")
    assert worker == driver


def test_the_modules_ray_and_a_ray_started_for_a_run_are_on_loopback_alone(ray_address):
    """Ray's default is this machine's own interface address, every interface listening."""
    import ray

    assert ray_address.startswith("127.0.0.1:")
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    gcs, *nodes = with_own_ray("print(ray.get_runtime_context().gcs_address,\n"
                               "      *sorted({n['NodeManagerAddress'] for n in ray.nodes()}))\n")
    assert gcs.startswith("127.0.0.1:") and nodes == ["127.0.0.1"]


def test_a_file_that_kills_its_read_task_is_one_failure_and_the_rest_is_stored(
        ray_address, media, tmp_path, monkeypatch):
    """A read task that dies (here: its process exits on one file, as an OOM kill or a
    decoder's crash ends it) is retried by nobody: its block is read again one file a task,
    the file whose task dies again is that file's failure, once, and the next run skips it."""
    def die_on_p007(m):
        if m.path.name == "p007.jpg":
            os._exit(1)

    with_reader_hook(monkeypatch, die_on_p007)
    local = index(media, tmp_path / "local", "local")
    ray = index(media, tmp_path / "ray", "ray")
    died = [f for f in ray.report.failures if f.path.endswith("p007.jpg")]
    assert len(died) == 1 and "reader process died" in died[0].reason
    assert sorted(f.path for f in ray.report.failures) == sorted(
        [str(media / "p007.jpg"), str(media / "broken.jpg")])
    assert set(file_states(tmp_path / "local")) - set(file_states(tmp_path / "ray")) == {
        str(media / "p007.jpg")}  # every other file stored
    assert ray.counts.images == local.counts.images - 1

    again = index(media, tmp_path / "ray", "ray")
    assert (again.report.encoded, again.report.known_failures) == (0, 2)


def test_the_read_limit_counts_reading_not_waiting(ray_address, media, tmp_path, monkeypatch):
    """Each note's read waits 2 s without using a CPU (as on a machine loaded with other
    work, or a task queued), over a limit of 1 CPU-second: nothing fails, nothing differs,
    and the first text's tokenizer (torch's import, seconds of CPU) is not counted either."""
    import time

    def wait_on_notes(m):
        if m.path.suffix == ".md":
            time.sleep(2)

    with_reader_hook(monkeypatch, wait_on_notes)
    local = index(media, tmp_path / "local", "local")
    ray = index(media, tmp_path / "ray", "ray", read_timeout=1.0)
    assert [f.path for f in ray.report.failures] == [str(media / "broken.jpg")]
    assert (ray.report.texts, ray.report.passages) == (local.report.texts, local.report.passages)
    assert_same(tmp_path / "ray", tmp_path / "local")


def test_a_read_over_the_limit_is_tried_again_next_run(ray_address, media, tmp_path,
                                                      monkeypatch):
    """A read given up on (it used its CPU limit) is a failure of this run, not of the file's
    bytes: the next run reads it again instead of skipping it as a known bad file."""
    import time

    def spin_on_n3(m):
        if m.path.name == "n3.md":
            until = time.thread_time() + 3
            while time.thread_time() < until:
                pass

    with_reader_hook(monkeypatch, spin_on_n3)
    for run in range(2):
        done = index(media, tmp_path / "ray", "ray", read_timeout=1.0)
        over = [f for f in done.report.failures if f.path.endswith("n3.md")]
        assert len(over) == 1 and "given up" in over[0].reason, run
        assert done.report.known_failures == run  # broken.jpg, skipped from the second run
