"""The image-tower families (MobileCLIP, MobileCLIP 2, EVA) and a CLIP at 48 px: each tiny model
(tests/families.py) indexes and searches on torch, ONNX and ONNX int8 with the same top 10,
trains a step, is evaluated, keeps its own preprocessing, and is pinned by its fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image

from retriever.encoding.backends import export_dir, open_encoder
from retriever.encoding.clip_encoder import ClipEncoder
from retriever.encoding.families import FAMILIES, family_of
from retriever.encoding.models import load_model
from retriever.encoding.ort_encoder import OrtEncoder
from retriever.encoding.weights import known_tags
from retriever.training.synthetic import write_captioned_images

from .families import TINY_FAMILIES, tiny_family
from .helpers import COLOURS, write_photo

IMAGE_FAMILIES = ("clip", "mobileclip", "mobileclip2", "eva")
QUERY = "a red disc"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("families")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """14 photos: discs of seven colours at two sizes and shapes (landscape, portrait)."""
    root = tmp_path_factory.mktemp("photos")
    colours = [*COLOURS.values(), (240, 220, 40), (20, 20, 20), (200, 90, 220), (250, 140, 30)]
    for i, colour in enumerate(colours):
        write_photo(root / f"wide{i}.jpg", colour, (160, 120))
        write_photo(root / f"tall{i}.jpg", colour, (150, 300))
    return root


def test_family_of_names_each_published_architecture_and_tiny_config():
    assert [family_of(n) for n in ("MobileCLIP-S1", "MobileCLIP-B", "MobileCLIP2-S0",
                                   "MobileCLIP2-L-14", "EVA02-B-16", "EVA01-g-14-plus",
                                   "ViT-B-32", "RN50", "ViT-L-14-336")] == [
        "mobileclip", "mobileclip", "mobileclip2", "mobileclip2", "eva", "eva", "clip", "clip",
        "clip"]
    assert {family_of(stem) for stem, _ in TINY_FAMILIES.values()} >= set(IMAGE_FAMILIES)
    assert {family_of(arch) for arch in known_tags()} == set(FAMILIES)  # each one is published


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_the_config_files_preprocessing_is_the_encoders(family, models):
    """Size from the model; mean/std, interpolation and resize mode from the config file's
    preprocess_cfg: retriever's numpy pixels equal open_clip's own transform of them."""
    spec = tiny_family(family, models)
    loaded = load_model(spec)
    encoder = ClipEncoder(loaded)
    wanted = json.loads(Path(str(spec.model)).read_text())
    size = wanted["model_cfg"]["vision_cfg"]["image_size"]
    pp = wanted["preprocess_cfg"]
    assert (encoder.pixels.size, list(encoder.pixels.mean), list(encoder.pixels.std),
            encoder.pixels.interpolation, encoder.pixels.resize_mode) == (
        size, pp["mean"], pp["std"], pp["interpolation"], pp["resize_mode"])
    im = Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 300, 3), np.uint8))
    ours, theirs = encoder.pixels.preprocess(im), loaded.preprocess(im).numpy()
    assert ours.shape == theirs.shape == (3, size, size)
    assert np.abs(ours - theirs).max() < 1e-4 / min(pp["std"])


@pytest.mark.slow
@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_index_and_search_agree_on_torch_onnx_and_int8(family, models, photos, cli, tmp_path):
    spec = tiny_family(family, models)
    found = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        db = tmp_path / backend
        indexed = cli("index", photos, "--db", db, "--model", spec.model, "--pretrained",
                      spec.pretrained, "--backend", backend)
        assert indexed.exit_code == 0, indexed.output
        result = cli("search", QUERY, "--db", db, "--json", "-k", "14", "--no-server",
                     "--backend", backend)
        assert result.exit_code == 0, result.output
        found[backend] = [json.loads(line) for line in result.stdout.splitlines()]
    torch_, onnx, int8 = (found[b] for b in ("torch", "onnx", "onnx-int8"))
    assert len(torch_) == len(onnx) == len(int8) == 14
    assert [r["path"] for r in onnx] == [r["path"] for r in torch_]
    assert np.allclose([r["score"] for r in onnx], [r["score"] for r in torch_], atol=1e-4)
    # int8 moves each score by ~1e-3 (under 0.01): its top 10 are fp32's but where two photos
    # score within that of each other at the cut (random weights score photos alike)
    fp32 = {r["path"]: r["score"] for r in torch_}
    assert max(abs(r["score"] - fp32[r["path"]]) for r in int8) < 0.01
    cut = torch_[9]["score"]
    assert all(fp32[r["path"]] > cut - 0.02 for r in int8[:10])
    assert len({r["path"] for r in int8[:10]} & {r["path"] for r in torch_[:10]}) >= 8


@pytest.mark.slow
@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_the_export_keeps_the_models_pixels_and_tokens(family, models, tmp_path):
    spec = tiny_family(family, models)
    torch_ = open_encoder(spec, "torch", tmp_path)
    onnx = open_encoder(spec, "onnx", tmp_path)
    assert isinstance(onnx, OrtEncoder) and isinstance(torch_, ClipEncoder)
    assert onnx.pixels == torch_.pixels and onnx.fingerprint == torch_.fingerprint
    assert export_dir(tmp_path, torch_.model_id) == onnx.directory
    texts = [QUERY, "a photo of a yellow square at the top", "word " * 40]
    assert [onnx.count_tokens(t) for t in texts] == [torch_.count_tokens(t) for t in texts]
    cos = (onnx.encode_texts(texts) * torch_.encode_texts(texts)).sum(1)
    assert cos.min() > 0.9999


@pytest.mark.slow
@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_one_training_step_then_evaluation(family, models, cli, tmp_path):
    """8 captioned scenes, batch 8, one epoch: one step. The checkpoint keeps the family's
    preprocessing and its changed weights; `eval` scores it (8 images: every text finds its
    image within 10)."""
    spec = tiny_family(family, models)
    data = tmp_path / "scenes"
    write_captioned_images(data, 8, seed=2, size=96)
    out = tmp_path / "tuned.pt"
    trained = cli("train", data, "--out", out, "--model", spec.model, "--pretrained",
                  spec.pretrained, "--epochs", "1", "--batch-size", "8", "--val-fraction", "0")
    assert trained.exit_code == 0, trained.output
    before, after = load_model(spec), load_model(type(spec)(None, str(out)))
    assert open_clip.get_model_preprocess_cfg(after.model) == \
        open_clip.get_model_preprocess_cfg(before.model)
    changed = [k for k, v in after.model.state_dict().items()
               if v.dtype.is_floating_point and not np.allclose(
                   v.numpy(), before.model.state_dict()[k].numpy())]
    assert any(k.startswith("visual.") for k in changed)  # the image tower learned
    assert any(not k.startswith(("visual.", "logit_")) for k in changed)  # the text tower too
    scored = cli("eval", data, "--pretrained", out, "--json")
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(scored.stdout)
    assert metrics["text_to_image"]["R@10"] == 1.0
    assert 1 <= metrics["text_to_image"]["median_rank"] <= 8


def test_a_preprocess_cfg_edited_in_place_is_refused(models, photos, cli, tmp_path):
    """The config file's preprocessing is part of the model's fingerprint: the same file with
    another mean makes other vectors, and the index refuses it."""
    spec = tiny_family("clip", models)
    config = tmp_path / "my-clip.json"
    cfg = json.loads(Path(str(spec.model)).read_text())
    config.write_text(json.dumps(cfg))
    db = tmp_path / "index"
    first = cli("index", photos, "--db", db, "--model", config, "--pretrained", "none")
    assert first.exit_code == 0, first.output
    cfg["preprocess_cfg"]["mean"] = [0.4, 0.5, 0.6]
    config.write_text(json.dumps(cfg))
    again = cli("search", QUERY, "--db", db, "--no-server")
    assert again.exit_code == 1 and "changed on disk" in again.output


@pytest.mark.parametrize("bad", [
    {"mean": [0.5, 0.5]}, {"std": [0.5, 0.0, 0.5]}, {"mean": "grey"},
    {"interpolation": "lanczos"}, {"resize_mode": "longest"}, [1, 2, 3]])
def test_an_unusable_preprocess_cfg_is_one_line_naming_the_file(bad, models, cli, tmp_path,
                                                                photos):
    cfg = json.loads(Path(str(tiny_family("clip", models).model)).read_text())
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({**cfg, "preprocess_cfg": bad if isinstance(bad, list)
                                  else {**cfg["preprocess_cfg"], **bad}}))
    result = cli("index", photos, "--db", tmp_path / "db", "--model", config,
                 "--pretrained", "none")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(errors) == 1 and f"--model {config}: preprocess_cfg" in errors[0]
    assert not (tmp_path / "db").exists()
