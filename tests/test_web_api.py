"""The routes behind the web page's tag menu, zip download and video seeking: GET /api/tags,
POST /api/download (hostile input answered with one line), Range requests on a file."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from index.kinds import TEXT
from retriever.server.app import ServerSettings, create_app

from .helpers import client_for, indexed_media, make_media, open_index, tag_files


@pytest.fixture(scope="module")
def media(tiny_encoder, tmp_path_factory):
    yield from indexed_media(tmp_path_factory.mktemp("web-api"), tiny_encoder)


@pytest.fixture(scope="module")
def client(media, tiny_encoder):
    _, collection = media
    with client_for(collection, tiny_encoder) as client:
        yield client


def ids_of(collection, root, names: list[str]) -> list[int]:
    """The image item ids of photos `names` (below `root`), as a search row would give."""
    found = collection.reads.image_items_at([str(root / name) for name in names])
    return [found[str(root / name)] for name in names]


def zip_of(response) -> dict[str, bytes]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def refusal(response, status: int) -> str:
    """The one-line error of a refused request."""
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message and "Traceback" not in message
    return message


def test_a_zip_holds_exactly_the_selected_files(client, media):
    root, collection = media
    names = ["photos/red.jpg", "photos/old.jpg", "photos/rotated.jpg"]
    files = zip_of(client.post("/api/download", json={"ids": ids_of(collection, root, names)}))
    # named below the files' common folder
    assert files == {name.split("/")[1]: (root / name).read_bytes() for name in names}


def test_files_of_several_folders_keep_their_folders_and_a_file_comes_once(client, media):
    root, collection = media
    photo = ids_of(collection, root, ["photos/blue.jpg"])
    trip = collection.reads.vectors(TEXT, str(root / "notes" / "trip.md"))[0].tolist()
    assert len(trip) >= 2  # several passages of one file
    files = zip_of(client.post("/api/download", json={"ids": photo + trip}))
    assert files == {"photos/blue.jpg": (root / "photos" / "blue.jpg").read_bytes(),
                     "notes/trip.md": (root / "notes" / "trip.md").read_bytes()}


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"ids": [987654321]}, 404, "no item 987654321"),
    ({"ids": list(range(100_000))}, 413, "at most 1000"),
    ({"ids": ["seven"]}, 400, "whole number"),
    ({"ids": [1.5]}, 400, "whole number"),
    ({"ids": [True]}, 400, "whole number"),
    ({"ids": [None]}, 400, "whole number"),
    ({"ids": [[1]]}, 400, "whole number"),
    ({"ids": [2**70]}, 400, "whole number"),
    ({"ids": []}, 400, "non-empty list"),
    ({"ids": "1,2"}, 400, "non-empty list"),
    ({"paths": ["/etc/passwd"]}, 400, "unknown field 'paths'"),
    ([1, 2], 400, "JSON object of item ids"),
])
def test_hostile_download_requests_get_one_line(client, body, status, says):
    assert says in refusal(client.post("/api/download", json=body), status)


def test_a_body_that_is_not_json_or_too_big_is_refused(client):
    bad = client.post("/api/download", content=b"{ids: 1",
                      headers={"Content-Type": "application/json"})
    assert "not valid JSON" in refusal(bad, 400)
    huge = json.dumps({"ids": [1] * 600_000}).encode()  # over the 1 MB JSON cap
    assert "limit" in refusal(client.post("/api/download", content=huge,
                                          headers={"Content-Type": "application/json"}), 413)


def test_a_download_over_the_size_cap_is_refused_before_any_byte(media, tiny_encoder):
    root, collection = media
    from starlette.testclient import TestClient

    app = create_app(collection, tiny_encoder, ServerSettings(max_download_bytes=1000))
    with TestClient(app, base_url="http://127.0.0.1") as small:
        ids = ids_of(collection, root, ["photos/red.jpg"])  # a ~5 kB photo
        assert "at most 0 MB" in refusal(small.post("/api/download", json={"ids": ids}), 413)


def test_a_file_changed_since_indexing_is_named_not_zipped(tmp_path, tiny_encoder):
    root = make_media(tmp_path / "media")
    collection = open_index(root, tiny_encoder)
    try:
        with client_for(collection, tiny_encoder) as client:
            ids = ids_of(collection, root, ["photos/red.jpg", "photos/blue.jpg"])
            (root / "photos" / "blue.jpg").write_bytes(b"other bytes now")
            files = zip_of(client.post("/api/download", json={"ids": ids}))
    finally:
        collection.close()
    assert set(files) == {"red.jpg", "NOT INCLUDED.txt"}
    assert files["red.jpg"] == (root / "photos" / "red.jpg").read_bytes()
    assert files["NOT INCLUDED.txt"].decode().startswith("blue.jpg: ")
    assert b"changed since it was indexed" in files["NOT INCLUDED.txt"]


def test_tags_are_listed_with_how_many_items_carry_each(tmp_path, tiny_encoder):
    root = make_media(tmp_path / "media")
    collection = open_index(root, tiny_encoder)
    try:
        with client_for(collection, tiny_encoder) as client:
            assert client.get("/api/tags").json() == {"tags": []}
            photos = root / "photos"
            tag_files(collection, {photos / "red.jpg": "warm", photos / "old.jpg": "warm",
                                   photos / "blue.jpg": "cold"})
            listed = client.get("/api/tags").json()["tags"]
    finally:
        collection.close()
    assert listed == [{"label": "cold", "count": 1}, {"label": "warm", "count": 2}]


@pytest.mark.parametrize(("asked", "first", "last"), [
    ("bytes=10-19", 10, 19), ("bytes=100-", 100, None), ("bytes=-7", -7, None),
    ("bytes=0-99999999", 0, None)])
def test_a_range_of_a_file_is_answered_206(client, media, asked, first, last):
    root, collection = media
    data = (root / "photos" / "red.jpg").read_bytes()
    item = ids_of(collection, root, ["photos/red.jpg"])[0]
    answer = client.get(f"/api/items/{item}/file", headers={"Range": asked})
    assert answer.status_code == 206, answer.text
    part = data[first:None if last is None else last + 1]
    assert answer.content == part
    start = first % len(data)
    assert answer.headers["content-range"] == f"bytes {start}-{start + len(part) - 1}/{len(data)}"


def test_a_range_outside_the_file_is_416_and_a_bad_one_gets_the_whole_file(client, media):
    root, collection = media
    data = (root / "photos" / "red.jpg").read_bytes()
    item = ids_of(collection, root, ["photos/red.jpg"])[0]
    outside = client.get(f"/api/items/{item}/file", headers={"Range": f"bytes={len(data)}-"})
    assert "outside the file" in refusal(outside, 416)
    assert outside.headers["content-range"] == f"bytes */{len(data)}"
    for odd in ("bytes=abc", "bytes=1-2,5-6", "lines=1-2", "bytes=-"):
        whole = client.get(f"/api/items/{item}/file", headers={"Range": odd})
        assert whole.status_code == 200 and whole.content == data, odd


def test_a_file_is_hashed_once_for_many_ranges_and_again_once_rewritten(
        tmp_path, tiny_encoder, monkeypatch):
    from retriever.library import thumbnails

    hashed = []
    holds = thumbnails._holds
    monkeypatch.setattr(thumbnails, "_holds", lambda *a: hashed.append(1) or holds(*a))
    root = make_media(tmp_path / "media")
    collection = open_index(root, tiny_encoder)
    photo = root / "photos" / "red.jpg"
    data = photo.read_bytes()
    try:
        with client_for(collection, tiny_encoder) as client:
            item = ids_of(collection, root, ["photos/red.jpg"])[0]
            for first in range(0, 50, 10):  # a video seeking: one request a range
                part = client.get(f"/api/items/{item}/file",
                                  headers={"Range": f"bytes={first}-{first + 9}"})
                assert part.status_code == 206 and part.content == data[first:first + 10]
            # in place with its stored size and mtime: not hashed (tests/test_serve_once.py
            # hashes a file reached through a linked folder once for many ranges)
            assert len(hashed) == 0
            photo.write_bytes(bytes(len(data)))  # same size, other bytes
            changed = client.get(f"/api/items/{item}/file", headers={"Range": "bytes=0-9"})
    finally:
        collection.close()
    assert "changed since it was indexed" in refusal(changed, 404)
    assert len(hashed) == 1
