"""File names are bytes: names that are not UTF-8 (in files of every kind, in folders, in
sidecar captions, in failures), a name that spells such an escape literally, and trees deeper
than Python's recursion limit, all stored, searched, served and shown as the exact file."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from retriever.ingest.pipeline import IngestOptions, ingest_media
from retriever.library.collection import Collection
from retriever.media import scan as scan_module
from retriever.media.paths import key_path, path_key
from retriever.media.scan import scan
from retriever.server.app import ServerSettings, create_app

from .helpers import TINY_ARGS, rows, write_photo, write_video


def at(folder: Path, name: bytes) -> Path:
    """`folder / name` for a name that need not be UTF-8."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def odd_names(root: Path) -> dict[str, bytes]:
    """Media of every kind whose names (or folders) are not UTF-8, the twin that spells one
    of them literally, and a broken image: what -> its name below `root`."""
    files = {"photo": b"ph\xffoto.jpg", "caption": b"ph\xffoto.txt", "notes": b"n\xfeotes.md",
             "video": b"cl\xe9ip.mp4", "in-folder": b"d\xfdir/inside.png",
             "escaped": b"a\xffb.jpg", "literal": b"a\\xffb.jpg", "broken": b"br\xffoken.jpg"}
    write_photo(at(root, files["photo"]), (220, 30, 30))
    at(root, files["caption"]).write_text("a red disc on grey")
    at(root, files["notes"]).write_text("notes about a green field")
    write_video(at(root, files["video"]))
    write_photo(at(root, files["in-folder"]), (30, 200, 60))
    write_photo(at(root, files["escaped"]), (30, 60, 220))
    write_photo(at(root, files["literal"]), (200, 200, 30))
    at(root, files["broken"]).write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return files


def test_a_key_gives_back_the_exact_bytes_and_names_one_path():
    """Every path of up to 5 symbols over an alphabet of escapes' parts, bytes that are not
    UTF-8, a UTF-8 letter and a surrogate's encoding (not UTF-8 either)."""
    alphabet = [b"\\", b"x", b"f", b"5", b"c", b"\xff", b"\xc3", b"\xa9", b"\xed\xb2\x80", b"/",
                "é".encode()]
    seen: dict[str, bytes] = {}
    for n in range(6):
        for parts in itertools.product(alphabet, repeat=n):
            raw = os.fsencode(Path(os.fsdecode(b"/r/" + b"".join(parts))))  # as Path keeps it
            key = path_key(Path(os.fsdecode(raw)))
            key.encode("utf-8")  # valid UTF-8: SQLite and PostgreSQL TEXT
            assert "\0" not in key
            assert os.fsencode(key_path(key)) == raw
            assert seen.setdefault(key, raw) == raw, (key, raw, seen[key])
    assert path_key("/p/ünï 写真/a\\b.jpg") == "/p/ünï 写真/a\\b.jpg"  # UTF-8: unchanged


def test_names_that_are_not_utf8_index_search_and_fail_as_themselves(tmp_path, cli):
    root = tmp_path / "media"
    names = odd_names(root)
    result = cli("index", root, *TINY_ARGS, "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)["run"]
    assert [f["path"] for f in run["failures"]] == [path_key(at(root, names["broken"]))]
    assert "br\\xffoken.jpg: not a readable image" in run["failures"][0]["reason"]
    store = Collection.open(root / ".retriever").store
    stored = sorted(store.file_states())
    assert {key_path(key) for key in stored} == {
        at(root, name) for what, name in names.items() if what != "broken"}
    photo = store.image_items_at([path_key(at(root, names["photo"]))]).popitem()[1]
    assert store.items([photo])[photo].caption == "a red disc on grey"  # its sidecar's
    store.close()
    again = json.loads(cli("index", root, "--json").stdout)["run"]
    assert again["encoded"] == 0 and again["unchanged"] == len(stored)

    found = rows(cli("search", "a disc", "--to", "all", "-k", "50", "--json", "--db",
                     root / ".retriever"))
    files = {key_path(r["path"]) for r in found}
    assert files == {at(root, n) for w, n in names.items() if w not in ("broken", "caption")}
    assert all(f.is_file() for f in files)
    listed = cli("search", "a disc", "-k", "50", "--paths-only", "--db", root / ".retriever")
    assert {key_path(line) for line in listed.stdout.splitlines()} == {
        at(root, names[w]) for w in ("photo", "in-folder", "escaped", "literal")}


def test_the_server_serves_and_thumbnails_files_whose_names_are_not_utf8(tmp_path,
                                                                         tiny_encoder):
    root = tmp_path / "media"
    names = odd_names(root)
    collection = Collection.open(root / ".retriever")
    with collection.writing():
        ingest_media(collection, tiny_encoder, IngestOptions((root,)))
    app = create_app(collection, tiny_encoder, ServerSettings())
    with TestClient(app, base_url="http://127.0.0.1") as client:
        found = client.get("/api/search", params={"text": "x", "target": "images", "k": 50,
                                                   "video_frames": "true"})
        by_file = {key_path(r["path"]): r["id"] for r in found.json()["results"]}
        for what in ("photo", "in-folder", "escaped", "literal", "video"):
            item = by_file[at(root, names[what])]
            served = client.get(f"/api/items/{item}/file")
            assert served.status_code == 200, (what, served.text)
            assert served.content == at(root, names[what]).read_bytes()
            thumb = client.get(f"/api/items/{item}/thumbnail")
            assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8", what
    collection.close()


def test_html_pages_show_pictures_of_files_whose_names_are_not_utf8(tmp_path, cli):
    root = tmp_path / "media"
    names = odd_names(root)
    assert cli("index", root, *TINY_ARGS).exit_code == 0
    page = tmp_path / "page.html"
    result = cli("search", "x", "-k", "50", "--to", "images", "--with-videos", "--html", page,
                 "--db", root / ".retriever")
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "no longer readable" not in text and text.count("<img src=\"data:image/jpeg") == 4
    assert path_key(at(root, names["literal"])) in text  # each file named as its key
    assert "cl%E9ip.mp4" in text  # the video's link holds its name's own bytes


def test_a_tree_deeper_than_the_recursion_limit_is_indexed(tmp_path, tiny_encoder):
    folder = tmp_path / "deep"
    folder.mkdir()
    for _ in range(1100):
        folder = folder / "d"
        folder.mkdir()
    write_photo(folder / "deepest.jpg", (220, 30, 30))
    (folder / "deepest.txt").write_text("a caption at the bottom")
    collection = Collection.open(tmp_path / "index")
    try:
        with collection.writing():
            report = ingest_media(collection, tiny_encoder, IngestOptions((tmp_path / "deep",)))
        assert report.images == 1 and not report.failures
        assert {key_path(k) for k in collection.store.file_states()} == {
            folder / "deepest.jpg", folder / "deepest.txt"}
    finally:
        collection.close()
        remove_deep(folder, tmp_path / "deep")


def remove_deep(folder: Path, top: Path) -> None:
    """Remove a chain of single folders from the bottom up (shutil.rmtree, as pytest's clean-up
    uses it, recurses per level)."""
    for child in folder.iterdir():
        child.unlink()
    while folder != top.parent:
        folder.rmdir()
        folder = folder.parent


def test_folders_that_cannot_be_listed_are_reported_as_unreadable(tmp_path, monkeypatch):
    """A folder that cannot be listed (permission, I/O error; a folder whose name is not
    UTF-8 among them) is named in `unreadable` and once among the failures; the walk goes
    on."""
    root = tmp_path / "media"
    write_photo(root / "ok" / "a.jpg", (1, 2, 3))
    write_photo(root / "locked" / "b.jpg", (1, 2, 3))
    write_photo(at(root, b"l\xffocked/deeper/c.jpg"), (1, 2, 3))
    refused = {root / "locked": PermissionError(13, "Permission denied"),
               at(root, b"l\xffocked"): OSError(5, "Input/output error")}
    real = os.scandir

    def scandir(path):
        if Path(path) in refused:
            raise refused[Path(path)]
        return real(path)

    monkeypatch.setattr(scan_module.os, "scandir", scandir)
    found = scan([root])
    assert [f.path for f in found.files] == [root / "ok" / "a.jpg"]
    assert sorted(found.unreadable) == sorted(refused)
    assert sorted(f.path for f in found.failures) == sorted(path_key(p) for p in refused)
    assert any("l\\xffocked: cannot read folder (Input/output error)" in f.reason
               for f in found.failures)


@pytest.mark.parametrize("unreadable_root", [True, False])
def test_a_root_that_cannot_be_listed_is_unreadable_too(tmp_path, monkeypatch, unreadable_root):
    root = tmp_path / "media"
    write_photo(root / "a.jpg", (1, 2, 3))
    real = os.scandir

    def scandir(path):
        if unreadable_root and Path(path) == root:
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(scan_module.os, "scandir", scandir)
    found = scan([root])
    assert found.unreadable == ([root] if unreadable_root else [])
    assert len(found.files) == (0 if unreadable_root else 1)
