"""What a new user meets first: a text query finds photos, `all` gives photos and passages a
fair place, a sidecar caption is its photo's, the index is found from any folder it covers,
nothing but the index is written in the media folders, and the table is readable."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest

from .helpers import TINY_ARGS, rows, user_settings, write_photo


@pytest.fixture
def mixed(tmp_path, cli, shapes_checkpoint):
    """Generated scenes (a trained model knows them) in photos/, their captions moved to a
    notes/ document, so photos and passages both match a scene's words by construction; one
    photo keeps its sidecar caption."""
    from retriever.training.synthetic import write_captioned_images

    photos = write_captioned_images(tmp_path / "media" / "photos", 24, seed=3)
    notes = tmp_path / "media" / "notes"
    notes.mkdir()
    lines = []
    for photo in photos[1:]:
        lines.append(photo.with_suffix(".txt").read_text().splitlines()[0])
        photo.with_suffix(".txt").unlink()
    (notes / "scenes.md").write_text("\n\n".join(lines) + "\n")
    result = cli("index", tmp_path / "media", "--pretrained", shapes_checkpoint)
    assert result.exit_code == 0, result.output
    return tmp_path / "media", photos[0], lines


def test_words_find_photos_by_default_and_all_gives_both_kinds_a_place(mixed, cli):
    media, _, lines = mixed
    db = ("--db", media / ".retriever")
    default = rows(cli("search", lines[0], "--json", *db))
    assert len(default) == 10 and {r["kind"] for r in default} == {"image"}
    both = rows(cli("search", lines[0], "--to", "all", "--json", *db))
    assert len(both) == 10 and {r["found_in"] for r in both} == {"images", "texts"}
    assert sum(r["found_in"] == "images" for r in both) == 5  # interleaved by rank
    # both match by construction: the scene's photo, and the passage holding its caption
    assert str(media / "photos" / "img_0001.jpg") in {r["path"] for r in both}
    assert any(lines[0] in (r["passage"] or "") for r in both if r["found_in"] == "texts")


def test_a_sidecar_caption_hit_is_its_photo(mixed, cli):
    media, captioned, _ = mixed
    caption = captioned.with_suffix(".txt").read_text().splitlines()[0]
    found = rows(cli("search", caption, "--to", "texts", "--json", "--db",
                     media / ".retriever"))
    assert found[0]["path"] == str(captioned) and found[0]["kind"] == "image"
    assert found[0]["caption"].startswith(caption) and found[0]["score"] > 0.99
    assert not any(r["path"].endswith(".txt") for r in found)


def test_search_from_inside_the_second_folder_finds_the_index(tmp_path, cli, monkeypatch):
    photos, notes = tmp_path / "Pictures", tmp_path / "Notes"
    write_photo(photos / "red.jpg", (220, 30, 30))
    (notes / "deep").mkdir(parents=True)
    (notes / "deep" / "todo.txt").write_text("buy red paint")
    before = {p: sorted(p.rglob("*")) for p in (photos, notes)}
    monkeypatch.setenv("RETRIEVER_BACKEND", "auto")  # the export too: it goes to the cache
    assert cli("index", photos, notes, *TINY_ARGS).exit_code == 0
    # nothing written in the folders but the index folder chosen (<first folder>/.retriever)
    assert sorted(notes.rglob("*")) == before[notes]
    assert {p for p in photos.rglob("*") if ".retriever" not in p.parts} == set(before[photos])
    assert not (photos / ".retriever" / "onnx").exists()

    monkeypatch.chdir(notes / "deep")
    found = rows(cli("search", "buy red paint", "--to", "texts", "--json"))
    assert found[0]["path"] == str(notes / "deep" / "todo.txt")
    listed = rows(cli("indexes", "--json"))
    assert listed == [{"index": str(photos / ".retriever"), "exists": True,
                       "roots": [str(photos), str(notes)]}]
    info = json.loads(cli("info", "--json").stdout)["locations"]
    assert info["roots"] == f"{photos}, {notes}" and "/retriever/onnx/" in info["export"]

    monkeypatch.chdir(tmp_path)  # above both: no index covers it, the error names them
    result = cli("search", "x")
    assert result.exit_code == 1 and f"indexed folders: {photos}, {notes}" in result.stderr


def test_the_table_shows_ids_and_whole_names_and_says_when_nothing_matched(cli, tmp_path):
    long = tmp_path / ("a-folder-with-a-long-name-" * 3) / "1299459550_1fd55a6b8f_the_name.jpg"
    write_photo(long, (30, 200, 60))
    assert cli("index", tmp_path, *TINY_ARGS).exit_code == 0
    db = ("--db", tmp_path / ".retriever")
    table = cli("search", "green", *db)  # not a terminal: 80 columns unless told
    assert table.exit_code == 0 and long.name in table.stdout and "…" in table.stdout
    item = rows(cli("search", "green", "--json", *db))[0]["id"]
    header = table.stdout.splitlines()[1]
    assert "id" in header and "caption" not in header  # no empty column
    assert f" {item} " in table.stdout
    empty = cli("search", "green", "--min-score", "0.99999", "--item", str(item + 1000), *db)
    assert empty.exit_code != 0  # an unknown item is an error, not "no results"
    none = cli("search", "green", "--min-score", "1.5", *db)
    assert none.exit_code == 0 and "no results" in none.stderr
    assert rows(cli("search", "green", "--to", "image", "--json", *db))  # singular works


def test_a_failure_is_shown_once_in_info(cli, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    assert cli("index", tmp_path, *TINY_ARGS).exit_code == 0
    shown = cli("info", "--db", tmp_path / ".retriever").stdout
    assert shown.count(str(tmp_path / "broken.jpg")) == 1


def test_log_lines_print_above_the_bars_not_glued_to_them(capsys):
    from rich.console import Console

    from retriever.progress import RichProgress

    bars = RichProgress()
    screen = Console(file=io.StringIO(), force_terminal=True, width=100)
    bars._bar.live.console = screen  # the bars' console: the log goes through it too
    bars._bar.disable = False
    with bars.task("training", total=4) as task:
        task.advance(2)
        bars.log("epoch 1/2, loss 0.5")
    lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.file.getvalue()).splitlines()
    assert "epoch 1/2, loss 0.5" in [line.strip() for line in lines]


def test_no_export_lands_in_an_index_or_media_folder(tmp_path):
    from retriever.encoding.backends import export_dir, user_exports
    from retriever.encoding.specs import ModelId

    folder = export_dir(user_exports(user_settings()), ModelId("ViT-B-32", "laion2b_s34b_b79k"))
    assert folder.parent == Path(__import__("os").environ["XDG_CACHE_HOME"]) / "retriever" / "onnx"
    shutil.rmtree(folder, ignore_errors=True)
