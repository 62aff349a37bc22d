"""SigLIP, SigLIP 2 and multilingual (XLM-RoBERTa, NLLB) models, tiny and offline
(tests/families.py): their Hugging Face tokenizers twinned without torch
(retriever.encoding.hf_text), torch / ONNX / ONNX-int8 ranking alike, one training step and
an evaluation, the index's model pin, the one-line refusal of a tokenizer that is not cached,
and a French query answered by a multilingual model trained here in English and French."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from retriever.encoding.specs import ModelSpec
from retriever.errors import BadSetting, TextSourceUnavailable
from retriever.training import synthetic

from .families import french_captions, tiny_family
from .helpers import client_for, results, rows

FAMILIES = ("siglip", "siglip2", "multilingual", "nllb")
BACKENDS = ("torch", "onnx", "onnx-int8")
# Texts whose ids the twin must give as open_clip does: both languages, punctuation and case
# (SigLIP's "canonicalize" drops them), HTML entities, whitespace runs, unknown words, a text
# past the context length, an empty one.
TEXTS = ["une photo rouge", "A Red CIRCLE, on the LEFT!", "carré   vert &amp; bleu",
         "zebra_xylophone quokka", "bas " * 40, "", "côté droite: triangle violet"]
# A query's cosine with an image, int8 against fp32 image vectors: unit vectors at cosine
# 0.9998 (retriever's int8 bound on these tiny models) are sqrt(2 * 2e-4) = 0.02 apart, so no
# score moves further (measured: 0.006 to 0.012)
INT8_SCORE_ERROR = 0.02
QUERIES = ["a red circle on the left", "une photo rouge", "carré vert", "bottom side: blue",
           "triangle jaune en haut", "black boxy shape"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("families")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """40 captioned scenes, each captioned in English and in French."""
    folder = tmp_path_factory.mktemp("scenes")
    for path in synthetic.write_captioned_images(folder, 40, seed=3):
        write_bilingual_captions(path)
    return folder


def write_bilingual_captions(image: Path) -> None:
    """Add the French captions of `image`'s scene to its sidecar (read from its English one:
    "a {colour} {shape} on the {place}")."""
    sidecar = image.with_suffix(".txt")
    english = sidecar.read_text().splitlines()
    words = english[0].split()
    scene = synthetic.Scene(words[1], words[2], words[-1])
    sidecar.write_text("\n".join([*english, *french_captions(scene)]) + "\n")


def encoders(spec: ModelSpec, exports: Path) -> dict:
    from retriever.encoding.backends import open_encoder

    return {backend: open_encoder(spec, backend, exports) for backend in BACKENDS}


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_twin_gives_open_clips_ids(family, models, tmp_path):
    from retriever.encoding.clip_encoder import ClipEncoder
    from retriever.encoding.ort_encoder import OrtEncoder

    found = encoders(tiny_family(family, models), tmp_path)
    torch_encoder, ort = found["torch"], found["onnx"]
    assert isinstance(torch_encoder, ClipEncoder) and isinstance(ort, OrtEncoder)
    assert ort.tokenizer_spec is not None and ort.tokenizer_spec["kind"] == "hf"
    expected = torch_encoder.loaded.tokenizer(TEXTS).tolist()
    assert ort.tokenizer(TEXTS) == expected
    assert all(len(row) == ort.context_length for row in expected)
    assert [ort.count_tokens(t) for t in TEXTS] == [torch_encoder.count_tokens(t) for t in TEXTS]


@pytest.mark.parametrize("family", FAMILIES)
def test_backends_rank_alike(family, models, scenes, tmp_path):
    """Top-10 of 40 scenes per query: ONNX fp32 gives torch's order. int8 images move each
    score by less than INT8_SCORE_ERROR, and its top ten differs from torch's only by scenes
    torch scored within twice that error of its tenth (a random model's near ties)."""
    from retriever.training.evaluation import encode_image_files

    found = encoders(tiny_family(family, models), tmp_path)
    images = sorted(scenes.glob("*.jpg"))
    scores = {}
    for backend, encoder in found.items():
        vectors, kept, _ = encode_image_files(encoder, images)
        assert len(kept) == len(images)
        scores[backend] = encoder.encode_texts(QUERIES) @ vectors.T  # (queries, images)
    tops = {b: np.argsort(-s, axis=1, kind="stable")[:, :10] for b, s in scores.items()}
    assert (tops["onnx"] == tops["torch"]).all()
    error = np.abs(scores["onnx-int8"] - scores["torch"]).max()
    assert error < INT8_SCORE_ERROR
    for query, (int8_top, torch_top) in enumerate(zip(tops["onnx-int8"], tops["torch"],
                                                       strict=True)):
        tenth = scores["torch"][query, torch_top[-1]]
        assert scores["torch"][query, int8_top].min() >= tenth - 2 * error, QUERIES[query]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_a_step_and_evaluates(family, models, scenes, tmp_path):
    """One epoch of 32 pairs (two steps) changes the text tower; the checkpoint reloads to the
    trained vectors, on ONNX too, and evaluates on every held-out image."""
    from retriever.demo import demo_config
    from retriever.encoding.clip_encoder import ClipEncoder
    from retriever.encoding.models import load_model
    from retriever.training.evaluation import evaluate_pairs
    from retriever.training.loop import train
    from retriever.training.pairs import load_pairs

    spec = tiny_family(family, models)
    cfg = replace(demo_config(scenes, tmp_path / "model.pt"), model=spec, epochs=1,
                  batch_size=16)
    result = train(cfg, log=lambda line: None)
    assert np.isfinite(result.history[1].train_loss)
    trained = ClipEncoder(load_model(ModelSpec(pretrained=str(result.checkpoint))))
    before = ClipEncoder(load_model(spec)).encode_texts(QUERIES)
    after = trained.encode_texts(QUERIES)
    assert not np.allclose(before, after, atol=1e-4)
    ort = encoders(ModelSpec(pretrained=str(result.checkpoint)), tmp_path / "x")["onnx"]
    assert ort.fingerprint == trained.fingerprint
    assert np.einsum("ij,ij->i", ort.encode_texts(QUERIES), after).min() > 0.9999
    pairs = load_pairs(scenes)[:8]
    metrics = evaluate_pairs(trained, pairs)
    assert metrics["images"] == 8 and metrics["captions"] == 8 * 4


@pytest.mark.parametrize("family", FAMILIES)
def test_index_built_in_torch_is_searched_on_onnx(family, models, scenes, tmp_path, cli):
    """The index pins the model by its fingerprint: an ONNX export of it is the same model,
    and finds what torch found; another family's model is refused in one line."""
    spec = tiny_family(family, models)
    model = ("--model", str(spec.model), "--pretrained", "none")
    db = tmp_path / "db"
    rows(cli("index", scenes, *model, "--backend", "torch", "--db", db, "--json"))
    found = {}
    for backend in ("torch", "onnx"):
        found[backend] = [r["path"] for r in rows(cli(
            "search", "un cercle rouge", "--to", "images", "--json", "--match", "semantic",
            "-k", "10", "--backend", backend, "--db", db))]
    assert len(found["torch"]) == 10 and found["onnx"] == found["torch"]
    other = tiny_family("siglip2" if family == "siglip" else "siglip", models)
    refused = cli("search", "rouge", "--model", str(other.model), "--db", db)
    assert refused.exit_code != 0 and len(refused.stderr.strip().splitlines()) == 1
    assert "differs from" in refused.stderr


@pytest.mark.slow
def test_counting_tokens_beside_encoding_changes_no_vector(models):
    """Readers count a passage's tokens while the encoder encodes (threads): transformers keeps
    truncation as a tokenizer's state and sets it per call, so counting on the encoder's own
    tokenizer (uncut) made a concurrent batch uncut, ragged and refused (3 to 6 of 12 rounds,
    measured). Counting runs on a copy of its own: every batch is the serial one."""
    import threading

    from retriever.encoding.clip_encoder import ClipEncoder
    from retriever.encoding.models import load_model

    encoder = ClipEncoder(load_model(tiny_family("multilingual", models)), batch_size=4)
    texts = ["une photo rouge " * (i % 5 + 1) for i in range(16)]  # some past the context
    serial = encoder.encode_texts(texts)
    stop = threading.Event()
    counted: list[int] = []

    def count() -> None:
        while not stop.is_set():
            counted.append(encoder.count_tokens("carré vert " * 40))

    counter = threading.Thread(target=count)
    counter.start()
    try:
        rounds = [encoder.encode_texts(texts) for _ in range(12)]
    finally:
        stop.set()
        counter.join()
    assert all(np.allclose(vectors, serial, atol=1e-5) for vectors in rounds)
    assert counted and set(counted) == {encoder.count_tokens("carré vert " * 40)}
    assert counted[0] > encoder.context_length  # counted uncut


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty huggingface_hub cache, offline as HF_HUB_OFFLINE=1 makes it."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("model, source", [("ViT-B-16-SigLIP", "timm/ViT-B-16-SigLIP"),
                                           ("ViT-B-16-SigLIP2", "timm/ViT-B-16-SigLIP2"),
                                           ("xlm-roberta-base-ViT-B-32", "xlm-roberta-base")])
def test_uncached_tokenizer_offline_is_one_line(model, source, no_hub, cli, tmp_path):
    (tmp_path / "media").mkdir()
    result = cli("index", tmp_path / "media", "--model", model, "--pretrained", "none",
                 "--db", tmp_path / "db")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()  # the line alone: no note of random weights before it
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output
    assert f"the tokenizer {source} of {model} is not cached and HF_HUB_OFFLINE is set" in lines[0]
    assert f"run `hf download {source}`" in lines[0]


def test_unreachable_hub_is_one_line(monkeypatch, tmp_path):
    """Not offline by setting, but the hub does not answer: the same line, naming the host."""
    from huggingface_hub import constants

    from retriever.encoding import weights
    from retriever.encoding.hf_sources import require_sources

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked: list[tuple[str, int]] = []
    monkeypatch.setattr(weights, "_reachable", lambda host, port: asked.append((host, port)))
    cfg = {"text_cfg": {"hf_tokenizer_name": "org/tok", "hf_model_name": "org/text"}}
    with pytest.raises(TextSourceUnavailable) as caught:
        require_sources(cfg, "m")
    assert (caught.value.source, caught.value.role) == ("org/tok", "tokenizer")
    assert "cannot be reached" in str(caught.value) and asked == [("huggingface.co", 443)]


@pytest.mark.parametrize("name, problem", [
    ("https://evil.example/tok", "is not a local folder nor a hub id"),
    ("hf-hub:org/tok", "is not a local folder nor a hub id"),
    ("a/b/c", "is not a local folder nor a hub id"),
    (7, "is not a local folder nor a hub id")])
def test_config_naming_a_url_is_refused_before_building(name, problem, models, tmp_path):
    from retriever.encoding.architectures import resolve_arch

    cfg = json.loads(Path(tiny_family("siglip", models).model or "").read_text())
    cfg["text_cfg"]["hf_tokenizer_name"] = name
    path = tmp_path / "bad-siglip.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(BadSetting, match=problem):
        resolve_arch(str(path))


def test_missing_tokenizer_folder_is_one_line(models, tmp_path, cli):
    cfg = json.loads(Path(tiny_family("multilingual", models).model or "").read_text())
    cfg["text_cfg"]["hf_tokenizer_name"] = str(tmp_path / "gone")
    path = tmp_path / "gone-xlm-roberta.json"
    path.write_text(json.dumps(cfg))
    (tmp_path / "media").mkdir()
    result = cli("index", tmp_path / "media", "--model", path, "--pretrained", "none",
                 "--db", tmp_path / "db")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the tokenizer folder {tmp_path / 'gone'} of gone-xlm-roberta does not exist: "
        f"name an existing folder in the model config's text_cfg")


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_french_query_finds_red_scenes(models, tmp_path_factory, cli):
    """The tiny multilingual model, trained on scenes captioned in English and French, answers
    "une photo rouge" with red scenes (purple, the nearest colour, may come second) and "une
    photo bleu" with blue ones, in the CLI; the API (on ONNX) answers as the CLI did."""
    from retriever.encoding.backends import open_encoder
    from retriever.library.collection import Collection
    from retriever.training.config import TrainConfig
    from retriever.training.loop import train

    data = tmp_path_factory.mktemp("bilingual")
    for path in synthetic.write_captioned_images(data, 240, seed=0):
        write_bilingual_captions(path)
    out = data.parent / "multilingual.pt"
    train(TrainConfig(data=data, out=out, model=tiny_family("multilingual", models), epochs=30,
                      batch_size=32, val_fraction=0.2, seed=0, lr=3e-3), log=lambda line: None)
    media = tmp_path_factory.mktemp("media")
    colours = {}
    for i, scene in enumerate(random.Random(5).sample(synthetic.ALL_SCENES, 36)):
        path = media / f"scene_{i:02d}.jpg"
        synthetic.draw_scene(scene, 64, random.Random(i)).save(path, quality=95)
        colours[str(path)] = scene.colour
    model = ("--pretrained", str(out))
    rows(cli("index", media, *model, "--json"))
    answers = {}
    for query, colour in (("une photo rouge", "red"), ("une photo bleu", "blue")):
        found = rows(cli("search", query, "--to", "images", "--json", "--match", "semantic",
                         "-k", "3", "--db", media / ".retriever"))
        answers[query] = [r["path"] for r in found]
        top = [colours[r["path"]] for r in found]  # 6 scenes of each of 6 colours
        assert top[0] == colour and top.count(colour) >= 2, (query, top)
    encoder = open_encoder(ModelSpec(pretrained=str(out)), "onnx", tmp_path_factory.mktemp("x"))
    collection = Collection.open(media / ".retriever")
    with client_for(collection, encoder) as client:
        answer = results(client.get("/api/search", params={"text": "une photo rouge", "k": 3,
                                                           "target": "images"}))
    collection.close()
    assert [r["path"] for r in answer] == answers["une photo rouge"]
