"""Model loading through the production path: config files, checkpoints, tags, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from retriever.encoding.checkpoints import save_checkpoint
from retriever.encoding.clip_encoder import ClipEncoder
from retriever.encoding.models import ModelSpec, load_model
from retriever.errors import CheckpointError, ModelMismatch, ModelNotFound, WeightsUnavailable

from .helpers import TINY

TEXTS = ["a red disc", "blue sky over a green field", "notes"]
ROOT = Path(__file__).resolve().parents[1]


def images():
    return [Image.new("RGB", (40, 30), c) for c in [(200, 0, 0), (0, 0, 200)]]


def embeddings(encoder):
    return encoder.encode_texts(TEXTS), encoder.encode_images(images())


def test_embeddings_are_unit_norm_and_shaped(tiny_encoder):
    texts, imgs = embeddings(tiny_encoder)
    assert texts.shape == (3, 64) and imgs.shape == (2, 64) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.vstack([texts, imgs]), axis=1), 1.0, atol=1e-5)


def test_random_weights_are_reproducible_across_loads(tiny_encoder):
    again = ClipEncoder(load_model(TINY))
    for a, b in zip(embeddings(tiny_encoder), embeddings(again), strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_loads_through_pretrained_path_with_identical_embeddings(tmp_path):
    loaded = load_model(TINY)
    with torch.no_grad():  # make the weights differ from the seeded random init
        for p in loaded.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "tuned.pt"
    save_checkpoint(path, loaded, {"note": "test"})
    reloaded = load_model(ModelSpec(pretrained=str(path)))  # no --model: self-describing
    assert reloaded.model_id.pretrained == str(path) and reloaded.extra == {"note": "test"}
    for a, b in zip(embeddings(ClipEncoder(loaded)), embeddings(ClipEncoder(reloaded)),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(embeddings(ClipEncoder(load_model(TINY)))[0], embeddings(
        ClipEncoder(reloaded))[0], atol=1e-3)


def test_checkpoint_with_another_model_is_refused(tmp_path):
    path = tmp_path / "tuned.pt"
    save_checkpoint(path, load_model(TINY))
    with pytest.raises(ModelMismatch, match="drop --model"):
        load_model(ModelSpec("RN50", str(path)))


def test_model_config_json_path_builds_random_weights_by_default(tmp_path):
    cfg = open_clip.get_model_config("retriever-tiny")
    cfg["embed_dim"] = 48
    path = tmp_path / "my-arch.json"
    path.write_text(json.dumps(cfg))
    loaded = load_model(ModelSpec(str(path)))
    assert loaded.dim == 48 and loaded.model_id.pretrained == "none"
    assert loaded.model_id.name == str(path.resolve())
    assert ClipEncoder(loaded).encode_texts(["x"]).shape == (1, 48)


def test_plain_open_clip_state_dict_needs_its_model(tmp_path):
    loaded = load_model(TINY)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(loaded.model.state_dict(), path)
    again = load_model(ModelSpec("retriever-tiny", str(path)))
    np.testing.assert_allclose(*[ClipEncoder(m).encode_texts(TEXTS) for m in (loaded, again)],
                               atol=1e-6)
    with pytest.raises(CheckpointError, match="pass the matching --model"):
        load_model(ModelSpec("RN50", str(path)))


def test_weights_only_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "hook": os.system}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(ModelSpec("retriever-tiny", str(path)))


@pytest.mark.parametrize(
    ("spec", "error", "words"),
    [
        (ModelSpec("no-such-arch"), ModelNotFound, "unknown model"),
        (ModelSpec("retriever-tiny", "missing/ckpt.pt"), CheckpointError, "does not exist"),
        (ModelSpec("ViT-B-32", "no_such_tag"), WeightsUnavailable, "known: openai"),
        (ModelSpec(str(ROOT / "nope.json")), ModelNotFound, "does not exist"),
    ],
)
def test_bad_model_arguments_name_the_fix(spec, error, words):
    with pytest.raises(error, match=words):
        load_model(spec)


OFFLINE_PROBE = """
import runpy, sys
sys.argv = ["retriever", *sys.argv[1:]]
try:
    runpy.run_path(sys.argv.pop(1), run_name="__main__")
finally:
    print("heavy:", sorted(m for m in ("torch", "open_clip") if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("pretrained", [(), ("--pretrained", "laion2b_s34b_b79k"),
                                        ("--pretrained", "openai")])
def test_offline_pretrained_tag_fails_before_torch_with_one_line(tmp_path, pretrained):
    """The real CLI, a real process, an empty weights cache and an unreachable hub: the
    default model, and explicit tags, fail with one line before torch or open_clip is
    imported (their import is most of the seconds such a failure took)."""
    (tmp_path / "photos").mkdir()
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9",
           "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "RETRIEVER_BACKEND": "auto"}
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_PROBE, str(ROOT / "cli.py"), "index",
         str(tmp_path / "photos"), *pretrained],
        capture_output=True, text=True, env=env, timeout=60,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines[-1] == "heavy: []", proc.stderr
    assert len(lines) == 2 and "not cached" in lines[0] and "--pretrained /path/to/" in lines[0]


def test_the_shipped_tag_registry_is_open_clips():
    """pretrained_tags.json (read without importing torch) equals the installed registry:
    `python -m retriever.encoding.weights` writes it again after an open_clip upgrade."""
    from retriever.encoding.weights import known_tags, registry

    assert known_tags() == registry()


def test_batching_counts_forward_passes():
    encoder = ClipEncoder(load_model(TINY), batch_size=8)
    encoder.encode_texts([f"text {i}" for i in range(100)])
    assert encoder.batches_run == 13  # ceil(100 / 8)
