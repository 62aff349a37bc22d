"""Shared builders for the tests: media written on the spot, indexes built from it, store and
vector data, damage done to files. A test module that needs one imports it from here; no test
module imports another, nor conftest.py (which keeps the pytest fixtures).

Sections: models and photos; the CLI; the server; stores and vectors; ingest engines (local and
Ray); damaged and hostile files; other media (video, HEIC/DNG, text in images, class folders).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from retriever.encoding.specs import ModelSpec
from retriever.jsonfile import MAX_BYTES
from retriever.settings import Settings
from retriever.training import synthetic

from .postgres import Stores

# The store, the collection and the engines are imported by the builders that use them:
# conftest.py imports this module, and a test of one layer should not fail to start because
# another layer does not import.
if TYPE_CHECKING:
    from starlette.testclient import TestClient

    from retriever.ingest.run import IngestOutcome
    from retriever.library.collection import Collection


def user_settings() -> Settings:
    """This test's settings, as the CLI reads them (conftest's XDG folders, ...): what a test
    calling the library directly passes where the CLI would."""
    return Settings.from_environ(os.environ)


# --- models and photos ------------------------------------------------------------------------

TINY = ModelSpec("retriever-tiny", "none")  # bundled config: 32 px ViT, 64-d, context 32
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220)}


def write_photo(path: Path, colour: tuple[int, int, int], size=(160, 120)) -> Path:
    """A real JPEG: a coloured disc on a grey, slightly noisy background."""
    rng = np.random.default_rng(sum(os.fsencode(path.name)))
    pixels = rng.integers(100, 140, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(pixels)
    ImageDraw.Draw(im).ellipse((30, 20, 130, 100), fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "JPEG", quality=90)
    return path


# --- the CLI ----------------------------------------------------------------------------------

TINY_ARGS = ("--model", "retriever-tiny", "--pretrained", "none")


def rows(result):
    """The JSON lines of a successful command's stdout."""
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


# --- the server -------------------------------------------------------------------------------

CAP = 64 * 1024  # upload cap for these tests: a test photo is ~5 kB, the "huge" upload 100 kB
OLD = datetime(2001, 5, 1).timestamp()  # mtime of photos/old.jpg (no EXIF: mtime is its date)


def make_media(root: Path) -> Path:
    for name, colour in COLOURS.items():
        write_photo(root / "photos" / f"{name}.jpg", colour)
    (root / "photos" / "red.txt").write_text("a red disc on grey\n")
    write_photo(root / "photos" / "old.jpg", (200, 200, 30))
    os.utime(root / "photos" / "old.jpg", (OLD, OLD))
    rotated = Image.new("RGB", (160, 120), (90, 90, 90))  # stored landscape ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... Orientation 6: shown rotated 90 degrees, i.e. portrait
    rotated.save(root / "photos" / "rotated.jpg", exif=exif)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("buy red paint")
    (root / "notes" / "trip.md").write_text("We saw a green field. " + "The sky was blue. " * 20)
    return root


def open_index(root: Path, encoder) -> Collection:
    from retriever.ingest.pipeline import IngestOptions, ingest_media
    from retriever.library.collection import Collection

    collection = Collection.open(root / ".retriever")
    with collection.writing():
        ingest_media(collection, encoder, IngestOptions((root,)))
    return collection


def client_for(collection: Collection, encoder) -> TestClient:
    from starlette.testclient import TestClient

    from retriever.server.app import ServerSettings, create_app

    # 127.0.0.1: the default settings answer loopback Host headers only
    app = create_app(collection, encoder, ServerSettings(max_upload_bytes=CAP))
    return TestClient(app, base_url="http://127.0.0.1")


def indexed_media(folder: Path, encoder) -> Iterator[tuple[Path, Collection]]:
    """A module fixture's body: the media of make_media indexed under `folder`."""
    with pytest.MonkeyPatch.context() as env:  # the autouse isolation is per test
        env.delenv("RETRIEVER_STORE_URL", raising=False)
        root = make_media(folder / "media")
        collection = open_index(root, encoder)
    yield root, collection
    collection.close()


def results(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return response.json()["results"]


# --- stores and vectors -----------------------------------------------------------------------

def vec(seed, d=8):
    v = np.random.default_rng(seed).normal(size=d).astype(np.float32)
    return v / np.linalg.norm(v)


def engine_at_version(url: str, version: int):
    """An engine on a store built by the release whose last migration was `version`
    (0: the bookkeeping table only)."""
    from sqlalchemy import create_engine, text

    from index.migrations import MIGRATIONS

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                          "name TEXT NOT NULL, applied_at FLOAT NOT NULL)"))
        for number, name, apply in MIGRATIONS[:version]:
            apply(conn)
            conn.execute(text("INSERT INTO schema_migrations VALUES (:v, :n, 0)"),
                         {"v": number, "n": name})
    return engine


def contents(db: Path, stores: Stores) -> dict[tuple[str, str, int], np.ndarray]:
    """(path, kind, position) -> vector, read straight from the store."""
    from index.kinds import KINDS
    from index.store import Store

    store = Store(stores.for_index(db) or f"sqlite:///{db / 'store.db'}")
    out = {}
    for kind in KINDS:
        ids, vectors = store.vectors(kind)
        views = store.items(ids.tolist())
        for i, v in zip(ids.tolist(), vectors, strict=True):
            out[(views[i].path, kind, views[i].position)] = v
    store.close()
    return out


# clustered unit vectors and the store rows that hold them, for the vector-index tests
DIM = 32


def clustered(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """(n, dim) float32 unit vectors around 50 fixed centres (the same centres for every seed),
    so an IVF has lists worth probing and nearest neighbours are not ties."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(50, dim))
    x = centres[rng.integers(0, 50, n)] + rng.normal(scale=0.7, size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def files(vectors: np.ndarray, start: int = 0, tag: str = "") -> list:
    """One image file a vector, /m/<start + i>.jpg, its hash `tag` + its number."""
    from index.kinds import IMAGE
    from index.records import FileRecord, ItemRecord

    return [(FileRecord(f"/m/{start + i}.jpg", IMAGE, f"{tag}{start + i}", 1, 1.0),
             [ItemRecord(IMAGE, 0, None, v)]) for i, v in enumerate(vectors)]


# --- ingest engines (tests/test_ray_engine.py, tests/test_ray_cluster.py) ---------------------

def index(media: Path, db: Path, engine: str, progress=None, **options) -> IngestOutcome:
    """Index `media` into the index folder `db` on `engine` ("local" or "ray"), retriever-tiny
    with random weights, --batch-size 8."""
    from retriever.ingest.pipeline import IngestOptions
    from retriever.ingest.run import IngestRequest, ingest_folders

    options = IngestOptions((media,), batch_size=8, **options)
    return ingest_folders(IngestRequest(options, db, ModelSpec("retriever-tiny", "none"), "torch",
                                      engine=engine, settings=user_settings()), progress)


def file_states(db: Path) -> dict:
    """The store's FileState of every file, by path (sizes, times, hashes)."""
    from index.store import Store

    store = Store(f"sqlite:///{db / 'store.db'}")
    states = store.file_states()
    store.close()
    return states


def assert_same(db: Path, clean: Path) -> None:
    """Same files (sizes, times, hashes), same items, vectors within 1e-5."""
    assert file_states(db) == file_states(clean)
    got, want = contents(db, Stores(None, db)), contents(clean, Stores(None, clean))
    assert got.keys() == want.keys()
    for key, vector in got.items():
        np.testing.assert_allclose(vector, want[key], atol=1e-5)


def with_reader_hook(monkeypatch, hook) -> None:
    """Read tasks call `hook(media)` before each file they read (shipped to the workers by
    value, as a closure): a stand-in for a hostile file or a slow machine."""
    from retriever.ingest import ray_engine

    shipped = ray_engine._for_tasks

    def for_tasks(read):
        inner = shipped(read)

        def hooked(media):
            hook(media)
            return inner(media)

        hooked.spec = inner.spec  # type: ignore[attr-defined]  # as a read task looks at it
        return hooked

    monkeypatch.setattr(ray_engine, "_for_tasks", for_tasks)


# --- damaged and hostile files ----------------------------------------------------------------

def flip_middle(path: Path) -> None:
    """Same size, other bytes: 64 bytes inverted in the middle of the file."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size * 2 // 3)


DEEP = 100_000  # arrays nested: far past Python's recursion limit


def plant(path: Path, shape: str) -> None:
    """Put something at `path` that is not a small JSON file of retriever's."""
    if shape == "fifo":  # opening it for reading would wait for a writer forever
        os.mkfifo(path)
    elif shape == "/dev/zero":  # reading it never ends
        path.symlink_to("/dev/zero")
    elif shape == "directory":
        path.mkdir()
    elif shape == "huge":  # valid JSON, one byte over the cap
        path.write_bytes(b"[" + b" " * (MAX_BYTES - 1) + b"]")
    elif shape == "nested":
        path.write_text("[" * DEEP + "]" * DEEP)
    elif shape == "truncated":
        path.write_text('{"roots": ["/home/me/Pic')
    elif shape == "not utf-8":
        path.write_bytes(b'{"roots": ["\xff\xfe"]}')
    elif shape == "empty":
        path.write_bytes(b"")
    else:
        raise AssertionError(shape)


SHAPES = ("fifo", "/dev/zero", "directory", "huge", "nested", "truncated", "not utf-8", "empty")


# --- other media ------------------------------------------------------------------------------

SCENE_SECONDS = 2
FPS = 10


def scene(number: int, rng: random.Random, size: tuple[int, int] = (128, 96)) -> Image.Image:
    w, h = size
    if number == 0:
        return Image.new("RGB", size, (220 - rng.randrange(20), 30, 30))
    if number == 1:
        im = Image.new("RGB", size, (235, 235, 235))
        x, y, r = w / 2 + rng.uniform(-8, 8), h / 2 + rng.uniform(-8, 8), h * 0.3
        ImageDraw.Draw(im).ellipse((x - r, y - r, x + r, y + r), fill=(30, 60, 220))
        return im
    im = Image.new("RGB", size, (10, 10, 10))
    draw = ImageDraw.Draw(im)
    for row in range(3):
        draw.text((8 + rng.randrange(10), 12 + 28 * row), "words here", fill=(30, 200, 60))
    return im


def write_video(path: Path, scenes: tuple[int, ...] = (0, 1, 2)) -> Path:
    import av

    rng = random.Random(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        frames = [scene(s, rng) for s in scenes for _ in range(SCENE_SECONDS * FPS)]
        for n, image in enumerate(frames):
            frame = av.VideoFrame.from_image(image)
            frame.pts = n
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


RED, BLUE = (200, 20, 20), (20, 20, 200)
ORIENTATION = 274
TURNED_CW = 6  # EXIF orientation: turn 90 degrees clockwise to show upright
DNG_DATE = "2021:05:06 07:08:09"


def halves(width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8: the left half red, the right half blue. Turned clockwise
    (orientation 6) it shows red on top, blue below."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2], pixels[:, width // 2:] = RED, BLUE
    return pixels


def write_heic(path: Path, width: int = 96, height: int = 64) -> Path:
    import pillow_heif

    pillow_heif.register_heif_opener()
    exif = Image.Exif()
    exif[ORIENTATION] = TURNED_CW
    Image.fromarray(halves(width, height)).save(path, exif=exif.tobytes(), quality=95)
    return path


def write_dng(path: Path, width: int = 96, height: int = 64,
              preview: tuple[int, int] | None = None) -> Path:
    """A minimal DNG: 12-bit RGGB sensor data of `halves`, orientation 6, a DateTime; with
    `preview` (w, h) an uncompressed RGB preview in IFD0 and the sensor data in a SubIFD."""
    import tifffile

    rgb = halves(width, height).astype(np.uint16) * 16  # 12-bit levels
    cfa = np.empty((height, width), np.uint16)  # (h, w): R G / G B
    cfa[0::2, 0::2], cfa[1::2, 1::2] = rgb[0::2, 0::2, 0], rgb[1::2, 1::2, 2]
    cfa[0::2, 1::2], cfa[1::2, 0::2] = rgb[0::2, 1::2, 1], rgb[1::2, 0::2, 1]
    identity = (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1)
    dng = [(ORIENTATION, "H", 1, TURNED_CW, True), (306, "s", 0, DNG_DATE, True),
           (50706, "B", 4, (1, 4, 0, 0), True), (50708, "s", 0, "retriever test", True),
           (50721, "2i", 9, identity, True), (50728, "2I", 3, (1, 1) * 3, True),
           (50778, "H", 1, 21, True)]  # DNGVersion, camera, ColorMatrix1, neutral, D65
    sensor = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True),
              (50714, "H", 1, 0, True), (50717, "H", 1, 4095, True)]  # CFA, black, white
    with tifffile.TiffWriter(path) as tif:
        if preview is None:
            tif.write(cfa, photometric=32803, extratags=dng + sensor)
        else:
            tif.write(halves(*preview), photometric="rgb", subfiletype=1, subifds=1,
                      extratags=dng)
            tif.write(cfa, photometric=32803, extratags=sensor)
    return path


def write_invoice(path: Path) -> Path:
    image = Image.new("RGB", (640, 220), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=40)
    draw.text((24, 30), "INVOICE 2023", fill="black", font=font)
    draw.text((24, 120), "TOTAL 45.00", fill="black", font=font)
    image.save(path)
    return path


def write_colour_folders(root: Path, per_class: dict[str, int], seed: int = 1) -> Path:
    """One folder per colour holding that many shapes of it, in varied places (unbalanced, so
    mean per-class recall differs from top-1)."""
    rng = random.Random(seed)
    shapes = [(s, p) for s in synthetic.SHAPES for p in synthetic.PLACES]
    for colour, n in per_class.items():
        for i in range(n):
            shape, place = shapes[i % len(shapes)]
            path = root / colour / f"{shape}_{place}_{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            synthetic.draw_scene(synthetic.Scene(colour, shape, place), 64, rng).save(path)
    return root



# --- the web page -----------------------------------------------------------------------------


def tag_files(collection: Collection, labels: dict[Path, str]) -> dict[Path, int]:
    """Tag each image file with its label, stored as `retriever tag` stores tags (one label
    set of all the labels); returns each file's image item id."""
    from index.records import TagRecord

    ids = collection.reads.image_items_at([str(path) for path in labels])
    by_path = {path: ids[str(path)] for path in labels}
    label_set = json.dumps(sorted(set(labels.values())))
    with collection.writing():
        collection.replace_tags(label_set, list(by_path.values()),
                                [TagRecord(by_path[p], label, 0.3) for p, label in labels.items()])
    return by_path


CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright downloads no browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SERVE_DEADLINE_S = 120  # loading torch and the model on a busy 2-core CI machine


@contextmanager
def serving(db: Path, log: Path) -> Iterator[str]:
    """The URL of a real `retriever serve --db db` on a free loopback port, its output in
    `log`; stopped on leaving."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--db", str(db),
                                    "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + SERVE_DEADLINE_S
    try:
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"retriever serve did not answer:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/api/info", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
