"""`retriever tag`: zero-shot labels by prompt ensembles, stored per label set (migration 5),
filtered on by `search --tag`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import text

from index.kinds import IMAGE
from index.records import FileRecord, ItemRecord, TagRecord
from index.store import Store
from retriever.encoding.prompts import label_vectors
from retriever.library.tags import TagRequest
from retriever.training.synthetic import COLOURS, write_captioned_images

from .helpers import engine_at_version, vec

SHAPE_PROMPTS = ("a {} circle", "a {} square", "a {} triangle")  # averaged: the colour alone


def test_upgrade_from_version_4_adds_tags_that_go_with_their_item(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    engine = engine_at_version(url, 4)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO files (id, path, kind, content_hash, size, mtime, "
                          "indexed_at) VALUES (1, '/m/a.jpg', 'image', 'h', 1, 1.0, 0)"))
        conn.execute(text("INSERT INTO items VALUES (1, 1, 'image', 0, NULL)"))
    engine.dispose()
    store = Store(url)
    store.replace_tags('["cat", "dog"]', [1], [TagRecord(1, "cat", 0.3)])
    assert store.tags([1]) == {1: ["cat"]}
    assert store.item_ids_where(IMAGE, tag="cat").tolist() == [1]
    store.remove_files(["/m/a.jpg"])
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tags")).scalar() == 0


def test_retagging_replaces_only_that_label_set_of_those_items(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.write_files([(FileRecord(f"/m/{i}.jpg", IMAGE, str(i), 1, 1.0), [
        ItemRecord(IMAGE, 0, None, vec(i))]) for i in range(3)])
    store.replace_tags("A", [1, 2, 3], [TagRecord(i, "x", 0.1) for i in (1, 2, 3)])
    store.replace_tags("B", [1, 2, 3], [TagRecord(1, "y", 0.1)])
    store.replace_tags("A", [1, 2], [TagRecord(2, "z", 0.1)])  # item 3 was not re-tagged
    assert store.tags([1, 2, 3]) == {1: ["y"], 2: ["z"], 3: ["x"]}


def test_a_label_vector_is_its_prompts_mean_renormalised(tiny_encoder):
    got = label_vectors(tiny_encoder, ["red", "blue"], SHAPE_PROMPTS)
    prompts = tiny_encoder.encode_texts([t.format("blue") for t in SHAPE_PROMPTS])
    want = prompts.mean(0) / np.linalg.norm(prompts.mean(0))
    np.testing.assert_allclose(got[1], want, atol=1e-6)
    assert not np.allclose(got[0], got[1], atol=1e-3)


@pytest.mark.parametrize("args, flag", [(["red", "--prompt", "no slot"], "--prompt"),
                                        (["red", "red"], "LABEL")])
def test_bad_labels_and_prompts_are_one_line(tmp_path, cli, args, flag):
    result = cli("tag", *args, "--db", tmp_path)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and flag in result.stderr


def truth(folder) -> dict[str, str]:
    """path -> the colour its caption names."""
    return {str(p.with_suffix(".jpg")): p.read_text().split()[1] for p in folder.glob("*.txt")}


@pytest.fixture
def tagged_index(tmp_path, cli, shapes_checkpoint):
    photos = tmp_path / "photos"
    write_captioned_images(photos, 72, seed=7)  # every scene once, drawn anew
    db = tmp_path / "index"
    done = cli("index", photos, "--db", db, "--pretrained", shapes_checkpoint)
    assert done.exit_code == 0, done.output
    prompts = [arg for p in SHAPE_PROMPTS for arg in ("--prompt", p)]
    result = cli("tag", *COLOURS, *prompts, "--db", db, "--json")
    assert result.exit_code == 0, result.output
    return db, truth(photos), [json.loads(line) for line in result.stdout.splitlines()], prompts


def test_tags_name_the_colours_well_above_chance_and_search_filters_by_them(tagged_index, cli):
    db, colours, rows, _ = tagged_index
    assert len(rows) == 72 and all(len(r["labels"]) == 1 for r in rows)
    accuracy = np.mean([r["labels"][0] == colours[r["path"]] for r in rows])
    assert accuracy >= 0.8, accuracy  # chance: 1/6 (measured: 1.0)
    red = {r["path"] for r in rows if r["labels"] == ["red"]}
    found = cli("search", "a shape", "--db", db, "--tag", "red", "-k", "100", "--json",
                "--no-server")
    assert found.exit_code == 0, found.output
    results = [json.loads(line) for line in found.stdout.splitlines()]
    assert {r["path"] for r in results} == red and all(r["tags"] == ["red"] for r in results)


def test_tagging_again_with_the_same_labels_replaces_them(tagged_index, cli):
    db, _, _, prompts = tagged_index
    other = cli("tag", "red", "blue", *prompts, "--db", db, "--json")  # another label set
    again = cli("tag", *COLOURS, *prompts, "--db", db, "--min-score", "2")  # nothing scores 2
    assert other.exit_code == again.exit_code == 0
    red = {json.loads(line)["path"] for line in other.stdout.splitlines()
           if json.loads(line)["labels"] == ["red"]}
    found = cli("search", "a shape", "--db", db, "--tag", "red", "-k", "100", "--json",
                "--no-server")
    assert {json.loads(line)["path"] for line in found.stdout.splitlines()} == red
    none = cli("search", "a shape", "--db", db, "--tag", "green", "--json", "--no-server")
    assert none.exit_code == 2 and none.stdout.strip() == ""  # no image is tagged green now
    assert "--tag green: no image is tagged so (known tags: blue, red)" in none.stderr


def test_a_tag_request_names_its_label_set_by_the_sorted_labels():
    assert TagRequest(("dog", "cat")).label_set == TagRequest(("cat", "dog")).label_set
