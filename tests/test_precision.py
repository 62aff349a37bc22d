"""The precision an index's vectors are made in (issue 25): `auto` makes a new index's image
vectors in int8 on a CPU and keeps what an existing index recorded, a store made before
precisions were recorded keeps fp32, a backend of the other kind is refused in one line naming
--reindex, --reindex changes it, and an image query is encoded as the index's images were.

int8 and fp32 image vectors of retriever-tiny differ by ~6e-3 (cosine ~0.9999), torch and ONNX
fp32 ones by ~1e-7: `made_with` tells which encoder made a stored vector, and checks the two
candidates are told apart at all."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.gpu import NO_CUDA
from bench.results import RESULTS
from index.records import ModelRecord
from index.store import Store
from retriever.encoding import backends
from retriever.encoding.backends import (
    auto_precision,
    backend_precision,
    check_precision,
    choose,
    mix,
    open_encoder,
    precision_of,
)
from retriever.encoding.encoders import Encoder
from retriever.encoding.pixels import load_pixels
from retriever.encoding.specs import ModelId
from retriever.errors import PrecisionMismatch
from retriever.library.collection import Collection

from .helpers import COLOURS, TINY_ARGS, user_settings, write_photo

TINY_ID = ModelId("retriever-tiny", "none")


@pytest.fixture(scope="module")
def exports_home(tmp_path_factory) -> Path:
    """One export cache for the module: retriever-tiny is exported and quantized once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _auto(_isolated, monkeypatch, exports_home):
    monkeypatch.setenv("XDG_CACHE_HOME", str(exports_home))
    monkeypatch.setenv("RETRIEVER_BACKEND", "auto")  # as a user runs it (conftest: torch)


@pytest.fixture(scope="module")
def encoders(exports_home) -> dict[str, Encoder]:
    """The reference encoders: "fp32" (ONNX fp32, torch's vectors) and "int8"."""
    exports = exports_home / "retriever" / "onnx"
    return {"fp32": open_encoder(TINY_ID, "onnx", exports),
            "int8": open_encoder(TINY_ID, "onnx-int8", exports)}


@pytest.fixture
def media(tmp_path) -> Path:
    for name in ("red", "green"):
        write_photo(tmp_path / "media" / f"{name}.jpg", COLOURS[name])
    return tmp_path / "media"


def stored(db: Path) -> dict[str, np.ndarray]:
    """file name -> its image vector, read straight from the store."""
    store = Store(f"sqlite:///{db / 'store.db'}")
    ids, vectors = store.vectors("image")
    views = store.items(ids.tolist())
    out = {Path(views[i].path).name: v for i, v in zip(ids.tolist(), vectors, strict=True)}
    store.close()
    return out


def recorded(db: Path) -> str | None:
    collection = Collection.open(db)
    model = collection.reads.model()
    collection.close()
    assert model is not None
    return model.precision


def made_with(db: Path, media: Path, encoders: dict) -> set[str]:
    """Which reference encoder ("fp32", "int8") made each stored image vector."""
    found = set()
    for name, vector in stored(db).items():
        pixels = load_pixels(media / name, encoders["fp32"].pixels).data[None]
        ref = {p: e.encode_pixels(pixels)[0] for p, e in encoders.items()}
        assert np.abs(ref["fp32"] - ref["int8"]).max() > 1e-3  # the two can be told apart
        found |= {p for p, v in ref.items() if np.abs(vector - v).max() < 1e-4}
    return found


def index(cli, media: Path, db: Path, *args: str):
    result = cli("index", media, "--db", db, *TINY_ARGS, *args)
    assert result.exit_code == 0, result.output
    return result


def to_before_precisions(db: Path) -> None:
    """Make `db`'s store one made before migration 10: no vector_precision column."""
    with sqlite3.connect(db / "store.db") as conn:
        conn.execute("ALTER TABLE collection_model DROP COLUMN vector_precision")
        conn.execute("DELETE FROM schema_migrations WHERE version = 10")


@pytest.mark.slow  # the module's ONNX export and int8 tower: ~20 s, once
def test_a_new_index_on_a_cpu_is_int8_and_info_says_so(tmp_path, cli, media, encoders):
    db = tmp_path / "idx"
    index(cli, media, db)
    assert recorded(db) == "int8"
    assert made_with(db, media, encoders) == {"int8"}
    shown = json.loads(cli("info", "--db", db, "--json").stdout)["vectors"]
    assert shown == {"precision": "int8", "backend": "onnx-int8", "recorded": True}
    assert "vectors   int8, made by onnx-int8" in cli("info", "--db", db).stdout.splitlines()


@pytest.mark.slow  # the module's ONNX export and int8 tower: ~20 s, once
def test_a_store_made_before_precisions_keeps_fp32_under_auto(tmp_path, cli, media, encoders):
    db = tmp_path / "idx"
    index(cli, media, db, "--backend", "torch")  # the fp32 path of before
    to_before_precisions(db)
    assert "(not recorded: made before)" in cli("info", "--db", db).stdout
    write_photo(media / "blue.jpg", COLOURS["blue"])  # encoded by the upgraded run
    index(cli, media, db, "--backend", "auto")
    assert recorded(db) == "fp32"
    assert set(stored(db)) == {"red.jpg", "green.jpg", "blue.jpg"}
    assert made_with(db, media, encoders) == {"fp32"}
    shown = json.loads(cli("info", "--db", db, "--json").stdout)["vectors"]
    assert shown == {"precision": "fp32", "backend": "onnx or torch", "recorded": True}


@pytest.mark.parametrize(("first", "then", "recorded_as", "made"), [
    ("torch", "onnx-int8", "fp32", "int8"), ("auto", "onnx", "int8", "fp32"),
    ("auto", "torch", "int8", "fp32")])
@pytest.mark.slow  # the module's ONNX export and int8 tower: ~20 s, once
def test_a_backend_of_the_other_precision_is_refused_in_one_line(tmp_path, cli, media, first,
                                                                 then, recorded_as, made):
    db = tmp_path / "idx"
    index(cli, media, db, "--backend", first)
    before = stored(db)
    write_photo(media / "blue.jpg", COLOURS["blue"])
    for command in (("index", media, *TINY_ARGS), ("search", "red", "--no-server")):
        result = cli(*command, "--db", db, "--backend", then)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert f"holds {recorded_as} image vectors and --backend {then} encodes {made}" \
            in lines[0] and "--reindex" in lines[0] and "Traceback" not in result.output
    assert recorded(db) == recorded_as and stored(db).keys() == before.keys()


@pytest.mark.slow  # the module's ONNX export and int8 tower: ~20 s, once
def test_reindex_with_the_other_precision_rebuilds_and_records_it(tmp_path, cli, media,
                                                                  encoders):
    db = tmp_path / "idx"
    index(cli, media, db)
    index(cli, media, db, "--reindex", "--backend", "onnx")
    assert recorded(db) == "fp32" and made_with(db, media, encoders) == {"fp32"}
    index(cli, media, db)  # auto keeps fp32 now
    assert recorded(db) == "fp32"
    index(cli, media, db, "--reindex", "--backend", "onnx-int8")
    assert recorded(db) == "int8" and made_with(db, media, encoders) == {"int8"}
    assert len(stored(db)) == 2


@pytest.mark.slow  # the module's ONNX export and int8 tower: ~20 s, once
@pytest.mark.parametrize("backend", ["auto", "onnx"])
def test_an_image_query_is_encoded_in_the_index_precision(tmp_path, cli, media, encoders,
                                                          backend):
    """A photo finds itself at 1.0: its query vector is made as its stored vector was (an
    fp32 query on int8 vectors scores ~0.9999: `wrong` shows the test would see it)."""
    db = tmp_path / "idx"
    index(cli, media, db, "--backend", backend)
    photo = media / "red.jpg"
    found = cli("search", "--image", photo, "--db", db, "--to", "images", "--json", "-k", "1",
                "--no-server")  # auto: follows the index
    assert found.exit_code == 0, found.output
    top = json.loads(found.stdout.splitlines()[0])
    assert top["path"] == str(photo) and top["score"] > 1 - 1e-6
    pixels = load_pixels(photo, encoders["fp32"].pixels).data[None]
    other = encoders["fp32" if recorded(db) == "int8" else "int8"].encode_pixels(pixels)[0]
    wrong = float(other @ stored(db)["red.jpg"])
    assert wrong < 1 - 1e-5


@pytest.mark.slow  # the module's ONNX export and int8 tower: ~20 s, once
def test_texts_are_encoded_in_fp32_in_both(encoders):
    texts = ["a red disc", "a photo of a dog on a beach"]
    assert np.array_equal(encoders["int8"].encode_texts(texts),
                          encoders["fp32"].encode_texts(texts))


def test_the_decision_rules():
    assert auto_precision("ViT-B-32", gpu=True) == "fp16"
    assert choose("auto", "ViT-B-32", True, None) == "torch"
    assert choose("auto", "ViT-B-32", False, None) == "onnx-int8"
    assert choose("auto", "ViT-B-32", True, "int8") == "onnx-int8"  # the index's, on a GPU too
    assert choose("auto", "ViT-B-32", False, "fp16") == "onnx"  # made on a GPU, kept on a CPU
    assert choose("auto", "ViT-B-32", True, "fp32") == "torch"
    assert choose("onnx", "ViT-B-32", True, None) == "onnx"
    assert backend_precision("torch", True) == "fp16" and backend_precision("auto", True) is None
    assert mix("fp16", "fp32") and mix("int8", "int8") and not mix("int8", "fp16")
    check_precision(Path("idx"), "torch", True, "fp32", "index")  # fp16 with fp32: one kind
    with pytest.raises(PrecisionMismatch) as refused:
        check_precision(Path("idx"), "torch", True, "int8", "search")
    assert (refused.value.recorded, refused.value.made) == ("int8", "fp16")


@pytest.mark.slow  # the module's ONNX export and int8 tower: ~20 s, once
def test_a_family_in_the_fp32_table_stays_fp32_under_auto(tmp_path, cli, media, encoders,
                                                           monkeypatch):
    assert auto_precision("ViT-B-16-SigLIP2", gpu=False) == "int8"
    monkeypatch.setitem(backends.AUTO_FP32, "siglip2", "lost 2 points (a test's number)")
    assert auto_precision("ViT-B-16-SigLIP2", gpu=False) == "fp32"
    monkeypatch.setitem(backends.AUTO_FP32, "clip", "lost 2 points (a test's number)")
    db = tmp_path / "idx"
    index(cli, media, db)  # retriever-tiny is a clip
    assert recorded(db) == "fp32" and made_with(db, media, encoders) == {"fp32"}


@pytest.mark.slow  # the module's ONNX export and int8 tower: ~20 s, once
def test_watch_and_the_ray_actors_build_the_index_precision(tmp_path, cli, media, encoders):
    """`watch` and `serve --watch` open their encoder with `run_encoder`; a Ray actor gets the
    driver's precision (`_ModelCopy`) and refuses to encode in another one."""
    from retriever.ingest.options import IngestOptions
    from retriever.ingest.ray_engine import _EncoderActor, _ModelCopy
    from retriever.ingest.run import IngestRequest, run_encoder

    db = tmp_path / "idx"
    index(cli, media, db)
    collection = Collection.open(db)
    request = IngestRequest(IngestOptions((media,)), db, settings=user_settings())
    assert precision_of(run_encoder(collection, request, None)) == "int8"
    collection.close()
    fingerprint = encoders["int8"].fingerprint
    actor = _EncoderActor(_ModelCopy(TINY_ID, fingerprint, "auto", "int8"))
    assert actor._refusal == "" and precision_of(actor._encoder) == "int8"
    refused = _EncoderActor(_ModelCopy(TINY_ID, fingerprint, "onnx", "int8"))
    assert refused._refusal.endswith(": fp32, not int8")


def test_the_store_refuses_vectors_that_do_not_mix(tmp_path, cli, media):
    db = tmp_path / "idx"
    index(cli, media, db, "--backend", "torch")
    collection = Collection.open(db)
    model = collection.reads.model()
    assert model is not None and model.precision == "fp32"
    with pytest.raises(PrecisionMismatch):
        collection.bind_model(ModelRecord(model.name, model.pretrained, model.dim,
                                          model.fingerprint, "int8"))
    collection.bind_model(ModelRecord(model.name, model.pretrained, model.dim,
                                      model.fingerprint, "fp16"))  # one kind: kept as made
    assert collection.reads.model() == model
    collection.close()


def test_the_gpu_bench_without_cuda_measures_and_writes_nothing():
    """bench/gpu.py runs where a GPU is lent; here (CUDA hidden) it says so in one line."""
    def section() -> str:  # its own part of RESULTS.md (other benches write theirs)
        text = RESULTS.read_text()
        return text[text.find("<!-- gpu:start -->"): text.find("<!-- gpu:end -->")]

    before = section()
    run = subprocess.run([sys.executable, "-m", "bench.gpu"], capture_output=True, text=True,
                         cwd=RESULTS.parent.parent, timeout=300,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [NO_CUDA]
    assert section() == before
