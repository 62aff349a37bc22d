"""The real CLI, end to end, on real JPEGs and text files with a tiny random-weight model."""

from __future__ import annotations

import json

import pytest

from cli import app

from .helpers import TINY_ARGS, rows


@pytest.fixture
def indexed(cli, media_folder):
    result = cli("index", media_folder, *TINY_ARGS)
    assert result.exit_code == 0, result.output
    return media_folder, result


def test_index_reports_counts_and_skips_the_corrupt_image(indexed, cli):
    folder, result = indexed
    assert "encoded 3 images and 3 text files" in result.stdout
    assert "failed 1" in result.stdout
    assert f"skipped {folder / 'photos' / 'broken.jpg'}: not a readable image" in result.stderr
    info = json.loads(cli("info", "--db", folder / ".retriever", "--json").stdout)
    assert info["images"] == 3 and info["files"] == 6  # 3 photos + 3 text files
    assert info["texts"] >= 3  # trip.md needs several passages
    assert {key: info["model"][key] for key in ("name", "pretrained", "dim")} == {
        "name": "retriever-tiny", "pretrained": "none", "dim": 64}


def test_store_rows_equal_saved_index_vectors(indexed):
    """Read the FAISS files as written (opening a Collection would rebuild a stale one)."""
    from index.kinds import IMAGE, TEXT
    from index.saved import VECTOR_FILES
    from index.store import Store
    from index.vectors import VectorIndex

    folder, _ = indexed
    store = Store(f"sqlite:///{folder / '.retriever' / 'store.db'}")
    for kind in (IMAGE, TEXT):
        stored_ids, stored_vectors = store.vectors(kind)
        index = VectorIndex.load(folder / ".retriever" / VECTOR_FILES[kind])
        assert len(index) == len(stored_ids) > 0
        _, found = index.search(stored_vectors[:1], len(stored_ids))
        assert sorted(found[0].tolist()) == sorted(stored_ids.tolist())


def test_text_query_returns_image_rows(indexed, cli):
    folder, _ = indexed
    found = rows(cli("search", "a red disc", "--to", "images", "--json", "--match", "semantic",
                     "--db", folder / ".retriever"))  # by cosine alone: scores in order
    assert len(found) == 3 and {r["kind"] for r in found} == {"image"}
    assert {r["path"] for r in found} == {str(folder / "photos" / f"{c}.jpg")
                                          for c in ("red", "green", "blue")}
    assert [r["score"] for r in found] == sorted((r["score"] for r in found), reverse=True)
    red = next(r for r in found if r["path"].endswith("red.jpg"))
    assert red["caption"] == "a red disc on grey"


def test_image_query_returns_text_rows_with_passages(indexed, cli):
    folder, _ = indexed
    found = rows(cli("search", "--image", folder / "photos" / "green.jpg", "--to", "texts",
                     "-k", "4", "--json", "--db", folder / ".retriever"))
    assert len(found) == 4 and {r["found_in"] for r in found} == {"texts"}
    assert all(r["passage"] for r in found if r["kind"] == "text")
    # red.txt is red.jpg's sidecar caption: a hit on it is the photo, never the .txt
    assert not any(r["path"].endswith("red.txt") for r in found)
    assert all(r["caption"] == "a red disc on grey" for r in found if r["kind"] == "image")


def test_search_finds_the_index_by_walking_up(indexed, cli, monkeypatch):
    folder, _ = indexed
    monkeypatch.chdir(folder / "notes")
    paths = cli("search", "paint", "--paths-only", "-k", "2").stdout.split()
    assert len(paths) == 2 and all(p.startswith(str(folder)) for p in paths)


def test_all_interleaves_the_two_sections_by_rank(indexed, cli):
    folder, _ = indexed
    found = rows(cli("search", "red", "--to", "all", "-k", "50", "--json", "--match",
                     "semantic", "--db", folder / ".retriever"))  # ranked by cosine alone
    assert [r["found_in"] for r in found[:4]] in (["images", "texts"] * 2,
                                                  ["texts", "images"] * 2)
    for section in ("images", "texts"):
        scores = [r["score"] for r in found if r["found_in"] == section]
        assert scores == sorted(scores, reverse=True) and scores
    assert len({r["id"] for r in found}) == len(found)  # a captioned photo appears once


def test_in_restricts_to_a_subfolder(indexed, cli):
    folder, _ = indexed
    found = rows(cli("search", "red", "--in", folder / "notes", "--to", "texts", "--json", "--db",
                     folder / ".retriever"))
    assert found and all(r["path"].startswith(str(folder / "notes")) for r in found)


def test_second_run_encodes_nothing_and_deletions_leave_the_index(indexed, cli):
    folder, _ = indexed
    again = json.loads(cli("index", folder, "--json").stdout)["run"]
    assert again["images"] == 0 and again["texts"] == 0 and again["unchanged"] == 6
    (folder / "photos" / "blue.jpg").unlink()
    third = json.loads(cli("index", folder, "--json").stdout)
    assert third["run"]["removed"] == 1 and third["images"] == 2 and third["run"]["encoded"] == 0
    found = rows(cli("search", "blue", "--to", "images", "--json", "--db", folder / ".retriever"))
    assert not any(r["path"].endswith("blue.jpg") for r in found)


def test_missing_folder_is_one_line_and_nonzero(cli, tmp_path):
    result = cli("index", tmp_path / "nope", *TINY_ARGS)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope'} does not exist: pass a folder " \
        "of images and text documents"


def test_search_without_an_index_says_how_to_make_one(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("search", "anything")
    assert result.exit_code == 1
    assert "run `retriever index FOLDER` first" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_search_with_another_model_is_refused(indexed, cli):
    folder, _ = indexed
    result = cli("search", "x", "--model", "ViT-B-32", "--db", folder / ".retriever")
    assert result.exit_code == 1
    assert "--model ViT-B-32 differs from retriever-tiny" in result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("search", "--to", "movies", "x"), "unknown target 'movies'"),
        (("search", "--type", "text", "--to", "images", "x"), "ask for different things"),
        (("search", "x", "--add", "missing.jpg"), "--add missing.jpg: no such file"),
        (("search", "-k", "0", "x"), "-k must be at least 1"),
        (("search", "   "), "the query text is empty"),
        (("search",), "give either a text query, --image FILE or an item"),
        (("search", "--image", "nope.jpg"), "query image nope.jpg does not exist"),
    ],
)
def test_bad_search_input_is_one_line(indexed, cli, args, words):
    folder, _ = indexed
    result = cli(*args, "--db", folder / ".retriever")
    assert result.exit_code == 2 and words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_command_has_help_with_an_example(cli):
    import typer

    commands = list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert {"index", "search", "info"} <= set(commands)
    for name in commands:
        result = cli(name, "--help")
        assert result.exit_code == 0 and "Example" in result.stdout, name
