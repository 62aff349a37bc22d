"""The CPU plan (batch size, encoder and reader threads): what it is on 2, 4 and 16 cores, and
that it never changes the vectors: every batch size and thread count gives what batch 1 gives,
for torch, ONNX fp32 and ONNX int8, and indexing a folder under two plans stores the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.photos import photo
from retriever.encoding.clip_encoder import ClipEncoder
from retriever.encoding.cpu import MAX_READERS, CpuInfo, Plan, cpu_info, plan
from retriever.encoding.onnx_export import export
from retriever.encoding.ort_encoder import OrtEncoder, quantize
from retriever.ingest import readers
from retriever.ingest.pipeline import IngestOptions, ingest_media
from retriever.library.collection import Collection

from .helpers import contents
from .postgres import Stores

TOL = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_encoder) -> Path:
    folder = export(tiny_encoder.loaded, tmp_path_factory.mktemp("onnx") / "tiny")
    quantize(folder)
    return folder


@pytest.fixture(scope="module")
def pixels(tiny_encoder) -> np.ndarray:
    size = tiny_encoder.pixels.size
    x = np.random.default_rng(0).normal(0, 1, (13, 3, size, size)).astype(np.float32)
    x[7:] *= 6  # rows with much larger activations: a shared int8 scale would move the rest
    return x


def sizes() -> list[int]:
    return sorted({1, 2, 5, plan().batch, 64})


def test_plan_follows_the_cpu():
    small = CpuInfo("x", 2, ("avx2",), 2048, 0)
    assert plan(small).batch == 8 and plan(small).encoder_threads == 2
    assert plan(small).reader_threads == 2
    assert plan(CpuInfo("x", 64, (), 2048, 0)).batch == 64  # capped
    assert plan(CpuInfo("x", 1, (), 0, 0)).batch == 4  # no cache sizes: 4 per core, at least 4
    assert CpuInfo("x", 2, ("avx2", "avx512_vnni"), 0, 0).int8_kernel == "vnni"
    assert CpuInfo("x", 2, ("avx2",), 0, 0).int8_kernel == "avx2"
    assert CpuInfo("x", 4, ("asimddot",), 0, 0).int8_kernel == "arm-dot"
    here = cpu_info()
    assert here.cores >= 1 and "cores" in here.line()


@pytest.mark.parametrize(("cores", "l2_kb", "want"), [
    (2, 2048, Plan(batch=8, encoder_threads=2, reader_threads=2)),  # a 2-core cloud VM
    (4, 512, Plan(batch=4, encoder_threads=4, reader_threads=4)),  # a laptop, small L2
    (4, 0, Plan(batch=16, encoder_threads=4, reader_threads=4)),  # cache sizes unknown
    (16, 1024, Plan(batch=32, encoder_threads=16, reader_threads=16)),  # a workstation
    (64, 2048, Plan(batch=64, encoder_threads=64, reader_threads=MAX_READERS)),  # capped
])
def test_plan_on_2_4_and_16_cores(cores, l2_kb, want):
    """The encoder takes every core; as many readers as cores (up to MAX_READERS) share them,
    so decoding big photos is bounded by the cores, never by a lone reader."""
    info = CpuInfo("x", cores, ("avx2", "fma"), l2_kb, 32768)
    assert plan(info) == want
    assert plan(info) == plan(info)  # a pure function of the CPU


def index_under(tmp_path: Path, folder: Path, exported: Path, chosen: Plan, int8: bool,
                monkeypatch) -> dict:
    """`folder` indexed with the tiny ONNX export under plan `chosen`; the stored vectors."""
    monkeypatch.setattr(readers, "plan", lambda: chosen)
    encoder = OrtEncoder(exported, batch_size=chosen.batch, int8=int8)
    encoder.threads = chosen.encoder_threads
    db = tmp_path / f"db-{chosen.batch}-{int8}"
    collection = Collection.open(db)
    try:
        report = ingest_media(collection, encoder, IngestOptions((folder,), batch_size=5))
    finally:
        collection.close()
    assert report.images == 9 and not report.failures
    return contents(db, Stores(None, db))


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_indexing_stores_the_same_vectors_under_any_plan(tmp_path, exported, int8,
                                                         monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate([(64, 48), (640, 480), (1200, 900)] * 3):  # small and drafted
        photo(*size, seed=i).save(folder / f"p{i}.jpg", quality=90)
    one = index_under(tmp_path, folder, exported, Plan(4, 1, 1), int8, monkeypatch)
    many = index_under(tmp_path, folder, exported, Plan(8, 2, 3), int8, monkeypatch)
    assert one.keys() == many.keys() and len(one) == 9
    for key, vector in one.items():
        assert np.abs(many[key] - vector).max() <= TOL, key


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_onnx_vectors_do_not_depend_on_batch_or_threads(exported, pixels, int8):
    one = OrtEncoder(exported, batch_size=1, int8=int8)
    one.threads = 1
    reference = one.encode_pixels(pixels)
    for batch in sizes():
        for threads in (1, 2, 3):
            encoder = OrtEncoder(exported, batch_size=batch, int8=int8)
            encoder.threads = threads
            got = encoder.encode_pixels(pixels)
            assert np.abs(got - reference).max() <= TOL, (batch, threads)
    # one image alone equals the same image among others (a batch of 13, all cores)
    alone = OrtEncoder(exported, int8=int8).encode_pixels(pixels[:1])
    assert np.abs(alone - reference[:1]).max() <= TOL


def test_torch_vectors_do_not_depend_on_batch(tiny_encoder, pixels):
    reference = ClipEncoder(tiny_encoder.loaded, 1).encode_pixels(pixels)
    for batch in sizes():
        got = ClipEncoder(tiny_encoder.loaded, batch).encode_pixels(pixels)
        assert np.abs(got - reference).max() <= TOL, batch


def test_int8_in_batches_would_differ(exported, pixels):
    """Why the int8 tower runs one image per call: its activation scale is per call, so a batch
    with larger rows moves the others' vectors by far more than TOL."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported / "visual.int8-7bit.onnx"),
                                   providers=["CPUExecutionProvider"])
    batched = session.run(None, {"input": pixels})[0]
    single = np.concatenate([session.run(None, {"input": pixels[i : i + 1]})[0]
                             for i in range(len(pixels))])
    assert np.abs(batched - single).max() > 100 * TOL
