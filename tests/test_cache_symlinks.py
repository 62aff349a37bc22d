"""Caches and pages never follow a symlink out of what was indexed (issue 20, class 8).

Two ways a picture of some other file could be shown: a link planted in the thumbnail cache
(`<index>/thumbs/256/<id>.jpg`, or the `256` folder itself), and an indexed file swapped for a
link to a file outside the indexed folders after indexing. Every way a picture leaves retriever
(the server's thumbnail and file routes, `search --html`, `search --preview`, `duplicates
--html`) is asked, and the outside file's bytes (raw, or as the thumbnail retriever would make
of it) must appear in none of them.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
from rich.console import Console

import cli as cli_module
from retriever.library.collection import THUMBS_DIRNAME
from retriever.library.thumbnails import DEFAULT_SIZE
from retriever.media.images import thumbnail_bytes
from retriever.present.preview import PREVIEW_SIZE

from .helpers import client_for, make_media, open_index, results, write_photo

PASSWD = Path("/etc/passwd")


@pytest.fixture
def indexed(tmp_path, tiny_encoder):
    """make_media's photos plus a same-bytes copy of red.jpg (a duplicate group), indexed;
    outside the indexed folder, a secret photo and a secret text. Yields (root, outside,
    collection, client)."""
    root = make_media(tmp_path / "media")
    shutil.copyfile(root / "photos" / "red.jpg", root / "photos" / "red-copy.jpg")
    outside = tmp_path / "outside"
    write_photo(outside / "secret.jpg", (250, 240, 10))
    (outside / "secret.txt").write_text("root:x:0:0:SECRET-TEXT\n")
    collection = open_index(root, tiny_encoder)
    with client_for(collection, tiny_encoder) as client:
        yield root, outside, collection, client
    collection.close()


def ids_by_name(client) -> dict[str, int]:
    found = results(client.get("/api/search", params={"text": "x", "k": 100,
                                                      "target": "images"}))
    return {Path(r["path"]).name: r["id"] for r in found}


def traces(path: Path) -> list[bytes]:
    """What would show that `path` leaked: its bytes, and for a photo the thumbnails and the
    preview retriever would make of it (in base64, as pages and terminals carry them)."""
    data = path.read_bytes()
    found = [data, base64.b64encode(data)]
    if path.suffix == ".jpg":
        found += [base64.b64encode(thumbnail_bytes(path, DEFAULT_SIZE)),
                  base64.b64encode(thumbnail_bytes(path, PREVIEW_SIZE, "PNG"))]
    return found


def assert_absent(secret: Path, *shown: bytes) -> None:
    for trace in traces(secret):
        for text in shown:
            assert trace not in text, f"{secret} leaked"


def swap_for_link(path: Path, target: Path) -> None:
    path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize("planted", ["/etc/passwd", "secret.txt", "secret.jpg",
                                     "another indexed photo", "the size folder"])
def test_a_link_planted_in_the_thumbnail_cache_is_never_served(indexed, planted, cli):
    root, outside, collection, client = indexed
    ids = ids_by_name(client)
    item = ids["blue.jpg"]
    own = client.get(f"/api/items/{item}/thumbnail").content  # made, and cached
    cache = collection.directory / THUMBS_DIRNAME / str(DEFAULT_SIZE)
    secret = {"/etc/passwd": PASSWD, "secret.txt": outside / "secret.txt",
              "secret.jpg": outside / "secret.jpg", "the size folder": outside / "secret.jpg",
              "another indexed photo": root / "photos" / "green.jpg"}[planted]
    before = secret.read_bytes()
    if planted == "the size folder":  # thumbs/256 -> a folder holding "<id>.jpg"
        shutil.copyfile(secret, outside / f"{item}.jpg")
        secret = outside / f"{item}.jpg"
        shutil.rmtree(cache)
        cache.symlink_to(outside)
    else:
        swap_for_link(cache / f"{item}.jpg", secret)

    response = client.get(f"/api/items/{item}/thumbnail")
    assert response.status_code == 200 and response.content == own  # blue.jpg's own picture
    assert_absent(secret, response.content)
    page = root.parent / "page.html"
    done = cli("search", "x", "--db", collection.directory, "--no-server", "--to", "images",
               "-k", "100", "--html", page)
    assert done.exit_code == 0, done.output
    html = page.read_bytes()
    assert base64.b64encode(own) in html  # blue.jpg shown as itself
    if planted == "another indexed photo":  # green.jpg shown once: as itself, not as blue.jpg
        assert html.count(base64.b64encode(thumbnail_bytes(secret, DEFAULT_SIZE))) == 1
    else:
        assert_absent(secret, html)
    assert secret.read_bytes() == before  # the cache was never written through the link


@pytest.fixture
def swapped(indexed):
    """`indexed`, its blue.jpg and red-copy.jpg swapped for links to the secret photo and
    todo.txt for one to the secret text, after indexing (and after blue.jpg's thumbnail was
    cached)."""
    root, outside, collection, client = indexed
    ids = ids_by_name(client)
    assert client.get(f"/api/items/{ids['blue.jpg']}/thumbnail").status_code == 200
    texts = results(client.get("/api/search", params={"text": "x", "k": 100,
                                                      "target": "texts"}))
    todo = next(r["id"] for r in texts if r["path"].endswith("todo.txt"))
    swap_for_link(root / "photos" / "blue.jpg", outside / "secret.jpg")
    swap_for_link(root / "photos" / "red-copy.jpg", outside / "secret.jpg")
    swap_for_link(root / "notes" / "todo.txt", outside / "secret.txt")
    return root, outside, collection, client, {**ids, "todo.txt": todo}


def test_the_server_refuses_files_swapped_for_links_outside(swapped):
    root, outside, collection, client, ids = swapped
    for url in (f"/api/items/{ids['blue.jpg']}/thumbnail", f"/api/items/{ids['blue.jpg']}/file",
                f"/api/items/{ids['red-copy.jpg']}/thumbnail",
                f"/api/items/{ids['red-copy.jpg']}/file", f"/api/items/{ids['todo.txt']}/file"):
        response = client.get(url)
        assert response.status_code == 404, url  # the cached thumbnail too: as the file
        assert_absent(outside / "secret.jpg", response.content)
        assert_absent(outside / "secret.txt", response.content)
    assert client.get(f"/api/items/{ids['green.jpg']}/thumbnail").status_code == 200


def test_search_html_embeds_no_file_swapped_for_a_link_outside(swapped, cli):
    root, outside, collection, client, ids = swapped
    page = root.parent / "page.html"
    done = cli("search", "x", "--db", collection.directory, "--no-server", "--to", "all",
               "-k", "100", "--html", page)
    assert done.exit_code == 0, done.output
    html = page.read_bytes()
    assert_absent(outside / "secret.jpg", html)
    assert_absent(outside / "secret.txt", html)
    green = client.get(f"/api/items/{ids['green.jpg']}/thumbnail").content
    assert base64.b64encode(green) in html  # what is still indexed is shown
    assert html.count(b"no longer readable") == 2  # blue.jpg, red-copy.jpg


def test_duplicates_html_embeds_no_file_swapped_for_a_link_outside(swapped, cli):
    root, outside, collection, client, ids = swapped
    page = root.parent / "duplicates.html"
    done = cli("duplicates", "--db", collection.directory, "--html", page)
    assert done.exit_code == 0, done.output
    html = page.read_bytes()
    assert b"red-copy.jpg" in html and b"red.jpg" in html  # the group is listed
    assert_absent(outside / "secret.jpg", html)
    assert html.count(b"no longer readable") == 1  # red-copy.jpg; red.jpg is shown


def test_search_preview_draws_no_file_swapped_for_a_link_outside(swapped, cli, monkeypatch):
    root, outside, collection, client, ids = swapped
    monkeypatch.setenv("TERM", "xterm-kitty")  # a terminal that draws images inline
    monkeypatch.setattr(cli_module, "stdout", Console(force_terminal=True, highlight=False,
                                                      soft_wrap=True, emoji=False, width=1000))
    done = cli("search", "x", "--db", collection.directory, "--no-server", "--to", "images",
               "-k", "100", "--preview")
    assert done.exit_code == 0, done.output
    shown = done.stdout.encode()
    assert_absent(outside / "secret.jpg", shown)
    drawn = shown.count(b"\x1b_Ga=T")  # one image per photo drawn
    assert drawn == len(ids) - 1 - 2, shown[:400]  # not blue.jpg, red-copy.jpg (ids: + todo)
