"""An index keeps the model it was built with: not only its names, its config and weights.

A model-config JSON or weights file edited in place keeps its path, so the recorded names
still match; the recorded fingerprint (config + weights) does not, and the changed model is
refused before anything is written or searched. A trained model is recorded as its
checkpoint, so the index built right after training (`retriever demo`) is searched with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest

from retriever.demo import DemoConfig, run_demo
from retriever.encoding.checkpoints import model_fingerprint
from retriever.encoding.clip_encoder import ClipEncoder
from retriever.encoding.models import ModelSpec, load_model
from retriever.errors import ModelMismatch
from retriever.ingest.pipeline import IngestOptions, ingest_media
from retriever.library.collection import Collection

from .helpers import COLOURS, write_photo

EDITS = {  # another dimension, and the same dimension with another architecture
    "embed_dim 64 -> 32": lambda cfg: cfg.update(embed_dim=32),
    "one text layer fewer": lambda cfg: cfg["text_cfg"].update(layers=1),
}


@pytest.fixture
def photos(tmp_path) -> Path:
    for name, colour in COLOURS.items():
        write_photo(tmp_path / "photos" / f"{name}.jpg", colour)
    return tmp_path / "photos"


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_a_model_config_edited_in_place_is_refused_before_anything_is_written(
        tmp_path, photos, cli, edit):
    config = tmp_path / "my-model.json"
    cfg = open_clip.get_model_config("retriever-tiny")
    config.write_text(json.dumps(cfg))
    db = tmp_path / "index"
    first = cli("index", photos, "--db", db, "--model", config, "--pretrained", "none")
    assert first.exit_code == 0, first.output
    edit(cfg)
    config.write_text(json.dumps(cfg))
    write_photo(photos / "new.jpg", (9, 9, 9))  # work for the next run, which must not do it
    collection = Collection.open(db)
    before = (collection.store.generation(), collection.store.counts())
    again = cli("index", photos, "--db", db)
    assert again.exit_code == 1
    assert "changed on disk" in again.output and str(config) in again.output
    assert (collection.store.generation(), collection.store.counts()) == before
    searched = cli("search", "a red disc", "--db", db)
    assert searched.exit_code == 1 and "changed on disk" in searched.output


def test_a_store_without_a_fingerprint_records_the_model_it_is_given(tmp_path, photos,
                                                                     tiny_encoder):
    collection = Collection.open(tmp_path / "index")
    ingest_media(collection, tiny_encoder, IngestOptions((photos,)))
    record = collection.reads.model()
    assert record is not None and record.fingerprint == model_fingerprint(tiny_encoder.loaded)
    from dataclasses import replace

    collection.store.set_model(replace(record, fingerprint=None))  # as stores before v4 are
    ingest_media(collection, tiny_encoder, IngestOptions((photos,)))
    assert collection.reads.model() == record


def test_weights_changed_behind_the_same_checkpoint_path_are_refused(tmp_path, photos):
    from retriever.encoding.checkpoints import save_checkpoint

    loaded = load_model(ModelSpec("retriever-tiny", "none"))
    checkpoint = tmp_path / "tuned.pt"
    save_checkpoint(checkpoint, loaded)
    collection = Collection.open(tmp_path / "index")
    ingest_media(collection, ClipEncoder(load_model(ModelSpec(pretrained=str(checkpoint)))),
                IngestOptions((photos,)))
    for parameter in loaded.model.parameters():
        parameter.data.mul_(1.5)
    save_checkpoint(checkpoint, loaded)  # same path, same names, other weights
    changed = ClipEncoder(load_model(ModelSpec(pretrained=str(checkpoint))))
    with pytest.raises(ModelMismatch, match="changed on disk"):
        ingest_media(collection, changed, IngestOptions((photos,)))


def test_the_demo_index_is_searched_with_the_trained_checkpoint(tmp_path, cli, monkeypatch):
    """The README's follow-up to `make demo`: `cd retriever-demo/media && retriever search`.
    It must load the trained weights the index was built with, not the random ones training
    started from: an indexed photo then finds itself at 1.0."""
    result = run_demo(DemoConfig(tmp_path / "demo", images=24, epochs=1), log=lambda _: None)
    checkpoint = tmp_path / "demo" / "retriever-tiny-demo.pt"
    collection = Collection.open(result.media / ".retriever")
    model = collection.reads.model()
    assert model is not None and model.pretrained == str(checkpoint.resolve())
    monkeypatch.chdir(result.media)
    monkeypatch.setenv("RETRIEVER_BACKEND", "auto")  # as a user runs it: the ONNX export
    photo = sorted((result.media / "photos").glob("*.jpg"))[5]
    found = cli("search", "--image", photo, "--to", "images", "--json", "-k", "1")
    assert found.exit_code == 0, found.output
    top = json.loads(found.stdout.splitlines()[0])
    assert top["path"] == str(photo) and top["score"] > 0.999


def broken(loaded, poison: float = float("nan")):
    """`loaded` with every weight of its last image and text layers set to `poison`."""
    import torch

    with torch.no_grad():
        for name, parameter in loaded.model.named_parameters():
            if name.startswith(("visual.proj", "text_projection")):
                parameter.fill_(poison)
    return loaded


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_model_giving_non_finite_vectors_stores_nothing(tmp_path, photos, cli, poison):
    from retriever.encoding.checkpoints import save_checkpoint

    checkpoint = tmp_path / "diverged.pt"
    save_checkpoint(checkpoint, broken(load_model(ModelSpec("retriever-tiny", "none")), poison))
    db = tmp_path / "index"
    result = cli("index", photos, "--db", db, "--pretrained", checkpoint)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and "NaN or inf" in lines[0], result.stderr
    collection = Collection.open(db)
    assert collection.reads.model() is None and collection.reads.counts().files == 0


def test_a_file_the_model_gives_a_non_finite_vector_is_reported_and_skipped(
        tmp_path, photos, tiny_encoder, monkeypatch):
    real = tiny_encoder.encode_pixels

    def nan_for_red(pixels):  # red.jpg is the only image whose mean red channel is high
        vectors = real(pixels)
        vectors[pixels[:, 0].mean(axis=(1, 2)) > pixels[:, 2].mean(axis=(1, 2)) + 0.5] = np.nan
        return vectors

    monkeypatch.setattr(tiny_encoder, "encode_pixels", nan_for_red)
    collection = Collection.open(tmp_path / "index")
    report = ingest_media(collection, tiny_encoder, IngestOptions((photos,)))
    assert [f.path for f in report.failures] == [str(photos / "red.jpg")]
    assert report.images == 2 and collection.store.counts().images == 2
    ids, vectors = collection.store.vectors("image")
    assert np.isfinite(vectors).all()


def test_the_store_refuses_a_non_finite_vector(tmp_path):
    from index.kinds import IMAGE
    from index.records import FileRecord, ItemRecord
    from index.store import Store

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    bad = ItemRecord(IMAGE, 0, None, np.array([np.nan, 1.0], np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        store.write_files([(FileRecord("/x.jpg", IMAGE, "h", 1, 1.0), [bad])])
    assert store.counts().files == 0
