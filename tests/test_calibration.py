"""`retriever duplicates` measures its threshold on the index's model and the user's photos
(retriever.library.calibration): planted copies among distinct photo-like pictures are found,
and the groups reported are pure, under a random-weight and a trained tiny model, with no
threshold given; the threshold is recorded, reused, shown by `info`, and measured again when
it no longer holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.duplicates import group_scores, photo_pictures, plant
from index.kinds import IMAGE
from index.records import FileRecord, ItemRecord
from retriever.encoding.clip_encoder import ClipEncoder
from retriever.ingest.pipeline import IngestOptions, ingest_media
from retriever.library import calibration
from retriever.library.calibration import (
    Measured,
    choose,
    duplicate_threshold,
    measure,
    recorded,
)
from retriever.library.collection import Collection

from .helpers import TINY_ARGS, rows

# The case: 80 distinct photos, 10 of them copied the ways people copy (resized,
# re-encoded, brightened). The kinds and strengths differ from the ones calibration makes.
KINDS = ("resized-50%", "jpeg-q30", "brighter-15%")


def planted_collection(folder: Path) -> list[list[Path]]:
    """80 distinct photo-like pictures, the first 10 with the copies KINDS: each picture's
    group, original first (the 70 others alone)."""
    return plant(folder, photo_pictures(80, seed=3), 10, exact_copies=False, kinds=KINDS)


def found_and_pure(cli, tmp_path: Path, model_args: tuple[str, ...]) -> None:
    folder = tmp_path / "media"
    planted = planted_collection(folder)
    index = tmp_path / "index"
    assert cli("index", folder, "--db", index, *model_args).exit_code == 0
    groups = rows(cli("duplicates", "--db", index, "--json"))
    found = [[c["path"] for c in g["copies"]] for g in groups]
    share_found, share_pure = group_scores(found, planted)
    assert share_found >= 0.9 and share_pure >= 0.9, (share_found, share_pure, found)
    measured = rows(cli("info", "--db", index, "--json"))[0]["duplicate_threshold"]
    assert measured["target_precision"] == 0.95 and measured["images"] == 110
    # no chaining: every copy is within the measured threshold of its group's best copy
    assert all(c["score"] >= measured["threshold"] for g in groups for c in g["copies"])
    shown = cli("info", "--db", index)
    assert f"threshold {measured['threshold']:.4f} for duplicates" in shown.stdout


def test_random_weights_find_planted_copies_and_pure_groups(tmp_path, cli):
    """Distinct pictures sit at 0.98-0.995 under random weights: the fixed 0.99 chained them
    (bench/RESULTS.md); the measured threshold sits above them."""
    found_and_pure(cli, tmp_path, TINY_ARGS)


@pytest.mark.slow
def test_a_trained_model_finds_planted_copies_and_pure_groups(tmp_path, cli, shapes_checkpoint):
    found_and_pure(cli, tmp_path, ("--pretrained", shapes_checkpoint))


def indexed(tmp_path: Path, tiny_encoder: ClipEncoder) -> tuple[Collection, list[list[Path]]]:
    planted = planted_collection(tmp_path / "media")
    collection = Collection.open(tmp_path / "index")
    ingest_media(collection, tiny_encoder, IngestOptions((tmp_path / "media",)))
    return collection, planted


def test_copies_in_the_collection_are_told_from_distinct_photos_by_their_pixels(
        tmp_path, tiny_encoder):
    """Each image's nearest *distinct* photo: copies among its neighbours are recognised
    (and counted), distinct photos are not taken for copies."""
    collection, planted = indexed(tmp_path, tiny_encoder)
    measured = measure(collection, tiny_encoder, size=8, neighbours_of=1000)
    with_a_copy = sum(len(g) for g in planted if len(g) > 1)  # 40 have a copy there
    assert len(measured.distinct) == 110 and len(measured.copies) == 8 * len(calibration.COPIES)
    assert 0.8 * with_a_copy <= measured.with_copy <= with_a_copy
    assert (measured.distinct > 0).all()  # each found a distinct photo among its neighbours


def test_the_threshold_is_the_lowest_cosine_reaching_the_precision():
    rng = np.random.default_rng(0)
    copies = rng.uniform(0.9, 1.0, 400).astype(np.float32)
    distinct = rng.uniform(0.7, 0.95, 100).astype(np.float32)  # overlapping the copies
    prevalence = 21 / 102  # 20 of 100 sampled images have a copy, add-one smoothed

    def share(t: float) -> float:
        kept, false = (copies >= t).mean(), (distinct >= t).mean()
        return prevalence * kept / (prevalence * kept + false)

    for precision in (0.8, 0.95, 0.99):
        threshold, recall = choose(Measured(copies, distinct, with_copy=20), precision)
        assert share(threshold) >= precision
        lower = distinct[distinct < threshold].max()  # the next cosine down that adds a pair
        assert share(float(lower)) < precision
        assert recall == pytest.approx((copies >= threshold).mean())
    # no copy found in the collection: prudent, above every distinct neighbour
    assert choose(Measured(copies, distinct, 0), 0.95)[0] > distinct.max()


@pytest.mark.slow
def test_the_recorded_threshold_is_reused_until_model_precision_or_size_change(
        tmp_path, tiny_encoder):
    collection, _ = indexed(tmp_path, tiny_encoder)
    opened: list[int] = []

    def encoder() -> ClipEncoder:
        opened.append(1)
        return tiny_encoder

    first = duplicate_threshold(collection, encoder)
    assert first is not None and len(opened) == 1
    assert duplicate_threshold(collection.reopen(), encoder) == first and len(opened) == 1
    assert recorded(collection) == first  # what `retriever mcp` uses, measuring nothing
    duplicate_threshold(collection, encoder, recalibrate=True)
    assert len(opened) == 2
    other = duplicate_threshold(collection, encoder, precision=0.8)
    assert len(opened) == 3 and other is not None and other.target_precision == 0.8
    assert duplicate_threshold(collection, encoder, precision=0.8) == other and len(opened) == 3
    grow(collection, 2 * other.images - other.images + 1)  # past GROWTH x the images measured
    again = duplicate_threshold(collection, encoder, precision=0.8)
    assert len(opened) == 4 and again is not None and again.images == 2 * other.images + 1
    assert recorded(collection) is None  # measured for 0.8 only now


def grow(collection: Collection, n: int) -> None:
    """`n` more image rows (files that are gone: calibration samples around them)."""
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(n, collection.reads.model().dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    collection.write_files([(FileRecord(f"/gone/{i}.jpg", IMAGE, f"{i:064x}", 1, 1.0, 8, 8),
                             [ItemRecord(IMAGE, 0, None, v)]) for i, v in enumerate(vectors)])


def test_reindexing_drops_the_threshold_and_the_next_run_measures_again(tmp_path, cli):
    folder = tmp_path / "media"
    planted_collection(folder)
    index = tmp_path / "index"
    assert cli("index", folder, "--db", index, *TINY_ARGS).exit_code == 0
    assert cli("duplicates", "--db", index).exit_code == 0
    assert rows(cli("info", "--db", index, "--json"))[0]["duplicate_threshold"] is not None
    assert cli("index", folder, "--db", index, *TINY_ARGS, "--reindex").exit_code == 0
    assert rows(cli("info", "--db", index, "--json"))[0]["duplicate_threshold"] is None
    given = cli("duplicates", "--db", index, "--threshold", "0.999")
    assert "at cosine 0.999;" in given.stdout  # given: neither measured nor recorded
    assert rows(cli("info", "--db", index, "--json"))[0]["duplicate_threshold"] is None


@pytest.mark.parametrize("value", ["1", "0", "nan", "-0.5"])
def test_a_precision_that_is_not_a_share_is_one_line(tmp_path, cli, value):
    result = cli("duplicates", "--db", tmp_path, "--precision", value)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "--precision" in result.stderr


@pytest.mark.parametrize("how", ["deleted", "linked outside"])
def test_photos_gone_since_indexing_is_one_line_naming_the_fix(tmp_path, cli, how):
    """Calibration reads an image only as indexed: a photo swapped for a link to a file
    outside the indexed folders is not read (no photo is left to measure on)."""
    folder = tmp_path / "media"
    planted_collection(folder)
    index = tmp_path / "index"
    assert cli("index", folder, "--db", index, *TINY_ARGS).exit_code == 0
    outside = plant(tmp_path / "outside", photo_pictures(2, seed=9), 0)[0][0]
    for picture in folder.rglob("*.jpg"):
        picture.unlink()
        if how == "linked outside":
            picture.symlink_to(outside)
    result = cli("duplicates", "--db", index)
    said = [line for line in result.stderr.splitlines() if not line.startswith("note: ")]
    assert result.exit_code == 2 and len(said) == 1 and said[0].startswith("error: ")
    assert "could be read; pass --threshold" in said[0]
    assert cli("duplicates", "--db", index, "--threshold", "0.99").exit_code == 0


def test_the_threshold_is_recorded_and_cleared_on_both_databases(stores):
    from dataclasses import replace

    from index.records import ThresholdRecord
    from index.store import Store, open_store

    store = Store(stores.url())
    assert store.duplicate_threshold() is None
    record = ThresholdRecord(0.9712, 0.95, 64, 110, 0.8125, "f" * 64, 1_765_000_000.5)
    store.set_duplicate_threshold(record)
    store.set_duplicate_threshold(replace(record, threshold=0.98))  # replaces: one row
    assert store.duplicate_threshold() == replace(record, threshold=0.98)
    reader = open_store(stores.url(), reading=True)  # sqlite3 alone, where it can
    assert reader.duplicate_threshold() == replace(record, threshold=0.98)
    reader.close()
    store.clear()  # --reindex: another model's vectors may follow
    assert store.duplicate_threshold() is None
    store.close()
