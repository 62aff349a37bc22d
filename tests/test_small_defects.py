"""Smaller defects, each from its class: stores that keep nothing, text in other Unicode
encodings, tables cut when piped, runs whose writer died, first runs that fail, --reindex and
the tags."""

from __future__ import annotations

import codecs
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from index.store import Store
from retriever.errors import BadStoreUrl
from retriever.library.collection import Collection
from retriever.media.passages import read_text

from .helpers import TINY_ARGS, rows, write_photo

EPHEMERAL_URLS = ("sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://", "sqlite:///",
                  "sqlite:///file::memory:?uri=true",
                  "sqlite:///file:x.db?mode=memory&cache=shared&uri=true")


def one_line_error(result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# --- a store that keeps nothing --------------------------------------------------------------

@pytest.mark.parametrize("url", EPHEMERAL_URLS)
def test_a_store_url_that_keeps_nothing_is_refused(url, cli, media_folder, monkeypatch):
    with pytest.raises(BadStoreUrl, match="keeps nothing"):
        Store(url)
    monkeypatch.setenv("RETRIEVER_STORE_URL", url)
    assert "keeps nothing" in one_line_error(cli("index", media_folder, *TINY_ARGS))
    monkeypatch.delenv("RETRIEVER_STORE_URL")
    for command in (("index", media_folder, *TINY_ARGS), ("info",), ("duplicates",),
                    ("search", "x")):
        said = one_line_error(cli(*command, "--db", media_folder / "db", "--store", url))
        assert "keeps nothing" in said and "--store" in said, said
    assert not (media_folder / ".retriever").exists()


# --- text in the encoding its byte-order mark names ------------------------------------------

TEXT = "Grüße aus Köln: the sky was blue, 空 and 🌊 all day."
ENCODINGS = {"utf-8-sig": codecs.BOM_UTF8, "utf-16-le": codecs.BOM_UTF16_LE,
             "utf-16-be": codecs.BOM_UTF16_BE, "utf-32-le": codecs.BOM_UTF32_LE,
             "utf-32-be": codecs.BOM_UTF32_BE}


def with_bom(text: str, encoding: str) -> bytes:
    bom = ENCODINGS[encoding]
    return (b"" if encoding == "utf-8-sig" else bom) + text.encode(encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_text_with_a_byte_order_mark_is_read_in_its_encoding(encoding, tmp_path):
    path = tmp_path / "note.txt"
    path.write_bytes(with_bom(TEXT, encoding))
    assert read_text(path) == TEXT
    assert read_text(io.BytesIO(with_bom(TEXT, encoding))) == TEXT  # an open file alike
    assert read_text(io.BytesIO(TEXT.encode())) == TEXT  # no mark: UTF-8, as before


def test_documents_and_captions_with_a_byte_order_mark_are_stored_as_words(cli, tmp_path):
    folder = tmp_path / "media"
    write_photo(folder / "beach.jpg", (30, 60, 220))
    (folder / "beach.txt").write_bytes(with_bom("waves at dawn", "utf-16-le"))  # its caption
    for encoding in ENCODINGS:
        (folder / f"{encoding}.txt").write_bytes(with_bom(f"{encoding} says {TEXT}", encoding))
    assert cli("index", folder, *TINY_ARGS).exit_code == 0
    found = rows(cli("search", "blue sky", "--to", "all", "-k", "50", "--json", "--db",
                     folder / ".retriever"))
    passages = {Path(r["path"]).stem: r["passage"] for r in found if r["kind"] == "text"}
    assert passages == {e: f"{e} says {TEXT}" for e in ENCODINGS}
    assert [r["caption"] for r in found if r["kind"] == "image"] == ["waves at dawn"]


# --- tables printed whole when piped ---------------------------------------------------------

def test_duplicates_piped_prints_whole_paths(cli, tmp_path):
    """CliRunner's stdout is not a terminal, as a pipe is not: every path whole, on one line."""
    deep = tmp_path / "media" / ("a long folder name " * 4).strip() / "and deeper still"
    first = write_photo(deep / "holiday photo number one.jpg", (220, 30, 30))
    second = deep / "a copy of holiday photo number one.jpg"
    shutil.copy(first, second)
    write_photo(tmp_path / "media" / "other.jpg", (30, 200, 60))
    assert cli("index", tmp_path / "media", *TINY_ARGS).exit_code == 0
    result = cli("duplicates", "--db", tmp_path / "media" / ".retriever")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for path in (first, second):
        assert len(str(path)) > 80 and any(str(path) in line for line in lines), result.stdout


# --- a run whose writer died -----------------------------------------------------------------

def test_info_says_a_run_whose_writer_died_was_interrupted(store_env, cli, media_folder):
    """On SQLite (a lock file) and PostgreSQL (an advisory lock) alike."""
    assert cli("index", media_folder, *TINY_ARGS).exit_code == 0
    db = media_folder / ".retriever"
    url = os.environ.get("RETRIEVER_STORE_URL") or f"sqlite:///{db / 'store.db'}"
    store = Store(url)
    store.start_run()  # what a SIGKILLed run leaves: its row 'running', its lock released
    store.close()

    def status() -> str:
        return json.loads(cli("info", "--db", db, "--json").stdout)["last_run"]["status"]

    assert status() == "interrupted"
    writer = Collection.open(db)
    with writer.writing():  # a live writer: its run is running
        assert status() == "running"
    writer.close()
    assert status() == "interrupted"


# --- a first run that fails leaves nothing behind --------------------------------------------

def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("failure", ["model not there", "weights not there",
                                     "store that keeps nothing", "--db folder, model not there",
                                     "--db folder, store refused"])
def test_a_first_run_that_fails_leaves_nothing_behind(failure, cli, media_folder, tmp_path):
    """Neither in the photo folder (its .retriever) nor in a --db folder of the user's, nor
    in the registry of indexes."""
    db = tmp_path / "my-index"
    db.mkdir()
    (db / "mine.txt").write_text("the user's own")
    args = {"model not there": ("--model", "no-such-model"),
            "weights not there": ("--model", "retriever-tiny", "--pretrained",
                                  tmp_path / "missing.pt"),
            "store that keeps nothing": (*TINY_ARGS, "--store", "sqlite://"),
            "--db folder, model not there": ("--model", "no-such-model", "--db", db),
            "--db folder, store refused": (*TINY_ARGS, "--db", db, "--store", "sqlite://")
            }[failure]
    before, in_db = listing(media_folder), listing(db)
    registry = sorted(Path(os.environ["XDG_DATA_HOME"]).rglob("*"))
    one_line_error(cli("index", media_folder, *args))
    assert listing(media_folder) == before and listing(db) == in_db
    assert sorted(Path(os.environ["XDG_DATA_HOME"]).rglob("*")) == registry


def test_a_later_run_that_fails_keeps_the_index(cli, media_folder):
    assert cli("index", media_folder, *TINY_ARGS).exit_code == 0
    before = listing(media_folder)
    one_line_error(cli("index", media_folder, "--model", "no-such-model", "--reindex"))
    assert listing(media_folder) == before
    info = json.loads(cli("info", "--db", media_folder / ".retriever", "--json").stdout)
    assert info["images"] == 3


# --- --reindex keeps the tags ----------------------------------------------------------------

def tags_by_place(db: Path) -> set[tuple]:
    """(path, kind, position, label set, label) of every tag, read by SQL."""
    from sqlalchemy import text

    store = Store(f"sqlite:///{db / 'store.db'}")
    try:
        with store.engine.connect() as conn:
            return {tuple(row) for row in conn.execute(text(
                "SELECT files.path, items.kind, items.position, tags.label_set, tags.label "
                "FROM tags JOIN items ON items.id = tags.item_id "
                "JOIN files ON files.id = items.file_id"))}
    finally:
        store.close()


def test_reindex_keeps_every_tag_on_the_file_it_was_on(cli, media_folder):
    db = media_folder / ".retriever"
    assert cli("index", media_folder, *TINY_ARGS).exit_code == 0
    for labels in (("red", "green", "blue"), ("disc", "square")):  # two label sets
        assert cli("tag", *labels, "--db", db).exit_code == 0
    tagged = tags_by_place(db)
    (media_folder / "photos" / "green.jpg").unlink()  # gone by the reindex: its tags go too
    result = cli("index", media_folder, *TINY_ARGS, "--reindex")
    assert result.exit_code == 0, result.output
    green = str(media_folder / "photos" / "green.jpg")
    kept = {t for t in tagged if t[0] != green}
    assert len(tagged) == 6 and len(kept) == 4 and tags_by_place(db) == kept
    for path, _, _, _, label in kept:  # and search finds them by their tags
        found = rows(cli("search", "x", "--tag", label, "--json", "--db", db))
        assert path in {r["path"] for r in found}
