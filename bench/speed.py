"""retriever against rclip 3.3.0 on this machine's CPU: indexing, encoding, cold and warm queries.

    python -m bench.speed [--n 150] [--n-12mp 40] [--repeats 2]
                          [--backends rclip torch onnx onnx-int8]

Both tools run the same network with the same (random) weights: open_clip ViT-B-32-256, rclip's
architecture, written once by bench/rclip_setup.py as our checkpoint and as rclip's ONNX files.
Every measurement runs the tool in its own process, from its own venv, and writes the "speed"
section of bench/RESULTS.md; nothing in that section is typed in by hand. Photos: 12 MP phone
photos, 1024x768 camera JPEGs as shared on the web, 320x240 thumbnails (bench/photos.py).
Targets (issue 25), checked in the tables: indexing with the default backend (onnx-int8) >= 2.0x
rclip's images/s (1.5x on a CPU without VNNI), fp32 onnx >= 1.0x; a cold text query in <= 0.5x
rclip's time.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import shlex
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from bench import rclip_setup
from bench.fresh import precompile
from bench.photos import SIZES, WORK, mean_kb, photo_folder
from bench.results import machine_line, write_section
from retriever.encoding.cpu import cpu_info
from retriever.encoding.cpu import plan as cpu_plan

OURS = ("torch", "onnx", "onnx-int8")  # our --backend values measured
TOOLS = ("rclip", *OURS)
PARTS = ("index", "encode", "cold", "warm")
RETRIEVER = Path(sys.executable).with_name("retriever")
ARCH, DIM, PIXELS = rclip_setup.ARCH, 512, rclip_setup.IMAGE_SIZE
SETUP_PHOTOS = 2  # photos indexed (untimed) into each of our fresh indexes first; see index_ours
QUERY = "a photo of a dog"
TARGET_MS = 20.0  # warm query latency we aim for
DEFAULT = "onnx-int8"  # the backend `retriever index` uses unless told
# indexing images/s over rclip's that issue 25 asks for, by backend; int8 without VNNI: 1.5x
INDEX_TARGETS = {DEFAULT: 2.0, "onnx": 1.0}
INT8_TARGET_WITHOUT_VNNI = 1.5
COLD_TARGET = 0.5  # a cold query's seconds over rclip's, at most
N_12MP = 40  # 12 MP photos per folder unless --n-12mp: ~2.8 MB each, ~2 s each to generate
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    sizes: tuple[str, ...]  # photo sizes indexed, from bench.photos.SIZES
    n: dict[str, int]  # photos per size
    repeats: int  # timed indexing runs per tool and size (the median is reported)
    tools: tuple[str, ...]  # "rclip" and our backends
    parts: tuple[str, ...]  # which of PARTS to run
    encode_batch: int = 64  # images per encode-only batch
    encode_batches: int = 5  # timed batches after one warm-up batch
    cold_runs: int = 5  # timed cold queries after one untimed
    warm_items: int = 100_000  # image items in the warm-query index
    warm_queries: int = 200  # timed queries per kind after WARM_UP
    dry_run: bool = False  # print the section, leave RESULTS.md alone (smoke runs)
    argv: tuple[str, ...] = ()  # as given, for the recorded command

    @property
    def ours(self) -> tuple[str, ...]:
        return tuple(t for t in self.tools if t != "rclip")


@dataclass
class Proc:
    """One finished child process: wall seconds from spawn to exit, its own peak RSS."""

    seconds: float
    peak_mb: float
    stdout: str
    stderr: str


@dataclass
class Report:
    index: list[dict] = field(default_factory=list)
    encode: list[dict] = field(default_factory=list)
    cold: list[dict] = field(default_factory=list)
    warm: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- processes --------------------------------------------------------------------------------


# Starts the measured child, times it and reads its rusage. A child's ru_maxrss starts at the
# high-water mark of the process that forked it (Linux keeps it across exec), so the fork comes
# from this small interpreter, not from the harness with its numpy and faiss.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as out:
    json.dump({"seconds": seconds, "maxrss_kb": usage.ru_maxrss,
               "rc": os.waitstatus_to_exitcode(status)}, out)
"""


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> Proc:
    """Run `cmd` to its end: wall seconds from spawn to exit and that child's peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / name for name in ("stdout", "stderr", "usage")}
        with open(files["stdout"], "wb") as out, open(files["stderr"], "wb") as err:
            subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, str(files["usage"]),
                            *cmd], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                           stderr=err)
        stdout, stderr = (files[n].read_text(errors="replace") for n in ("stdout", "stderr"))
        if not files["usage"].is_file():
            raise RuntimeError(f"{shlex.join(cmd)} did not start:\n{stderr[-2000:]}")
        usage = json.loads(files["usage"].read_text())
        proc = Proc(usage["seconds"], usage["maxrss_kb"] / 1024, stdout, stderr)
    if usage["rc"] != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited with {usage['rc']}:\n"
                           f"{proc.stderr[-2000:]}")
    return proc


def ours_env() -> dict[str, str]:
    """Our CLI on the CPU, with no index or model chosen by the caller's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVER_")}
    return {**env, "CUDA_VISIBLE_DEVICES": "", "NO_COLOR": "1", "COLUMNS": "200"}


_HAS_BACKEND: dict[str, bool] = {}


def backend_args(command: str, backend: str) -> list[str] | None:
    """["--backend", B] where `retriever COMMAND` takes it; [] for torch on a CLI without the
    flag (torch is all it had); None: this backend cannot be asked for here."""
    if command not in _HAS_BACKEND:
        shown = subprocess.run([str(RETRIEVER), command, "--help"], capture_output=True,
                               text=True, env=ours_env())
        _HAS_BACKEND[command] = "--backend" in shown.stdout
    if _HAS_BACKEND[command]:
        return ["--backend", backend]
    return [] if backend == "torch" else None


def skipped(report: Report, what: str, backend: str) -> None:
    line = f"{what}, backend {backend}: skipped, this build's CLI has no --backend"
    if line not in report.notes:
        report.notes.append(line)
    print(line, file=sys.stderr)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- a. indexing ------------------------------------------------------------------------------


def index_rclip(folder: Path) -> Proc:
    """`rclip --top 1 x` in the folder: rclip indexes the current directory, then searches."""
    rclip_setup.reset_rclip_db()
    proc = run([str(rclip_setup.rclip_bin()), "--top", "1", "x"], cwd=folder,
               env=rclip_setup.rclip_env())
    expect(rclip_count(folder), photo_count(folder), f"rclip's index of {folder}")
    return proc


def rclip_count(folder: Path) -> int:
    db = rclip_setup.DATADIR / "db.sqlite3"
    if not db.is_file():
        return 0
    with sqlite3.connect(db) as con:
        (count,) = con.execute("SELECT COUNT(*) FROM images WHERE deleted IS NULL AND "
                               "filepath LIKE ?", (f"{folder.resolve()}/%",)).fetchone()
    return count


def ours_index_cmd(folder: Path, db: Path, backend_flags: list[str]) -> list[str]:
    return [str(RETRIEVER), "index", str(folder.resolve()), "--db", str(db), "--model", ARCH,
            "--pretrained", str(rclip_setup.CHECKPOINT.resolve()), "--json", *backend_flags]


def setup_index(backend: str, flags: list[str]) -> tuple[Path, float]:
    """A template index holding SETUP_PHOTOS other photos, indexed with `backend`: model loaded
    and, for onnx, exported (and quantized) into the index's cache. Returns it and the wall
    seconds of that run."""
    template = WORK / f"idx-{backend}-setup"
    shutil.rmtree(template, ignore_errors=True)
    warm = photo_folder("small", SETUP_PHOTOS, seed=1)  # other bytes than any timed photo
    proc = run(ours_index_cmd(warm, template, flags), env=ours_env())
    return template, proc.seconds


def index_ours(folder: Path, template: Path, backend: str, flags: list[str]) -> Proc:
    """`retriever index FOLDER` into a copy of the template: a fresh index whose ONNX cache is
    ready, so the run encodes exactly the folder's photos."""
    db = WORK / f"idx-{backend}-{folder.name}"
    clone(template, db)
    proc = run(ours_index_cmd(folder, db, flags), env=ours_env())
    encoded = json.loads(proc.stdout.strip().splitlines()[-1])["run"]["images"]
    expect(encoded, photo_count(folder), f"photos encoded by `retriever index {folder}`")
    return proc


def clone(template: Path, db: Path) -> None:
    """Copy the index; the read-only ONNX exports are hard-linked (hundreds of MB)."""
    shutil.rmtree(db, ignore_errors=True)

    def link_or_copy(src: str, dst: str) -> None:
        if Path(src).relative_to(template).parts[0] == "onnx":
            try:
                os.link(src, dst)
                return
            except OSError:
                pass
        shutil.copy2(src, dst)

    shutil.copytree(template, db, copy_function=link_or_copy)


def photo_count(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.jpg"))


def expect(got: int, wanted: int, what: str) -> None:
    if got != wanted:
        raise RuntimeError(f"{what}: {got}, expected {wanted}")


def measure_indexing(settings: Settings, report: Report) -> None:
    templates: dict[str, tuple[Path, float, list[str]]] = {}
    for backend in settings.ours:
        flags = backend_args("index", backend)
        if flags is None:
            skipped(report, "indexing", backend)
            continue
        made = attempt(report, f"indexing setup, {backend}", setup_index, backend, flags)
        if made is not None:
            templates[backend] = (*made, flags)
            print(f"index setup {backend}: {made[1]:.1f} s", file=sys.stderr)
    for size in settings.sizes:
        folder = photo_folder(size, settings.n[size])
        runs: dict[str, list[Proc]] = {t: [] for t in settings.tools
                                       if t == "rclip" or t in templates}
        for _ in range(settings.repeats):  # tools interleaved: drift in load hits all alike
            for tool in list(runs):
                proc = (attempt(report, f"indexing {size}, rclip", index_rclip, folder)
                        if tool == "rclip" else
                        attempt(report, f"indexing {size}, {tool}", index_ours, folder,
                                templates[tool][0], tool, templates[tool][2]))
                if proc is None:
                    del runs[tool]
                    continue
                runs[tool].append(proc)
                print(f"index {size} {tool}: {proc.seconds:.1f} s", file=sys.stderr)
        for tool, procs in runs.items():
            seconds = statistics.median(p.seconds for p in procs)
            report.index.append({
                "tool": tool, "size": size, "n": settings.n[size], "kb": mean_kb(folder),
                "seconds": seconds, "per_s": settings.n[size] / seconds,
                "peak_mb": max(p.peak_mb for p in procs),
                "setup_s": templates[tool][1] if tool in templates else None})


def attempt(report: Report, what: str, measure: Callable[..., T], *args: Any) -> T | None:
    """measure(*args), or None with a note in the results when the tool under test failed
    (one broken backend must not cost the rest of a long run)."""
    try:
        return measure(*args)
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        report.notes.append(f"{what} failed: {lines[-1] if lines else type(error).__name__}")
        print(f"{what} failed: {error}", file=sys.stderr)
        return None


# --- b. encode only ---------------------------------------------------------------------------

# Each script defines `forward(x)` and `setup` (seconds to get there), then TIMING runs.
TIMING = """
import json, time
import numpy as np
B, K = {batch}, {batches}
x = np.random.default_rng(0).standard_normal((B, 3, {size}, {size}), dtype=np.float32)
forward(x)  # warm-up
times = []
for _ in range(K):
    t = time.perf_counter(); forward(x); times.append(time.perf_counter() - t)
print(json.dumps({{"setup_s": setup, "times": times}}))
"""

RCLIP_ENCODE = """
import time
t0 = time.perf_counter()
from rclip import model_download
session = model_download.load_visual_query_session()  # = _load_onnx_session(visual.onnx)
forward = lambda x: session.run(None, {{"input": x}})[0]
setup = time.perf_counter() - t0
"""

OURS_ENCODE = """
import time
from pathlib import Path
t0 = time.perf_counter()
from retriever.encoding.backends import open_encoder
from retriever.encoding.specs import ModelSpec
spec = ModelSpec({arch!r}, {checkpoint!r})
forward = open_encoder(spec, {backend!r}, Path({cache!r}), {batch}).encode_pixels
setup = time.perf_counter() - t0
"""


def encode_rate(script: str, python: Path, env: dict[str, str], settings: Settings) -> dict:
    code = script + TIMING.format(batch=settings.encode_batch, batches=settings.encode_batches,
                                  size=PIXELS)
    found = json.loads(run([str(python), "-c", code], env=env).stdout.strip().splitlines()[-1])
    seconds = sum(found["times"])
    return {"per_s": settings.encode_batch * len(found["times"]) / seconds,
            "setup_s": found["setup_s"]}


def measure_encoding(settings: Settings, report: Report) -> None:
    for tool in settings.tools:
        row = attempt(report, f"encode-only, {tool}", encode_tool, tool, settings)
        if row is not None:
            report.encode.append({"tool": tool, "batch": settings.encode_batch, **row})
            print(f"encode {tool}: {row['per_s']:.1f} images/s", file=sys.stderr)


def encode_tool(tool: str, settings: Settings) -> dict:
    if tool == "rclip":
        return encode_rate(RCLIP_ENCODE.format(), rclip_setup.rclip_python(),
                           rclip_setup.rclip_env(), settings)
    script = OURS_ENCODE.format(
        arch=ARCH, checkpoint=str(rclip_setup.CHECKPOINT.resolve()), backend=tool,
        cache=str(WORK / "encode-cache"), batch=settings.encode_batch)
    return encode_rate(script, Path(sys.executable), ours_env(), settings)


# --- c. cold query ----------------------------------------------------------------------------


def cold(cmd: list[str], cwd: Path | None, env: dict[str, str], runs: int) -> dict:
    """One untimed run (page cache warm), then the median of `runs`."""
    run(cmd, cwd, env)
    procs = [run(cmd, cwd, env) for _ in range(runs)]
    if not procs[-1].stdout.strip():
        raise RuntimeError(f"{shlex.join(cmd)} printed no results")
    return {"seconds": statistics.median(p.seconds for p in procs),
            "peak_mb": statistics.median(p.peak_mb for p in procs)}


def ours_search_cmd(db: Path, flags: list[str]) -> list[str]:
    return [str(RETRIEVER), "search", QUERY, "--db", str(db), "--paths-only", "-k", "10", *flags]


def ensure_indexed(settings: Settings, size: str, backend: str, flags: list[str]) -> Path:
    """idx-<backend>-<folder> as the indexing part leaves it; made (untimed) if missing."""
    folder = photo_folder(size, settings.n[size])
    db = WORK / f"idx-{backend}-{folder.name}"
    if not (db / "store.db").is_file():
        template, _ = setup_index(backend, flags)
        index_ours(folder, template, backend, flags)
    return db


def precompile_ours() -> None:
    """Our modules compiled to __pycache__, as an installed package's are (pip compiled
    rclip's): with PYTHONDONTWRITEBYTECODE set, each cold query would compile them again."""
    precompile(Path(__file__).resolve().parent.parent)


def measure_cold(settings: Settings, report: Report) -> None:
    size = settings.sizes[-1]
    if settings.ours:
        precompile_ours()
    for tool in settings.tools:
        flags = [] if tool == "rclip" else backend_args("search", tool)
        if flags is None or (tool != "rclip" and backend_args("index", tool) is None):
            skipped(report, "cold query", tool)
            continue
        row = attempt(report, f"cold query, {tool}", cold_tool, tool, flags, settings, size)
        if row is not None:
            report.cold.append({"tool": tool, "via": "CLI", "n": settings.n[size], **row})
            print(f"cold {tool}: {row['seconds']:.2f} s", file=sys.stderr)
    attempt(report, "cold query with a server", measure_cold_served, settings, report, size)


def cold_tool(tool: str, flags: list[str], settings: Settings, size: str) -> dict:
    folder = photo_folder(size, settings.n[size])
    if tool == "rclip":
        if rclip_count(folder) != photo_count(folder):
            index_rclip(folder)
        return cold([str(rclip_setup.rclip_bin()), "--no-indexing", "--filepath-only", "--top",
                     "10", QUERY], folder, rclip_setup.rclip_env(), settings.cold_runs)
    db = ensure_indexed(settings, size, tool, backend_args("index", tool) or [])
    return cold(ours_search_cmd(db, flags), None, ours_env(), settings.cold_runs)


def measure_cold_served(settings: Settings, report: Report, size: str) -> None:
    """The same CLI search while `retriever serve` runs on that index (which the CLI may use)."""
    backend = "onnx" if "onnx" in settings.ours and backend_args("serve", "onnx") else (
        settings.ours[0] if settings.ours else None)
    if backend is None:
        return
    flags, serve_flags = backend_args("search", backend), backend_args("serve", backend)
    index_flags = backend_args("index", backend)
    if flags is None or serve_flags is None or index_flags is None:
        return
    db = ensure_indexed(settings, size, backend, index_flags)
    with serving(db, serve_flags):
        row = cold(ours_search_cmd(db, flags), None, ours_env(), settings.cold_runs)
    report.cold.append({"tool": backend, "via": "CLI, server running", "n": settings.n[size],
                        **row})
    print(f"cold {backend} with a server: {row['seconds']:.2f} s", file=sys.stderr)


@contextmanager
def serving(db: Path, flags: list[str], timeout: float = 600.0) -> Iterator[int]:
    """`retriever serve --db DB` on a free port, from its first answer to /api/info until the
    block ends (then SIGTERM); yields the port."""
    port = free_port()
    cmd = [str(RETRIEVER), "serve", "--db", str(db), "--port", str(port), *flags]
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(cmd, env=ours_env(), stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=log)
        try:
            deadline = time.monotonic() + timeout
            while not _answers(port):
                if child.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{shlex.join(cmd)} exited with {child.returncode}: "
                                       f"{log.read()[-2000:]!r}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{shlex.join(cmd)}: no answer in {timeout:.0f} s")
                time.sleep(0.5)
            yield port
        finally:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        fetch(connection, "/api/info")
        return True
    except OSError:
        return False
    finally:
        connection.close()


def fetch(connection: http.client.HTTPConnection, path: str) -> dict:
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
    return json.loads(body)


# --- d. warm queries --------------------------------------------------------------------------

WARM_UP = 10
ADJECTIVES = ("red", "small", "old", "happy", "wet", "bright", "dark", "tiny", "striped", "wooden",
              "broken", "shiny", "fluffy", "empty", "crowded")
NOUNS = ("dog", "cat", "car", "beach", "mountain", "house", "bicycle", "tree", "boat", "bridge",
         "kitchen", "street", "child", "bird", "flower", "train")


def warm_texts(count: int) -> list[str]:
    """`count` different queries: "a photo of a <adjective> <noun>", and more words after."""
    texts = [f"a photo of a {a} {n}" for a in ADJECTIVES for n in NOUNS]
    texts += [f"{t} at night" for t in texts]
    if count > len(texts):
        raise ValueError(f"at most {len(texts)} warm queries")
    return texts[:count]


def warm_index(items: int) -> Path:
    """An index of `items` image items with clustered random vectors and made-up paths, built
    through Collection (no image is encoded); cached under bench/.work/idx-warm-<items>."""
    directory = WORK / f"idx-warm-{items}"
    checkpoint = rclip_setup.CHECKPOINT.resolve()
    stamp = {"items": items, "checkpoint": str(checkpoint),
             "checkpoint_mtime": checkpoint.stat().st_mtime}
    marker = directory / ".bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    start = time.perf_counter()
    _fill(directory, items, str(checkpoint))
    marker.write_text(json.dumps(stamp))
    print(f"built {directory} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return directory


def _fill(directory: Path, items: int, checkpoint: str) -> None:
    import hashlib

    from bench.vector_search import clustered
    from index.kinds import IMAGE
    from index.records import FileRecord, ItemRecord, ModelRecord
    from retriever.library.collection import Collection

    vectors = clustered(items, DIM, seed=3)  # (items, DIM) unit float32
    collection = Collection.open(directory)
    t0 = 1.6e9
    with collection.writing():
        collection.bind_model(ModelRecord(ARCH, checkpoint, DIM))
        for start in range(0, items, 2000):
            collection.write_files([
                (FileRecord(f"/bench/warm/{i:07d}.jpg", IMAGE,
                            hashlib.sha256(str(i).encode()).hexdigest(), 200_000, t0 + i,
                            1024, 768, None, t0 + i),
                 [ItemRecord(IMAGE, 0, None, vectors[i])])
                for i in range(start, min(start + 2000, items))])
        collection.save()  # the ANN index the size calls for (IVF at 100k)
    collection.close()


def latencies(connection: http.client.HTTPConnection, paths: list[str]) -> list[float]:
    out = []
    for path in paths:
        start = time.perf_counter()
        found = fetch(connection, path)
        out.append(1000 * (time.perf_counter() - start))
        if not found["results"]:
            raise RuntimeError(f"GET {path}: no results")
    return out


def measure_warm(settings: Settings, report: Report) -> None:
    directory = warm_index(settings.warm_items)
    for backend in settings.ours:
        flags = backend_args("serve", backend)
        if flags is None:
            skipped(report, "warm query", backend)
            continue
        recorded_as(directory, backend)
        row = attempt(report, f"warm query, {backend}", warm_tool, directory, flags, settings)
        if row is not None:
            report.warm.append({"tool": backend, "items": settings.warm_items, **row})
            print(f"warm {backend}: p50 {row['p50']:.1f} ms", file=sys.stderr)


def recorded_as(directory: Path, backend: str) -> None:
    """Record the warm index's (random) vectors as made in `backend`'s precision, which the
    server then keeps: an index of the other precision refuses that backend."""
    from dataclasses import replace

    from index.store import Store
    from retriever.encoding.backends import backend_precision

    store = Store(f"sqlite:///{directory / 'store.db'}")
    try:
        record = store.model()
        assert record is not None, directory
        store.set_model(replace(record, precision=backend_precision(backend, False)))
    finally:
        store.close()


def warm_tool(directory: Path, flags: list[str], settings: Settings) -> dict:
    texts = warm_texts(WARM_UP + settings.warm_queries)
    ids = [1 + (i * 7919) % settings.warm_items for i in range(settings.warm_queries)]
    with serving(directory, flags) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        latencies(connection, [search_path(text=t) for t in texts[:WARM_UP]])
        text_ms = latencies(connection, [search_path(text=t) for t in texts[WARM_UP:]])
        item_ms = latencies(connection, [search_path(item=i) for i in ids])
        connection.close()
    return {**summary(text_ms), "item_p50": percentile(item_ms, 50)}


def search_path(**term: object) -> str:
    return "/api/search?" + urlencode({**term, "target": "images", "k": 10})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(ms: list[float]) -> dict:
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "mean": statistics.mean(ms),
            "count": len(ms)}


# --- e. the section ---------------------------------------------------------------------------


def ratio(ours: float, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "-"


def label(tool: str) -> tuple[str, str]:
    if tool == "rclip":
        return "rclip 3.3.0", "ONNX Runtime fp32"
    return "retriever", f"{tool} (default)" if tool == DEFAULT else tool


def index_table(rows: list[dict], settings: Settings) -> list[str]:
    lines = ["### Indexing, end to end", "",
             "Wall time of the whole command, process start to exit, on a folder of N "
             "generated photo-like JPEGs (bench/photos.py), median of "
             f"{settings.repeats} run(s); images/s = N / that time; x rclip = our images/s / "
             "rclip's (above 1: faster). rclip: `rclip --top 1 x` in the folder, its "
             "db.sqlite3 deleted first (it indexes the current folder, then searches). "
             "retriever: `retriever index FOLDER --db DIR --model ViT-B-32-256 --pretrained "
             "CKPT --backend B` into a fresh copy of an index that holds "
             f"{SETUP_PHOTOS} other photos, so the ONNX export (made once per model, in "
             "the user's cache, on a first run) is in place as rclip's downloaded model is; "
             "'setup run' is the "
             f"wall time of that first run over the {SETUP_PHOTOS} photos (model load, export, "
             "quantization). Each tool's own batch size and thread settings (rclip: batches of "
             f"8, ONNX Runtime on all cores; ours: this CPU's plan, {cpu_plan()}). Peak MB: "
             "the largest RSS of "
             "the tool's process over the runs.", "",
             "| tool | backend | photos | N | seconds | images/s | x rclip | target | peak MB "
             "| setup run s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        base = next((r["per_s"] for r in rows if r["tool"] == "rclip" and
                     r["size"] == row["size"]), None)
        width, height = SIZES[row["size"]]
        tool, backend = label(row["tool"])
        setup = f"{row['setup_s']:.1f}" if row["setup_s"] is not None else "-"
        lines.append(f"| {tool} | {backend} | {width}x{height}, {row['kb']:.0f} KB | "
                     f"{row['n']} | {row['seconds']:.1f} | {row['per_s']:.1f} | "
                     f"{ratio(row['per_s'], base) if row['tool'] != 'rclip' else '1.00x'} | "
                     f"{index_target(row['tool'], row['per_s'], base)} | "
                     f"{row['peak_mb']:.0f} | {setup} |")
    return lines


def index_target(tool: str, per_s: float, base: float | None) -> str:
    """'>= 2.0x: yes' where issue 25 sets a target for `tool`'s indexing rate; '-' elsewhere."""
    target = INDEX_TARGETS.get(tool)
    if target is None:
        return "-"
    if tool == DEFAULT and cpu_info().int8_kernel != "vnni":
        target = INT8_TARGET_WITHOUT_VNNI
    met = "?" if not base else ("yes" if per_s / base >= target else "no")
    return f">= {target:.1f}x: {met}"


def encode_table(rows: list[dict]) -> list[str]:
    base = next((r["per_s"] for r in rows if r["tool"] == "rclip"), None)
    batches = f"batches of {rows[0]['batch']}" if rows else ""
    lines = ["### Image encoder alone", "",
             f"Images/s of the image tower on ready (3, {PIXELS}, {PIXELS}) float32 pixels, "
             f"{batches}, after one warm-up batch, in a fresh process per row: no file reading, "
             "decoding or resizing. rclip: the ONNX Runtime session rclip builds "
             "(model_download.load_visual_query_session: CPU provider, intra-op threads = "
             "cores) on its visual.onnx; retriever: `retriever.encoding.backends.open_encoder(...)"
             ".encode_pixels`. 'setup s': time in the process to a ready encoder (imports, model "
             "load; for onnx rows also the export, and the int8 quantization if not cached).", "",
             "| tool | backend | images/s | x rclip | setup s |", "|---|---|---|---|---|"]
    for row in rows:
        tool, backend = label(row["tool"])
        lines.append(f"| {tool} | {backend} | {row['per_s']:.1f} | "
                     f"{ratio(row['per_s'], base)} | {row['setup_s']:.1f} |")
    return lines


def cold_table(rows: list[dict], settings: Settings) -> list[str]:
    base = next((r for r in rows if r["tool"] == "rclip"), None)
    n = rows[0]["n"] if rows else 0
    lines = ["### Cold text query from the command line", "",
             f"`{QUERY}`, top 10, paths only, over the {n} indexed photos of the last size; "
             "wall time from process start to exit and the child's peak RSS (os.wait4), "
             f"median of {settings.cold_runs} runs after one untimed run (page cache warm); "
             "our modules compiled first (`python -m compileall`), as pip compiled rclip's. "
             "rclip: `rclip --no-indexing --filepath-only --top 10 QUERY` in the folder; "
             "retriever: `retriever search QUERY --db DIR --paths-only -k 10 --backend B`, "
             "and the same while `retriever serve --db DIR` runs. speed-up = rclip's seconds "
             "/ ours (above 1: faster); memory = our peak MB / rclip's; target: our seconds "
             f"<= {COLD_TARGET}x rclip's.", "",
             "| tool | backend | how | median s | peak MB | speed-up vs rclip | memory vs rclip "
             "| target |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        tool, backend = label(row["tool"])
        speed = ratio(base["seconds"], row["seconds"]) if base else "-"
        memory = ratio(row["peak_mb"], base["peak_mb"]) if base else "-"
        met = "-" if row["tool"] == "rclip" or not base else (
            "yes" if row["seconds"] <= COLD_TARGET * base["seconds"] else "no")
        lines.append(f"| {tool} | {backend} | {row['via']} | {row['seconds']:.2f} | "
                     f"{row['peak_mb']:.0f} | {speed} | {memory} | {met} |")
    return lines


def warm_table(rows: list[dict], cold_rows: list[dict], settings: Settings) -> list[str]:
    items = rows[0]["items"] if rows else settings.warm_items
    lines = ["### Warm query latency", "",
             f"`retriever serve` over an index of {items:,} image items (clustered random "
             "unit vectors, made-up paths, built without encoding: bench/speed.py warm_index; "
             "the index type its size calls for). One keep-alive HTTP connection, "
             f"GET /api/search?text=...&target=images&k=10, {settings.warm_queries} different "
             f"texts after {WARM_UP} warm-up queries: per-request milliseconds, text encoding "
             "included. 'item p50': the same with item=ID (a stored vector, no text encoding): "
             f"search and response alone. Target: p50 within {TARGET_MS:.0f} ms. rclip has no "
             "server: its row is its cold CLI query from the table above, over its small "
             "index.", "",
             "| tool | backend | items | p50 ms | p95 ms | mean ms | item p50 ms "
             f"| p50 <= {TARGET_MS:.0f} ms |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        tool, backend = label(row["tool"])
        met = "yes" if row["p50"] <= TARGET_MS else "no"
        lines.append(f"| {tool} | {backend} | {row['items']:,} | {row['p50']:.1f} | "
                     f"{row['p95']:.1f} | {row['mean']:.1f} | {row['item_p50']:.1f} | {met} |")
    for row in cold_rows:
        if row["tool"] == "rclip":
            ms = 1000 * row["seconds"]
            lines.append(f"| rclip 3.3.0 (cold CLI, no server) | ONNX Runtime fp32 | "
                         f"{row['n']} | {ms:.0f} | - | - | - | "
                         f"{'yes' if ms <= TARGET_MS else 'no'} |")
    return lines


def versions() -> str:
    import faiss

    ours = ", ".join(f"{name} {_version(dist)}" for name, dist in (
        ("torch", "torch"), ("onnxruntime", "onnxruntime"), ("open_clip", "open_clip_torch")))
    ours += f", faiss {faiss.__version__}"
    code = ("import importlib.metadata as m; print(m.version('rclip'), "
            "m.version('onnxruntime'))")
    try:
        found = subprocess.run([str(rclip_setup.rclip_python()), "-c", code],
                               capture_output=True, text=True).stdout.split()
    except OSError:  # no rclip venv: rclip was not measured
        found = []
    theirs = f"rclip {found[0]} (its onnxruntime {found[1]})" if len(found) == 2 else "rclip ?"
    return f"ours: {ours}; {theirs}"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def body(report: Report, settings: Settings) -> str:
    intro = [
        "retriever against rclip 3.3.0, the closest existing tool, on this machine's CPU "
        "(CUDA hidden from our side). Both run open_clip ViT-B-32-256 (rclip's model) with "
        "the same random weights (seed 0), written by bench/rclip_setup.py as our checkpoint "
        "and exported to rclip's ONNX files the way rclip's converter does: rankings are "
        "meaningless, but the computation is exactly that of the real weights, which is what "
        "these timings need. Each tool runs in its own process from its own venv; rclip's "
        "data dir is prepared offline (no hub access). GPU figures are not part of this "
        "harness: no GPU was lent while it was written, so none are claimed."]
    parts: list[list[str]] = []
    if report.index:
        parts.append(index_table(report.index, settings))
    if report.encode:
        parts.append(encode_table(report.encode))
    if report.cold:
        parts.append(cold_table(report.cold, settings))
    if report.warm:
        parts.append(warm_table(report.warm, report.cold, settings))
    notes = [f"Note: {line}." for line in report.notes]
    return "\n\n".join("\n".join(p) for p in [intro, *parts, *([notes] if notes else [])]) + "\n"


# --- main -------------------------------------------------------------------------------------


def parse(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.speed",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150, help="Photos per size (default 150).")
    parser.add_argument("--n-large", type=int, help="Photos at 1024x768 (default --n).")
    parser.add_argument("--n-small", type=int, help="Photos at 320x240 (default --n).")
    parser.add_argument("--n-12mp", type=int,
                        help=f"Photos at 4032x3024 (default the smaller of --n and {N_12MP}).")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=2, help="Timed indexing runs per tool.")
    parser.add_argument("--backends", nargs="+", choices=TOOLS, default=list(TOOLS),
                        help="rclip and our --backend values to measure.")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--encode-batch", type=int, default=64)
    parser.add_argument("--encode-batches", type=int, default=5)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--warm-items", type=int, default=100_000)
    parser.add_argument("--warm-queries", type=int, default=200)
    parser.add_argument("--dry-run", action="store_true",
                        help="Print the section instead of writing bench/RESULTS.md.")
    args = parser.parse_args(argv)
    n = {"large": args.n_large or args.n, "small": args.n_small or args.n,
         "12mp": args.n_12mp or min(args.n, N_12MP)}
    return Settings(tuple(args.sizes), n, args.repeats, tuple(args.backends),
                    tuple(args.parts), args.encode_batch, args.encode_batches, args.cold_runs,
                    args.warm_items, args.warm_queries, args.dry_run, tuple(argv))


def main(argv: list[str] | None = None) -> None:
    settings = parse(sys.argv[1:] if argv is None else argv)
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()[0]
    if load_before > cores / 2:
        print(f"warning: load average {load_before:.1f} on {cores} cores: timings will be "
              "slow and noisy", file=sys.stderr)
    if "rclip" in settings.tools:
        rclip_setup.prepare()
    else:  # our side alone: the checkpoint, without rclip's venv (made with pip)
        rclip_setup.ensure_checkpoint()
    report = Report()
    steps = {"index": measure_indexing, "encode": measure_encoding, "cold": measure_cold,
             "warm": measure_warm}
    for part in PARTS:
        if part in settings.parts:
            steps[part](settings, report)
    load_after = os.getloadavg()[0]
    command = shlex.join(["python", "-m", "bench.speed", *settings.argv])
    machine = (f"{machine_line()}; int8 kernel: {cpu_info().int8_kernel}; {versions()}; "
               f"load average {load_before:.2f} before, "
               f"{load_after:.2f} after")
    if settings.dry_run:
        print(f"Command: `{command}`\nMachine: {machine}\n\n{body(report, settings)}")
        return
    write_section("speed", "Speed against rclip (CPU)", body(report, settings), command, machine)
    print("wrote the speed section of bench/RESULTS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
