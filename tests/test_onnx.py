"""The ONNX Runtime path: export, equality with torch, the torch-free tokenizer and pixels,
the export cache, and the exact search that needs no FAISS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image

from index.exact import ExactIndex
from index.vectors import VectorIndex
from retriever.encoding.backends import export_dir, open_encoder
from retriever.encoding.onnx_export import export
from retriever.encoding.ort_encoder import VISUAL_INT8, OrtEncoder, max_pair_sum, quantize
from retriever.encoding.pixels import load_pixels
from retriever.encoding.specs import ModelId
from retriever.encoding.tokenizer import ClipTokenizer
from retriever.ingest.pipeline import IngestOptions, ingest_media
from retriever.library.collection import Collection

from .helpers import COLOURS, write_photo

TEXTS = [
    "a red disc", "a photo of a dog on a beach at sunset", "Hello, World! It's 3:45pm",
    "naïve café résumé — “quoted” ‘single’", "emoji 🐶🐱 and 中文 日本語", "we'll they've I'm",
    "&amp; &lt;b&gt; entities", "  lots   of\n\nwhite\tspace ", "numbers 1234567 3.14",
    "word " * 60,  # longer than the context: cut like open_clip cuts it
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_encoder) -> Path:
    return export(tiny_encoder.loaded, tmp_path_factory.mktemp("onnx") / "tiny")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("photos")
    sizes = [(160, 120), (90, 200), (640, 480), (33, 32)]  # landscape, portrait, big, tiny
    colours = list(COLOURS.values())
    return [write_photo(root / f"p{i}.jpg", colours[i % 3], size)
            for i, size in enumerate(sizes)]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_onnx_image_vectors_equal_torch_on_real_photos(exported, tiny_encoder, photos):
    pixels = np.stack([load_pixels(p, tiny_encoder.pixels).data for p in photos])
    onnx = OrtEncoder(exported, batch_size=3)  # 4 photos: a full batch and a partial one
    ours, theirs = onnx.encode_pixels(pixels), tiny_encoder.encode_pixels(pixels)
    assert ours.shape == theirs.shape == (4, tiny_encoder.dim)
    assert cosines(ours, theirs).min() >= 0.9999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)


def test_onnx_text_vectors_equal_torch_at_every_length(exported, tiny_encoder):
    onnx = OrtEncoder(exported, batch_size=4)  # batches mix short and full-length texts
    assert onnx.variable_length  # CLIP's causal text tower: run at the batch's own length
    assert cosines(onnx.encode_texts(TEXTS), tiny_encoder.encode_texts(TEXTS)).min() >= 0.9999
    for text in TEXTS:
        assert onnx.count_tokens(text) == tiny_encoder.count_tokens(text)


def test_tokenizer_gives_open_clip_ids(exported):
    theirs = open_clip.get_tokenizer("retriever-tiny")
    ours = ClipTokenizer(exported / "tokenizer.json", theirs.context_length)
    for text, row in zip(TEXTS, ours(TEXTS), strict=True):
        assert ours.encode(text) == theirs.encode(text), text
        full = theirs([text])[0].tolist()
        assert full == row + [0] * (len(full) - len(row))  # open_clip pads with zeros


def test_pixels_equal_open_clip_preprocessing(tiny_encoder):
    rng = np.random.default_rng(0)
    for w, h in [(160, 120), (31, 97), (32, 32), (500, 40)]:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        want = tiny_encoder.loaded.preprocess(im).numpy()
        assert np.abs(tiny_encoder.pixels.preprocess(im) - want).max() < 1e-5


def test_reduced_jpeg_decode_is_close_and_keeps_the_true_size(tmp_path, tiny_encoder):
    """Big JPEGs are decoded at a DCT scale still >= the input size; the record keeps the
    photo's real (upright) size."""
    path = write_photo(tmp_path / "big.jpg", (200, 40, 40), size=(640, 480))
    full = tiny_encoder.pixels.preprocess(Image.open(path).convert("RGB"))
    got = load_pixels(path, tiny_encoder.pixels)
    assert (got.width, got.height) == (640, 480)
    assert np.abs(got.data - full).mean() < 0.02  # of a ~[-2, 2] range
    rotated = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[274] = 6  # turned 90 degrees
    Image.open(path).save(rotated, exif=exif)
    assert (load_pixels(rotated, tiny_encoder.pixels).width,
            load_pixels(rotated, tiny_encoder.pixels).height) == (480, 640)


def test_int8_image_tower_stays_close_to_fp32(tmp_path, tiny_encoder, photos):
    folder = export_dir(tmp_path, tiny_encoder.model_id)
    export(tiny_encoder.loaded, folder)
    fp32 = open_encoder(tiny_encoder.model_id, "onnx", tmp_path)
    int8 = open_encoder(tiny_encoder.model_id, "onnx-int8", tmp_path)
    assert isinstance(int8, OrtEncoder) and int8.int8 and (folder / VISUAL_INT8).is_file()
    pixels = np.stack([load_pixels(p, fp32.pixels).data for p in photos])
    assert cosines(int8.encode_pixels(pixels), fp32.encode_pixels(pixels)).min() > 0.99


def test_int8_weights_leave_no_16_bit_pair_sum_to_saturate(exported):
    """Without VNNI, ONNX Runtime sums pairs of u8 x s8 products in a saturating int16
    (VPMADDUBSW): the quantised weights must keep every such pair sum within 32767."""
    assert 0 < max_pair_sum(quantize(exported)) <= 32767


INT8_ON_AVX2 = """
import sys
import numpy as np
from retriever.encoding.ort_encoder import OrtEncoder
from pathlib import Path
folder, pixels = Path(sys.argv[1]), np.load(sys.argv[2])
fp32 = OrtEncoder(folder).encode_pixels(pixels)
int8 = OrtEncoder(folder, int8=True).encode_pixels(pixels)
print(float((fp32 * int8).sum(1).min()))
"""


@pytest.mark.valgrind
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_int8_stays_close_to_fp32_on_cpus_without_avx512(tmp_path, exported, photos):
    """valgrind's CPU reports no AVX-512, so ONNX Runtime runs its AVX2 kernels under it,
    whatever this machine has: 8-bit weights gave a min cosine of 0.985 there."""
    quantize(exported)
    rng = np.random.default_rng(0)
    pixels = [load_pixels(p, OrtEncoder(exported).pixels).data for p in photos]
    pixels += list(rng.normal(0, 1, (8, *pixels[0].shape)).astype(np.float32))  # noise too
    np.save(tmp_path / "pixels.npy", np.stack(pixels))
    run = subprocess.run(["valgrind", "--tool=none", "-q", sys.executable, "-c", INT8_ON_AVX2,
                          exported, tmp_path / "pixels.npy"], capture_output=True, text=True,
                         timeout=600, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.split()[-1]) > 0.999


@pytest.mark.slow
def test_a_query_on_an_exported_index_imports_neither_torch_nor_faiss(tmp_path, photos):
    root = photos[0].parent
    env = {**os.environ, "RETRIEVER_BACKEND": "auto"}
    run = [sys.executable, "-m", "cli"]
    indexed = subprocess.run([*run, "index", root, "--db", tmp_path / "idx", "--model",
                              "retriever-tiny", "--pretrained", "none"], env=env,
                             capture_output=True, text=True)
    assert indexed.returncode == 0, indexed.stderr
    probe = ("import sys, runpy; sys.argv = ['retriever', 'search', 'a red disc', '--db', "
             f"{str(tmp_path / 'idx')!r}, '--json']\n"
             "try: runpy.run_module('cli', run_name='__main__')\n"
             "except SystemExit as e: assert not e.code, e.code\n"
             "print('LOADED', 'torch' in sys.modules, 'faiss' in sys.modules, file=sys.stderr)")
    searched = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                              text=True)
    assert searched.returncode == 0, searched.stderr
    assert "LOADED False False" in searched.stderr
    rows = [json.loads(line) for line in searched.stdout.splitlines()]
    assert len(rows) == len(photos) and all(r["kind"] == "image" for r in rows)


@pytest.mark.slow
def test_auto_backend_index_and_search_equal_torch(tmp_path, cli, monkeypatch, media_folder):
    """ONNX fp32 (what auto runs on CPU for an fp32 index or family) ranks exactly as torch
    does, through the real CLI (auto's int8: tests/test_precision.py)."""
    results = {}
    for backend in ("onnx", "torch"):
        monkeypatch.setenv("RETRIEVER_BACKEND", backend)
        db = tmp_path / f"index-{backend}"  # not "onnx": no such folder is made (below)
        assert cli("index", media_folder, "--db", db, "--model", "retriever-tiny",
                   "--pretrained", "none").exit_code == 0
        found = cli("search", "a red disc", "--db", db, "--json", "-k", "20", "--no-server")
        assert found.exit_code == 0, found.output
        results[backend] = [json.loads(line) for line in found.stdout.splitlines()]
    # the export is in the user's cache, shared by indexes; none in the index or media folders
    exports = Path(os.environ["XDG_CACHE_HOME"]) / "retriever" / "onnx"
    assert len([p for p in exports.iterdir() if not p.name.startswith(".")]) == 1
    assert not any(p.name == "onnx" for p in tmp_path.rglob("*"))
    onnx, torch_ = results["onnx"], results["torch"]
    assert [(r["path"], r["position"]) for r in onnx] == [(r["path"], r["position"])
                                                          for r in torch_]
    assert np.allclose([r["score"] for r in onnx], [r["score"] for r in torch_], atol=1e-4)


@pytest.mark.slow
def test_export_is_cached_per_model_and_redone_when_the_weights_change(tmp_path, tiny_encoder):
    from retriever.encoding.checkpoints import save_checkpoint

    weights = tmp_path / "tiny.pt"
    save_checkpoint(weights, tiny_encoder.loaded)
    model = ModelId("retriever-tiny", str(weights))
    first = open_encoder(model, "onnx", tmp_path / "idx")
    assert isinstance(first, OrtEncoder)
    folder = first.directory
    again = open_encoder(model, "onnx", tmp_path / "idx")  # from the cache: same folder
    assert isinstance(again, OrtEncoder) and again.directory == folder
    os.utime(weights, (1, 1))  # the weights file changed: a new export replaces the old one
    third = open_encoder(model, "onnx", tmp_path / "idx")
    assert isinstance(third, OrtEncoder) and third.directory != folder
    assert sorted(p.name for p in folder.parent.iterdir()) == [third.directory.name]


def test_exact_search_equals_faiss_flat(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.permutation(10_000)[:500].astype(np.int64)
    faiss_index = VectorIndex.from_vectors(16, ids, vectors)
    exact = ExactIndex(*faiss_index.flat_arrays())
    queries = rng.normal(size=(5, 16)).astype(np.float32)
    for allowed in (None, ids[::7], ids[:3], np.array([], dtype=np.int64)):
        want_scores, want_ids = faiss_index.search(queries, 10, allowed)
        got_scores, got_ids = exact.search(queries, 10, allowed)
        assert got_ids.shape == want_ids.shape
        assert np.array_equal(got_ids, want_ids)
        assert np.allclose(got_scores, want_scores, atol=1e-5)


def test_readers_use_the_copy_only_while_it_mirrors_the_store(tmp_path, tiny_encoder, photos):
    collection = Collection.open(tmp_path / "idx")
    with collection.writing():
        ingest_media(collection, tiny_encoder, IngestOptions((photos[0].parent,)))
    searcher = Collection.open(tmp_path / "idx").searcher("image")
    assert isinstance(searcher, ExactIndex) and len(searcher) == len(photos)
    with collection.writing():  # a store write not yet saved: the copy is stale
        collection.remove_files([str(photos[0])])
        searcher = Collection.open(tmp_path / "idx").searcher("image")
        assert isinstance(searcher, VectorIndex) and len(searcher) == len(photos) - 1
        collection.save()
    searcher = Collection.open(tmp_path / "idx").searcher("image")
    assert isinstance(searcher, ExactIndex) and len(searcher) == len(photos) - 1
    assert photos[0].stat().st_size > 0  # only the index forgot it


def test_an_unknown_backend_is_one_line_naming_the_choices(cli, media_folder, tmp_path):
    for args in (("search", "a red disc", "--db", tmp_path / "none"),
                 ("index", media_folder, "--db", tmp_path / "idx")):
        result = cli(*args, "--backend", "gpu")
        assert result.exit_code == 2
        assert result.stderr.strip().splitlines() == [
            "error: --backend 'gpu': use one of auto, torch, onnx, onnx-int8"]


def test_export_leaves_the_model_as_it_came(tmp_path):
    """The exporters switch the module to training mode; export puts it back, so a model
    used after its export encodes bit for bit as before (and as a fresh load)."""
    from retriever.encoding.clip_encoder import ClipEncoder
    from retriever.encoding.models import load_model

    from .helpers import TINY

    encoder = ClipEncoder(load_model(TINY))
    images = [Image.new("RGB", (40, 30), c) for c in [(200, 0, 0), (0, 0, 200)]]
    before = encoder.encode_images(images)
    export(encoder.loaded, tmp_path / "export")
    assert not encoder.loaded.model.training
    np.testing.assert_array_equal(encoder.encode_images(images), before)
