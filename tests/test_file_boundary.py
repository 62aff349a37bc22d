"""One file never stops or hangs a run: whatever it raises or however long it blocks, it is
reported once with a reason and skipped, and every other file is indexed."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from retriever.encoding.pixels import load_pixels
from retriever.errors import ImageError, UsageError
from retriever.ingest import handlers
from retriever.ingest.pipeline import IngestOptions, IngestReport, ingest_media
from retriever.library.collection import Collection
from retriever.media.images import decode_image, taken_at
from retriever.media.passages import read_text
from retriever.media.scan import open_regular, scan

from .helpers import write_photo

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 60  # far above what any test here needs; a hang fails instead of blocking pytest


def bounded(fn: Callable[[], object], seconds: float = DEADLINE_S) -> object:
    """fn() on a daemon thread; a test failure (not a hung test run) if it is not done in time."""
    out: dict[str, object] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as err:  # re-raised below, in the test's thread
            out["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["value"]


def forged_png(path: Path, width: int, height: int) -> Path:
    """A valid 8x8 PNG whose IHDR (CRC fixed) claims width x height: a decompression bomb's
    header without the memory."""
    Image.new("RGB", (8, 8), (9, 9, 9)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts at 16: width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # over type + data
    path.write_bytes(bytes(data))
    return path


def names(report: IngestReport) -> list[str]:
    return sorted(Path(f.path).name for f in report.failures)


@pytest.fixture
def index_once(tiny_encoder, tmp_path):
    collection = Collection.open(tmp_path / "index")

    def run(root: Path, **options) -> IngestReport:
        def go() -> IngestReport:
            with collection.writing():
                return ingest_media(collection, tiny_encoder, IngestOptions((root,), **options))
        return bounded(go)  # type: ignore[return-value]

    yield run
    collection.close()


def index_in_a_subprocess(root: Path, db: Path) -> dict:
    """The real CLI in a child process, killed if it runs past the deadline: a run that hangs
    (or a stuck thread that keeps the process from exiting) fails the test, not the test run."""
    cmd = [sys.executable, str(ROOT / "cli.py"), "index", str(root), "--db", str(db),
           "--model", "retriever-tiny", "--pretrained", "none", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DEADLINE_S * 2)
    assert proc.returncode == 0, proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
    run = json.loads(proc.stdout)["run"]
    assert len(skipped) == len(run["failures"])  # each reported once
    return run


def test_bombs_pipes_and_devices_are_reported_once_and_every_good_photo_is_indexed(tmp_path):
    root = tmp_path / "mixed"
    good = {f"p{i}.jpg" for i in range(4)}
    for i in range(4):
        write_photo(root / f"p{i}.jpg", (60 * i, 90, 200 - 40 * i))
    Image.new("L", (10_000, 9_500), 128).save(root / "95mp.jpg")  # over PIL's 89.5 MP limit
    good.add("95mp.jpg")
    forged_png(root / "bomb.png", 20_000, 20_000)
    forged_png(root / "bomb-over-pil.png", 12_000, 12_000)  # PIL's error, not only its warning
    os.mkfifo(root / "pipe.txt")
    os.mkfifo(root / "pipe.jpg")
    (root / "zero.txt").symlink_to("/dev/zero")
    (root / "zero.jpg").symlink_to("/dev/zero")
    bad = ["bomb-over-pil.png", "bomb.png", "pipe.jpg", "pipe.txt", "zero.jpg", "zero.txt"]

    first = index_in_a_subprocess(root, tmp_path / "index")
    reasons = {Path(f["path"]).name: f["reason"] for f in first["failures"]}
    assert sorted(reasons) == bad and len(first["failures"]) == len(bad)
    assert first["images"] == len(good) and first["texts"] == 0
    assert "20000x20000 exceeds the 100000000-pixel cap" in reasons["bomb.png"]
    assert "not a regular file (a named pipe)" in reasons["pipe.txt"]
    assert "not a regular file (a device)" in reasons["zero.txt"]

    second = index_in_a_subprocess(root, tmp_path / "index")  # a re-run finishes too
    assert second["encoded"] == 0 and second["unchanged"] == len(good)
    refused = sorted(Path(f["path"]).name for f in second["failures"])
    assert refused == ["pipe.jpg", "pipe.txt", "zero.jpg", "zero.txt"]  # by the scan, each run
    assert second["known_failures"] == 2  # the bombs: failed before and unchanged since


def test_an_image_between_pils_limit_and_our_cap_opens_and_max_pixels_decides(
        tmp_path, tiny_encoder):
    path = tmp_path / "95mp.jpg"
    Image.new("L", (10_000, 9_500), 128).save(path)
    pixels = load_pixels(path, tiny_encoder.pixels)  # the default cap: 100 MP
    assert (pixels.width, pixels.height) == (10_000, 9_500)
    with pytest.raises(ImageError, match="10000x9500 exceeds the 90000000-pixel cap"):
        load_pixels(path, tiny_encoder.pixels, max_pixels=90_000_000)


def test_a_bomb_header_has_no_date_and_is_refused_by_the_cap(tmp_path):
    bomb = forged_png(tmp_path / "bomb.png", 20_000, 20_000)
    assert taken_at(bomb) is None  # used to raise DecompressionBombError
    with pytest.raises(ImageError, match="exceeds the 100000000-pixel cap"):
        decode_image(bomb)


def test_a_read_that_never_ends_is_given_up_and_the_run_goes_on(
        index_once, tmp_path, monkeypatch):
    root = tmp_path / "lib"
    for i in range(6):
        write_photo(root / f"p{i}.jpg", (40 * i, 30, 30))
    stuck = {"p1.jpg", "p2.jpg", "p3.jpg"}  # more than the reader threads on a 2-core machine
    release = threading.Event()
    real = handlers.load_pixels

    def load(fh, *args):
        if Path(fh.name).name in stuck:
            release.wait()  # blocks until the test ends: a hung mount, a decoder loop
        return real(fh, *args)

    monkeypatch.setattr(handlers, "load_pixels", load)
    try:
        started = time.monotonic()
        report = index_once(root, batch_size=2, read_timeout=0.5, read_wall_timeout=0.5)
        took = time.monotonic() - started
    finally:
        release.set()
    assert names(report) == sorted(stuck)
    assert all("still reading after 0.5 s, given up" in f.reason for f in report.failures)
    assert report.images == 3
    assert took < 20  # neither waiting for the stuck threads nor for the pool to shut down


def test_any_exception_from_one_file_is_that_files_failure(index_once, tmp_path, monkeypatch):
    root = tmp_path / "lib"
    for i in range(4):
        write_photo(root / f"p{i}.jpg", (40 * i, 30, 30))
    errors = {"p1.jpg": MemoryError(), "p2.jpg": ValueError("a decoder's own complaint")}
    real = handlers.load_pixels

    def load(fh, *args):
        if (err := errors.get(Path(fh.name).name)) is not None:
            raise err
        return real(fh, *args)

    monkeypatch.setattr(handlers, "load_pixels", load)
    report = index_once(root)
    assert names(report) == ["p1.jpg", "p2.jpg"] and report.images == 2
    reasons = sorted(f.reason for f in report.failures)
    assert reasons[0].endswith("p1.jpg: MemoryError")
    assert reasons[1].endswith("p2.jpg: ValueError: a decoder's own complaint")


def test_an_interrupt_still_stops_the_run(index_once, tmp_path, monkeypatch):
    write_photo(tmp_path / "lib" / "p.jpg", (1, 2, 3))

    def load(fh, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(handlers, "load_pixels", load)
    with pytest.raises(KeyboardInterrupt):
        index_once(tmp_path / "lib")


def test_a_pipe_swapped_in_after_the_scan_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(OSError, match=r"not a regular file \(a named pipe\)"):
        bounded(lambda: open_regular(tmp_path / "pipe.txt"), 10)
    with pytest.raises(OSError, match="not a regular file"):
        bounded(lambda: read_text(tmp_path / "pipe.txt"), 10)


def test_symlinks_leaving_the_indexed_folders_are_refused_unless_allowed(tmp_path):
    root, other, outside = tmp_path / "notes", tmp_path / "other", tmp_path / "outside"
    for folder in (root, other, outside):
        folder.mkdir()
    (outside / "secret.txt").write_text("hunter2")
    (other / "shared.txt").write_text("in another indexed folder")
    (root / "own.txt").write_text("mine")
    (root / "passwd.txt").symlink_to(outside / "secret.txt")
    (root / "hop.txt").symlink_to(root / "passwd.txt")  # a chain that ends outside
    (root / "alias.txt").symlink_to(root / "own.txt")
    (root / "shared.txt").symlink_to(other / "shared.txt")

    result = scan([root, other])
    assert sorted(f.path.name for f in result.files) == ["alias.txt", "own.txt", "shared.txt",
                                                         "shared.txt"]
    assert sorted(Path(f.path).name for f in result.failures) == ["hop.txt", "passwd.txt"]
    assert all(f"symlink to {outside / 'secret.txt'}, outside the indexed folders" in f.reason
               and "--follow-symlinks-outside" in f.reason for f in result.failures)

    allowed = scan([root], follow_symlinks_outside=True)
    assert "passwd.txt" in {f.path.name for f in allowed.files} and not allowed.failures


def test_the_cli_skips_outside_symlinks_unless_the_flag_allows_them(cli, tmp_path):
    root = tmp_path / "notes"
    root.mkdir()
    (root / "own.txt").write_text("my own note about red paint")
    (root / "passwd.txt").symlink_to("/etc/passwd")
    db = tmp_path / "index"
    base = ["index", root, "--db", db, "--model", "retriever-tiny", "--pretrained", "none"]
    refused = cli(*base)
    assert refused.exit_code == 0
    assert "passwd.txt: symlink to /etc/passwd, outside the indexed folders" in refused.stderr
    allowed = cli(*base, "--follow-symlinks-outside")
    assert allowed.exit_code == 0 and "passwd.txt" not in allowed.stderr
    assert "encoded 0 images and 1 text files" in allowed.stdout


@pytest.mark.parametrize(("field", "flag"), [("batch_size", "--batch-size"),
                                             ("max_pixels", "--max-pixels"),
                                             ("max_text_bytes", "--max-text-bytes")])
@pytest.mark.parametrize("value", [0, -3])
def test_sizes_below_one_are_refused_naming_the_flag(tmp_path, field, flag, value):
    with pytest.raises(UsageError, match=f"^{flag} {value}: must be at least 1$"):
        IngestOptions((tmp_path,), **{field: value})


def test_the_cli_refuses_batch_size_zero_in_one_line(cli, tmp_path):
    write_photo(tmp_path / "lib" / "p.jpg", (1, 2, 3))
    result = cli("index", tmp_path / "lib", "--db", tmp_path / "index", "--batch-size", "0")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --batch-size 0: must be at least 1"
    assert not (tmp_path / "index").exists()  # refused before anything was written
