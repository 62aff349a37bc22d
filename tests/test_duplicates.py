"""`retriever duplicates`: near-identical images grouped from the stored vectors by FAISS range
search, same bytes marked, best copy first, nothing deleted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from bench.duplicates import pair_scores, photo_pictures, plant
from index import neighbours
from index.kinds import IMAGE
from index.neighbours import close_pairs
from index.records import FileRecord, ItemRecord, ModelRecord
from retriever.library.collection import Collection
from retriever.library.duplicates import DEFAULT_THRESHOLD

from .helpers import write_photo

DIM = 64


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def near(v: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly `cosine` from unit vector `v`."""
    other = rng.normal(size=v.shape)
    other = unit(other - (other @ v) * v)
    return unit(cosine * v + np.sqrt(1 - cosine**2) * other)


def brute_force(vectors: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    sims = vectors @ vectors.T
    i, j = np.nonzero(np.triu(sims >= threshold, k=1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


@pytest.fixture
def clustered() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(40, DIM)))
    spread = rng.uniform(0.002, 0.05, size=(200, 1))  # pairs at cosines from ~0.9 to 1
    return unit(np.repeat(centres, 5, axis=0) + spread * rng.normal(size=(200, DIM)))


@pytest.mark.parametrize("threshold", [0.9, 0.95, 0.99])
def test_range_search_finds_exactly_the_pairs_numpy_finds(clustered, threshold, monkeypatch):
    monkeypatch.setattr(neighbours, "BATCH", 64)  # several batches
    rows, cols, scores = close_pairs(clustered, threshold, gpu=False)
    want = brute_force(clustered, threshold)
    assert len(want) > 20  # the clusters make pairs at every threshold tested
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == want
    np.testing.assert_allclose(scores, (clustered[rows] * clustered[cols]).sum(1), atol=1e-5)


def test_the_gpu_path_knn_with_growing_k_equals_range_search(clustered, monkeypatch):
    """The GPU path (k-NN, k doubling until each row's list ends below the threshold) run on
    CPU with a tiny starting k: the same pairs as range search."""
    monkeypatch.setattr(neighbours, "KNN_START", 2)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: index)
    for threshold in (0.8, 0.95):
        gpu = close_pairs(clustered, threshold, gpu=True)
        cpu = close_pairs(clustered, threshold, gpu=False)
        np.testing.assert_array_equal(gpu[0], cpu[0])
        np.testing.assert_array_equal(gpu[1], cpu[1])


def known_collection(root: Path) -> tuple[Path, list[list[str]]]:
    """An index whose vectors are constructed: 8 planted groups (an original, 2 copies at cosine
    0.995-0.999 and one with the same bytes and vector) among 40 distinct images, 10 of them
    at cosine 0.97-0.98 to an original (close, but below the default threshold)."""
    rng = np.random.default_rng(1)
    db = root / "index"
    collection = Collection.open(db)
    collection.bind_model(ModelRecord("retriever-tiny", "none", DIM))
    batch, planted = [], []

    def add(path: Path, vector: np.ndarray, size: tuple[int, int], same_as: Path | None = None):
        if same_as is None:
            write_photo(path, tuple(int(c) for c in rng.integers(0, 255, 3)), size)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(same_as.read_bytes())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        record = FileRecord(str(path), IMAGE, digest, path.stat().st_size, 1.0, *size)
        batch.append((record, [ItemRecord(IMAGE, 0, None, vector)]))

    originals = unit(rng.normal(size=(40, DIM)))
    for i, v in enumerate(originals):
        add(root / "photos" / f"p{i:02d}.jpg", v, (160, 120))
        if i < 8:
            group = [root / "photos" / f"p{i:02d}.jpg", root / "small" / f"p{i:02d}.jpg",
                     root / "recoded" / f"p{i:02d}.jpg", root / "copies" / f"p{i:02d}.jpg"]
            add(group[1], near(v, rng.uniform(0.995, 0.999), rng), (80, 60))
            add(group[2], near(v, rng.uniform(0.995, 0.999), rng), (160, 120))
            add(group[3], v, (160, 120), same_as=group[0])
            planted.append([str(p) for p in group])
        elif i < 18:
            add(root / "similar" / f"p{i:02d}.jpg", near(v, rng.uniform(0.97, 0.98), rng),
                (160, 120))
    collection.write_files(batch)
    collection.close()
    return db, planted


def test_planted_groups_are_found_at_the_threshold_given(tmp_path, cli):
    """The vectors are constructed, not the model's: the threshold is given (a measured one
    is tests/test_calibration.py's)."""
    db, planted = known_collection(tmp_path)
    assert DEFAULT_THRESHOLD < 0.995  # what the planted copies are built to clear
    before = sorted(p for p in tmp_path.rglob("*.jpg"))
    result = cli("duplicates", "--db", db, "--json", "--threshold", DEFAULT_THRESHOLD)
    assert result.exit_code == 0, result.output
    groups = [json.loads(line)["copies"] for line in result.stdout.splitlines()]
    precision, recall = pair_scores([[c["path"] for c in g] for g in groups],
                                    [[Path(p) for p in g] for g in planted])
    assert precision == recall == 1.0
    for g in groups:  # best first: most pixels, then the largest file, then the path
        assert g[0]["score"] == 1.0 and (g[0]["width"], g[0]["height"]) == (160, 120)
        ranks = [(-c["width"] * c["height"], -c["size"], c["path"]) for c in g]
        assert ranks == sorted(ranks)
        exact = [c for c in g if c["same_bytes_as"]]
        name = Path(g[0]["path"]).name
        assert len(exact) == 1 and {exact[0]["path"], exact[0]["same_bytes_as"]} == {
            str(tmp_path / "photos" / name), str(tmp_path / "copies" / name)}
        referent = next(c for c in g if c["path"] == exact[0]["same_bytes_as"])
        assert exact[0]["score"] == pytest.approx(referent["score"], abs=1e-6)  # one vector
    assert sorted(p for p in tmp_path.rglob("*.jpg")) == before  # nothing deleted


def test_in_restricts_to_a_folder_and_html_shows_groups_side_by_side(tmp_path, cli):
    db, planted = known_collection(tmp_path)
    page = tmp_path / "out" / "dups.html"
    given = ("--threshold", DEFAULT_THRESHOLD)  # constructed vectors: no measuring
    result = cli("duplicates", "--db", db, "--in", tmp_path / "photos", "--html", page, *given)
    assert result.exit_code == 0, result.output
    assert "0 groups" in result.stdout  # each planted group has one member under photos/
    both = cli("duplicates", "--db", db, "--in", tmp_path, "--html", page, *given)
    assert both.exit_code == 0 and "8 groups, 24 copies beyond the best" in both.stdout
    html = page.read_text()
    assert html.count('class="group"') == 8 and html.count("data:image/jpeg;base64,") == 32
    assert "same bytes as" in html


def test_a_byte_identical_copy_is_grouped_even_above_any_cosine(tmp_path, cli):
    db, planted = known_collection(tmp_path)
    result = cli("duplicates", "--db", db, "--json", "--threshold", "1")
    groups = [json.loads(line)["copies"] for line in result.stdout.splitlines()]
    assert sorted(sorted(c["path"] for c in g) for g in groups) == sorted(
        sorted([g[0], g[3]]) for g in planted)


@pytest.mark.parametrize("value", ["1.5", "nan"])
def test_a_threshold_that_is_not_a_cosine_is_one_line(tmp_path, cli, value):
    result = cli("duplicates", "--db", tmp_path, "--threshold", value)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "--threshold" in result.stderr


def test_the_trained_tiny_model_finds_planted_copies_among_distinct_photos(
        tmp_path, cli, shapes_checkpoint):
    """End to end: 72 distinct photo-like pictures, 12 of them resized, re-encoded at JPEG
    quality 30 and copied byte for byte, indexed with a model trained here on the shape
    scenes. (Crops and brightness changes move this model's vectors further than the default
    allows, and it puts some distinct shape scenes closer: bench/RESULTS.md.)"""
    folder = tmp_path / "media"
    planted = plant(folder, photo_pictures(72, seed=5), 12, kinds=("resized-50%", "jpeg-q30"))
    indexed = cli("index", folder, "--db", tmp_path / "index", "--pretrained", shapes_checkpoint)
    assert indexed.exit_code == 0, indexed.output
    result = cli("duplicates", "--db", tmp_path / "index", "--json")
    assert result.exit_code == 0, result.output
    found = [[c["path"] for c in json.loads(line)["copies"]] for line in result.stdout.splitlines()]
    precision, recall = pair_scores(found, planted)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall, found)


def test_groups_never_chain_every_copy_is_within_the_threshold_of_its_best(tmp_path, cli):
    """Five images on an arc, each at cosine 0.995 from the next (so 0.980 from the one after):
    union-find over pairs >= 0.99 made them one group. Now the best copy (the largest, a)
    takes only what is within 0.99 of it (b); the next free image (c) leads the next group."""
    collection = Collection.open(tmp_path / "index")
    collection.bind_model(ModelRecord("retriever-tiny", "none", DIM))
    step = np.arccos(0.995)
    batch = []
    for n, name in enumerate("abcde"):
        vector = np.zeros(DIM, np.float32)
        vector[:2] = np.cos(n * step), np.sin(n * step)
        size = (160, 120) if name == "a" else (80, 60)
        path = write_photo(tmp_path / "photos" / f"{name}.jpg", (40 * n, 90, 200), size)
        record = FileRecord(str(path), IMAGE, hashlib.sha256(path.read_bytes()).hexdigest(),
                            path.stat().st_size, 1.0, *size)
        batch.append((record, [ItemRecord(IMAGE, 0, None, vector)]))
    collection.write_files(batch)
    collection.close()
    result = cli("duplicates", "--db", tmp_path / "index", "--json", "--threshold", "0.99")
    groups = [[(Path(c["path"]).stem, c["score"]) for c in json.loads(line)["copies"]]
              for line in result.stdout.splitlines()]
    assert [[name for name, _ in g] for g in groups] == [["a", "b"], ["c", "d"]]
    assert all(score >= 0.99 for g in groups for _, score in g)
    unchained = cli("duplicates", "--db", tmp_path / "index", "--json", "--threshold", "0.97")
    assert [len(json.loads(line)["copies"]) for line in unchained.stdout.splitlines()] == [3, 2]
