"""What a new user meets in the first hour (issue 24): the registry kept tidy (`indexes
--forget/--prune`), a mistyped `--tag`, `tag`'s summary, `--to photos`, a server's error naming
the file given, `train`'s before/after line, whole flag names in `--help` at 80 columns, a
search during the first index run, two indexes covering one folder, and the HTML page's video
cards and links.

Each test drives the real CLI (in this process, or as a user runs it) on tiny media and the
bundled retriever-tiny model; the registry lives in conftest's per-test XDG folders.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import typer
import uvicorn
from typer.testing import CliRunner

from cli import app
from retriever.library.collection import Collection
from retriever.library.locations import register, registered
from retriever.search.query import resolve_target
from retriever.server.app import ServerSettings, create_app
from retriever.server.lifecycle import Server, listen

from .helpers import TINY_ARGS, rows, user_settings, write_photo, write_video

ROOT = Path(__file__).resolve().parents[1]


def indexed(cli, folder: Path, *more: str) -> Path:
    """`folder` indexed by the CLI with retriever-tiny; its index folder."""
    result = cli("index", folder, *TINY_ARGS, *more)
    assert result.exit_code == 0, result.output
    return folder / ".retriever"


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# --- 1. indexes --forget / --prune ------------------------------------------------------------

def made_index(folder: Path, data_dir: Path) -> Path:
    """A registered index of `folder` (its roots.json and the registry entry, as `index`
    writes them)."""
    folder.mkdir(parents=True)
    index_dir = folder / ".retriever"
    index_dir.mkdir()
    register(index_dir, [folder], data_dir)
    return index_dir.resolve()


def listed(cli) -> dict[str, bool]:
    return {row["index"]: row["exists"] for row in rows(cli("indexes", "--json"))}


def test_prune_forgets_only_the_indexes_whose_folder_is_gone(cli, tmp_path):
    data_dir = user_settings().data_dir
    kept, gone = (made_index(tmp_path / name, data_dir) for name in ("kept", "gone"))
    (gone / "roots.json").unlink()
    gone.rmdir()
    assert listed(cli) == {str(kept): True, str(gone): False}  # "(gone)" until pruned
    pruned = cli("indexes", "--prune")
    assert pruned.exit_code == 0, pruned.output
    assert one_line(pruned.stdout) == f"forgot {gone} (gone)"
    assert listed(cli) == {str(kept): True}
    again = cli("indexes", "--prune")
    assert again.exit_code == 0 and again.stdout == "" and "nothing to prune" in again.stderr


def test_forget_drops_one_index_from_the_list_and_leaves_its_files(cli, tmp_path):
    data_dir = user_settings().data_dir
    first, second = (made_index(tmp_path / name, data_dir) for name in ("first", "second"))
    forgot = cli("indexes", "--forget", first)
    assert forgot.exit_code == 0, forgot.output
    assert one_line(forgot.stdout) == f"forgot {first} (its files are untouched)"
    assert list(registered(data_dir)) == [second]
    assert (first / "roots.json").is_file()  # the index itself is not deleted


def test_forgetting_an_unregistered_folder_is_one_line_naming_the_registered(cli, tmp_path):
    kept = made_index(tmp_path / "kept", user_settings().data_dir)
    result = cli("indexes", "--forget", tmp_path / "never")
    assert result.exit_code == 1 and result.stdout == ""
    line = one_line(result.stderr)
    assert f"{tmp_path / 'never'} is not a registered index" in line and str(kept) in line
    assert list(registered(user_settings().data_dir)) == [kept]


# --- 2, 3, 4. tags and targets ----------------------------------------------------------------

@pytest.fixture
def tagged(cli, media_folder) -> tuple[Path, object]:
    """media_folder indexed, its three photos tagged red/green/blue: (index, `tag`'s result)."""
    db = indexed(cli, media_folder)
    return db, cli("tag", "red", "green", "blue", "--db", db)


def test_an_unknown_tag_is_a_usage_error_naming_the_known_ones(cli, tagged):
    db, _ = tagged
    result = cli("search", "disc", "--tag", "dgo", "--db", db, "--no-server")
    assert result.exit_code == 2 and result.stdout == ""
    # (the line before: retriever-tiny's note on its random weights)
    assert result.stderr.splitlines()[-1] == ("error: --tag dgo: no image is tagged so (known "
                                              "tags: blue, green, red)")
    some = {label for label in ("red", "green", "blue")
            if rows(cli("search", "disc", "--tag", label, "--db", db, "--json"))}
    assert some  # a known tag still filters


def test_a_label_no_image_got_is_known_and_finds_nothing(cli, media_folder):
    db = indexed(cli, media_folder)
    one = media_folder / "photos" / "red.jpg"  # one image: one of the two labels stays unused
    given = rows(cli("tag", "cat", "dog", "--in", one, "--db", db, "--json"))[0]["labels"]
    (unused,) = {"cat", "dog"} - set(given)
    result = cli("search", "disc", "--tag", unused, "--db", db, "--json")
    assert result.exit_code == 0 and result.stdout == "", result.output
    assert "no results" in result.stderr


def test_tag_prints_a_summary_of_labels_with_counts(cli, tagged):
    db, result = tagged
    assert result.exit_code == 0, result.output
    detail = rows(cli("tag", "red", "green", "blue", "--db", db, "--json"))  # same labels again
    counts = {label: sum(label in r["labels"] for r in detail) for label in ("red", "green",
                                                                           "blue")}
    lines = result.stdout.splitlines()
    assert len(lines) == 4  # a line per label and the total, not one per image
    assert {line.split()[0]: int(line.split()[1]) for line in lines[:3]} == counts
    assert lines[3].startswith(f"tagged {sum(bool(r['labels']) for r in detail)} of "
                               f"{len(detail)} images")
    verbose = cli("tag", "red", "green", "blue", "--db", db, "--verbose")
    assert {line.split()[-1] for line in verbose.stdout.splitlines()} == \
        {r["path"] for r in detail}  # --verbose: each image, its path last


def test_to_photos_is_to_images(cli, tagged):
    assert resolve_target("photos") == resolve_target("images") == "images"
    db, _ = tagged
    photos = rows(cli("search", "disc", "--to", "photos", "--db", db, "--json"))
    assert photos and photos == rows(cli("search", "disc", "--to", "images", "--db", db,
                                         "--json"))


# --- 5. a server's error names the file given -------------------------------------------------

@contextmanager
def serving(collection: Collection, encoder) -> Iterator[None]:
    """A real `retriever serve` in a thread, announced for the collection's folder where the
    CLI looks for it."""
    server = Server(uvicorn.Config(create_app(collection, encoder, ServerSettings()),
                                   log_level="warning"), collection.directory,
                    user_settings().xdg_runtime_dir)
    sock = listen("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.announced.is_set():
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    assert server.announced_at is not None
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=120)
        sock.close()


def test_a_non_image_query_through_a_server_names_the_real_path(cli, media_folder,
                                                                tiny_encoder, monkeypatch):
    db = indexed(cli, media_folder)
    notes = media_folder / "notes" / "trip.md"
    local = cli("search", "--image", notes, "--db", db, "--no-server")
    collection = Collection.open(db)
    with serving(collection, tiny_encoder):
        remote = cli("search", "--image", notes, "--db", db)
        found = rows(cli("search", "--image", media_folder / "photos" / "red.jpg", "--db", db,
                         "--json", "-k", "1"))
    collection.close()
    assert found[0]["path"] == str(media_folder / "photos" / "red.jpg")  # it answers
    assert local.exit_code == remote.exit_code == 1
    line = one_line(remote.stderr)  # the server's answer: no model loaded here, no note
    assert line.startswith(f"error: {notes}: not a readable image") and "upload" not in line
    assert local.stderr.splitlines()[-1] == line  # as a search in this process says it


# --- 6. train's before/after line -------------------------------------------------------------

@pytest.mark.slow
def test_train_prints_the_checkpoint_and_a_before_after_line(cli, tmp_path, one_torch_thread):
    from retriever.training.synthetic import write_captioned_images

    write_captioned_images(tmp_path / "scenes", 40, seed=1)
    out = tmp_path / "m.pt"
    got = cli("train", tmp_path / "scenes", "--out", out, *TINY_ARGS, "--epochs", "1",
              "--batch-size", "8")
    assert got.exit_code == 0, got.output
    with (tmp_path / "m.curve.csv").open() as f:
        curve = [r for r in csv.DictReader(f) if r["val_t2i_R@1"]]
    shown = [f"{100 * float(curve[i][column]):.1f}%" for column in ("val_t2i_R@1", "val_i2t_R@1")
             for i in (0, -1)]
    assert (f"held-out: text->image R@1 {shown[0]} -> {shown[1]}, image->text R@1 {shown[2]} "
            f"-> {shown[3]}") in got.stdout.splitlines()
    assert f"checkpoint: {out} " in got.stdout and out.is_file()
    none = cli("train", tmp_path / "scenes", "--out", tmp_path / "n.pt", *TINY_ARGS,
               "--epochs", "1", "--batch-size", "8", "--val-fraction", "0")
    assert none.exit_code == 0, none.output
    assert "held-out: none (--val-fraction 0)" in none.stdout
    assert f"checkpoint: {tmp_path / 'n.pt'} " in none.stdout


# --- 7. --help at 80 columns ------------------------------------------------------------------

def test_help_at_80_columns_shows_every_flag_whole():
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    runner = CliRunner()
    for name, command in commands.items():
        got = runner.invoke(app, [name, "--help"], env={"COLUMNS": "80", "TERM": "dumb"})
        assert got.exit_code == 0, got.output
        assert "…" not in got.stdout, name
        assert max(map(len, got.stdout.splitlines())) <= 80, name
        flags = [o for p in command.params for o in (*p.opts, *p.secondary_opts)
                 if o.startswith("--")]
        for option in flags:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", got.stdout), \
                (name, option)


# --- 8. a search during the first index run ---------------------------------------------------

def test_a_search_while_the_first_run_has_committed_nothing_says_so(cli, tmp_path):
    db = tmp_path / "index"
    collection = Collection.open(db)  # what `index` has made before its first commit
    with collection.writing():
        result = cli("search", "disc", "--db", db, "--no-server")
    collection.close()
    assert result.exit_code == 1 and result.stdout == ""
    assert one_line(result.stderr) == (
        f"error: the index {db} is still being built: nothing committed yet; search again "
        f"once `retriever index` has stored its first files")
    after = cli("search", "disc", "--db", db, "--no-server")  # no run now: not "being built"
    assert after.exit_code == 1 and "still being built" not in after.stderr


# --- 9. two indexes covering the folder -------------------------------------------------------

def test_the_index_used_is_named_when_two_cover_the_folder(cli, media_folder, tmp_path):
    outer = indexed(cli, media_folder)
    indexed(cli, media_folder / "photos", "--db", tmp_path / "photos-index")
    inner = (tmp_path / "photos-index").resolve()
    env = {**os.environ, "COLUMNS": "1000"}
    got = subprocess.run([sys.executable, "-m", "cli", "info", "--json"], cwd=media_folder /
                         "photos", env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                         text=True, timeout=600)
    assert got.returncode == 0, got.stderr
    # walking up finds media/.retriever; the registry knows photos-index covers photos/ too
    assert json.loads(got.stdout)["directory"] == str(outer)
    assert one_line(got.stderr) == (f"warning: 2 indexes cover {media_folder / 'photos'}: using "
                                    f"{outer} (not {inner}); pass --db to choose")
    alone = cli("info", "--json", "--db", inner)  # --db: no choice made, nothing said
    assert alone.exit_code == 0 and alone.stderr == ""


# --- 10. the HTML page: video cards and links -------------------------------------------------

def test_the_html_page_sizes_video_cards_and_links_files_relative_to_it(cli, tmp_path):
    media = tmp_path / "media"
    (media / "clips").mkdir(parents=True)
    write_video(media / "clips" / "walk.mp4")
    write_photo(media / "red.jpg", (220, 30, 30))
    db = indexed(cli, media, "--video-every", "1")
    page = media / "results.html"  # above the video: a relative link
    elsewhere = tmp_path / "pages" / "results.html"  # beside the media: an absolute one
    for html_file in (page, elsewhere):
        got = cli("search", "a scene", "--to", "videos", "--db", db, "--html", html_file)
        assert got.exit_code == 0, got.output
    videos = re.findall(r"<video ([^>]*)>", page.read_text())
    assert videos
    for tag in videos:
        assert re.search(r'src="clips/walk\.mp4#t=[\d.]+"', tag), tag
        width, height = (int(v) for v in re.search(r'width="(\d+)" height="(\d+)"', tag).groups())
        assert width * 3 == height * 4  # write_video's frames are 4:3 (128 x 96)
    for tag in re.findall(r"<video ([^>]*)>", elsewhere.read_text()):
        assert f'src="{(media / "clips" / "walk.mp4").as_uri()}#t=' in tag
