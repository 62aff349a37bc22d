"""The web API in-process (Starlette's TestClient): searches, files, thumbnails, and bad input.

Bad input of every kind must come back as a 4xx with {"error": "one line"}; the client raises
on any server exception, so a 500 fails the test that caused it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

import retriever.library.thumbnails
from index.records import ModelRecord
from retriever import errors
from retriever.library.collection import Collection
from retriever.search.query import Query, Term, search
from retriever.server.app import WEB
from retriever.server.lifecycle import listen

from .helpers import (
    CAP,
    OLD,
    client_for,
    indexed_media,
    make_media,
    open_index,
    results,
    write_photo,
)


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_encoder):
    yield from indexed_media(tmp_path_factory.mktemp("server"), tiny_encoder)


@pytest.fixture(scope="module")
def client(media, tiny_encoder):
    with client_for(media[1], tiny_encoder) as c:
        yield c


def item_id(client, name: str, target: str = "images") -> int:
    """The id of the indexed file `name`, found through the API."""
    found = results(client.get("/api/search", params={"text": "x", "target": target, "k": 50}))
    return next(r["id"] for r in found if Path(r["path"]).name == name)


def test_text_search_returns_ranked_rows(client, media):
    root, _ = media
    found = results(client.get("/api/search", params={"text": "buy red paint",
                                                      "target": "texts", "k": 3}))
    assert len(found) == 3 and {r["found_in"] for r in found} == {"texts"}
    top = found[0]  # the exact words of todo.txt's only passage: the same vector
    assert top["path"] == str(root / "notes" / "todo.txt") and top["position"] == 0
    assert top["passage"] == "buy red paint" and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert top["thumbnail"] is None and top["file"] == f"/api/items/{top['id']}/file"
    assert [r["score"] for r in found] == sorted((r["score"] for r in found), reverse=True)


def test_image_rows_carry_a_thumbnail_url_and_the_caption(client, media):
    root, _ = media
    found = results(client.get("/api/search", params={"text": "red", "target": "images"}))
    assert len(found) == 5 and {r["kind"] for r in found} == {"image"}  # every photo
    assert all(r["thumbnail"] == f"/api/items/{r['id']}/thumbnail" for r in found)
    red = next(r for r in found if r["path"] == str(root / "photos" / "red.jpg"))
    assert red["caption"] == "a red disc on grey"


def test_search_by_item_puts_that_item_first(client):
    green = item_id(client, "green.jpg")
    found = results(client.get("/api/search", params={"item": green, "target": "all"}))
    assert found[0]["id"] == green and found[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert found[1]["score"] < found[0]["score"]


def test_upload_search_finds_the_same_photo_first(client, media):
    root, _ = media
    photo = root / "photos" / "blue.jpg"
    response = client.post("/api/search", data={"target": "images", "k": "2"},
                           files={"image": ("mine.jpg", photo.read_bytes(), "image/jpeg")})
    found = results(response)
    assert len(found) == 2 and found[0]["path"] == str(photo)
    assert found[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_json_search_is_the_library_search(client, media, tiny_encoder):
    """Combined terms through the API give exactly what retriever.search.query.search gives."""
    _, collection = media
    green = item_id(client, "green.jpg")
    body = {"text": "red", "add": [{"item": green, "weight": 0.5}], "sub": [{"text": "blue"}],
            "target": "all", "k": 6}
    found = results(client.post("/api/search", json=body))
    expected = search(collection, tiny_encoder, Query(
        text="red", add=(Term(0.5, item=green),), sub=(Term(text="blue"),), k=6, target="all"))
    assert [(r["id"], r["score"]) for r in found] == [(r.id, r.score) for r in expected]
    assert len(found) == 6


def test_filters_folder_dates_and_min_score(client, media):
    root, _ = media
    notes = results(client.get("/api/search", params={"text": "red", "in": str(root / "notes"),
                                                      "k": 50, "target": "texts"}))
    assert notes and all(r["path"].startswith(str(root / "notes")) for r in notes)
    old = results(client.get("/api/search", params={"text": "red", "before": "2002-01-01",
                                                    "target": "images"}))
    assert [Path(r["path"]).name for r in old] == ["old.jpg"]
    newer = results(client.get("/api/search", params={"text": "red", "after": OLD + 1,
                                                      "target": "images", "k": 50}))
    assert len(newer) == 4 and "old.jpg" not in {Path(r["path"]).name for r in newer}
    green = item_id(client, "green.jpg")
    close = results(client.get("/api/search", params={"item": green, "min_score": 0.9999}))
    assert [r["id"] for r in close] == [green]


BAD_REQUESTS = [
    # (method, url, request keywords, status, words in the error)
    ("GET", "/api/search", {}, 400, "give either a text query"),
    ("GET", "/api/search?text=", {}, 400, "the query text is empty"),
    ("GET", "/api/search?text=%20%20", {}, 400, "the query text is empty"),
    ("POST", "/api/search", {"json": {}}, 400, "give either a text query"),
    ("GET", "/api/search?text=x&k=0", {}, 400, "must be at least 1"),
    ("GET", "/api/search?text=x&k=-3", {}, 400, "must be at least 1"),
    ("GET", "/api/search?text=x&k=ten", {}, 400, "k must be a whole number"),
    ("GET", "/api/search?text=x&k=1000000000", {}, 400, "k must be at most 1000"),
    ("GET", "/api/search?text=x&target=movies", {}, 400, "unknown target 'movies'"),
    ("GET", "/api/search?text=x&bogus=1", {}, 400, "unknown parameter 'bogus'"),
    ("GET", "/api/search?text=x&after=yesterday", {}, 400, "is not a date"),
    ("GET", "/api/search?text=x&min_score=high", {}, 400, "min_score must be a number"),
    ("GET", "/api/search?text=x&min_score=nan", {}, 400, "min_score must be a number"),
    ("GET", "/api/search?item=999999", {}, 404, "no item 999999"),
    ("GET", "/api/search?item=../.retriever/store.db", {}, 400, "item must be a whole number"),
    ("GET", "/api/search?item=/etc/passwd", {}, 400, "item must be a whole number"),
    ("GET", "/api/search?text=x&in=../..", {}, 400, "in must be an absolute folder"),
    ("GET", "/api/search?text=x&in=notes", {}, 400, "in must be an absolute folder"),
    ("GET", "/api/search?text=x&in=/tmp/../etc", {}, 400, "in must not contain '..'"),
    ("POST", "/api/search", {"json": {"text": "x", "add": [{"image": "/etc/passwd"}]}}, 400,
     "terms take weight, text or item, not 'image'"),
    ("POST", "/api/search", {"json": {"text": "x", "sub": "blue"}}, 400, "must be a list"),
    ("POST", "/api/search", {"json": {"item": 10**30}}, 400, "item must be a whole number"),
    ("POST", "/api/search", {"content": b"{not json",
                             "headers": {"content-type": "application/json"}}, 400, "not valid"),
    ("POST", "/api/search", {"content": b"text=x"}, 400, "POST a JSON object"),
    ("POST", "/api/search", {"data": {"text": "x"}, "files": {"other": ("a", b"b")}}, 400,
     "needs an image file in the 'image' field"),
    ("GET", "/api/items/999999/thumbnail", {}, 404, "no item 999999"),
    ("GET", "/api/items/999999/file", {}, 404, "no item 999999"),
    ("GET", "/api/items/-1/file", {}, 404, "no item -1"),
    ("GET", "/api/items/abc/thumbnail", {}, 400, "item must be a whole number"),
    ("GET", "/api/items/..%2F..%2Fstore.db/file", {}, 404, "nothing at"),
    ("GET", "/api/items/..%2F..%2Fstore.db/thumbnail", {}, 404, "nothing at"),
    ("GET", "/api/items/%2Fetc%2Fpasswd/file", {}, 404, "nothing at"),
    ("GET", "/api/items/1/..%2F..%2F..%2Fstore.db", {}, 404, "nothing at"),
    ("GET", "/..%2F.retriever%2Fstore.db", {}, 404, "nothing at"),
    ("GET", "/app.js%2F..%2F..%2Fserver.py", {}, 404, "nothing at"),
    ("GET", "/%2Fetc%2Fpasswd", {}, 404, "nothing at"),
    ("DELETE", "/api/search", {}, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize(("method", "url", "kwargs", "status", "words"), BAD_REQUESTS)
def test_bad_requests_are_one_line_json_errors(client, method, url, kwargs, status, words):
    response = client.request(method, url, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert words in error and "\n" not in error


def test_library_errors_name_their_class_for_clients(client):
    """`type` is the nearest class in retriever.errors: retriever.server.remote raises that one."""
    unknown = client.get("/api/search", params={"item": 999999})
    assert (unknown.status_code, unknown.json()["type"]) == (404, "ItemNotFound")
    big = client.post("/api/search", files={"image": ("big.jpg", b"\xff" * 2 * CAP, "image/jpeg")})
    assert (big.status_code, big.json()["type"]) == (413, "UsageError")  # UploadTooLarge's base
    assert "type" not in client.get("/nowhere").json()  # not a library error


def test_an_index_reindexed_with_another_model_is_refused(tiny_encoder, tmp_path):
    """The loaded model no longer made the index's vectors: searching with it would rank by
    meaningless scores, so the server says to restart it."""
    collection = open_index(make_media(tmp_path / "media"), tiny_encoder)
    with client_for(collection, tiny_encoder) as client:
        assert results(client.get("/api/search", params={"text": "red"}))
        collection.store.set_model(ModelRecord("other-model", "other-weights", 64))
        response = client.get("/api/search", params={"text": "red"})
    assert (response.status_code, response.json()["type"]) == (409, "ModelMismatch")
    assert response.json()["error"].endswith("restart `retriever serve` to load that model")


def test_a_text_item_has_no_thumbnail(client):
    todo = item_id(client, "todo.txt", target="texts")
    response = client.get(f"/api/items/{todo}/thumbnail")
    assert response.status_code == 400
    assert response.json()["error"] == f"item {todo} is a text passage: only images and " \
        "video frames have thumbnails"


def test_non_image_upload_is_a_400_naming_the_upload(client):
    response = client.post("/api/search", files={"image": ("notes.txt", b"hello", "text/plain")})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("uploaded file 'notes.txt': not a readable image")
    assert "retriever-upload" not in error  # the temporary file stays private


def test_uploads_over_the_cap_are_413_declared_or_streamed(client):
    big = b"\xff\xd8" + os.urandom(100 * 1024)
    declared = client.post("/api/search", files={"image": ("big.jpg", big, "image/jpeg")})
    assert declared.status_code == 413
    assert declared.json()["error"] == "the upload is over the 64 kB limit: send a smaller image"

    def chunks():  # no Content-Length: the server must count what arrives
        yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.jpg\"\r\n\r\n"
        for _ in range(10):
            yield os.urandom(16 * 1024)
        yield b"\r\n--b--\r\n"

    streamed = client.post("/api/search", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=b"})
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413 and "over the" in streamed.json()["error"]


def test_thumbnail_is_an_upright_jpeg_made_once(tiny_encoder, monkeypatch, tmp_path):
    root = make_media(tmp_path / "media")  # a fresh index: no cached thumbnails yet
    collection = open_index(root, tiny_encoder)
    made = []
    original = retriever.library.thumbnails.thumbnail_bytes

    def counted(path: Path, size: int) -> bytes:
        made.append(path)
        return original(path, size)

    monkeypatch.setattr(retriever.library.thumbnails, "thumbnail_bytes", counted)
    with client_for(collection, tiny_encoder) as client:
        rotated = item_id(client, "rotated.jpg")
        first = client.get(f"/api/items/{rotated}/thumbnail")
        second = client.get(f"/api/items/{rotated}/thumbnail")
    assert first.status_code == second.status_code == 200
    assert first.headers["content-type"] == "image/jpeg" and first.content[:2] == b"\xff\xd8"
    assert Image.open(io.BytesIO(first.content)).size == (120, 160)  # EXIF rotation applied
    assert second.content == first.content and len(made) == 1  # the second came from the cache
    assert (collection.directory / "thumbs" / "256" / f"{rotated}.jpg").is_file()


def test_file_route_serves_the_indexed_file_only_by_id(client, media):
    root, _ = media
    todo = item_id(client, "todo.txt", target="texts")
    response = client.get(f"/api/items/{todo}/file")
    assert response.status_code == 200 and response.text == "buy red paint"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_file_gone_from_disk_is_404(media, tiny_encoder, tmp_path):
    root = make_media(tmp_path / "media")
    collection = open_index(root, tiny_encoder)
    with client_for(collection, tiny_encoder) as client:
        blue = item_id(client, "blue.jpg")
        (root / "photos" / "blue.jpg").unlink()
        response = client.get(f"/api/items/{blue}/thumbnail")
    assert response.status_code == 404
    assert "is no longer on disk: run `retriever index`" in response.json()["error"]


def test_searches_see_files_indexed_while_serving(tiny_encoder, tmp_path, store_env):
    """On SQLite, then on PostgreSQL: the server reopens the store another writer moved on."""
    root = make_media(tmp_path / "media")
    collection = open_index(root, tiny_encoder)
    with client_for(collection, tiny_encoder) as client:
        query = {"text": "x", "target": "images", "k": 50}
        assert len(results(client.get("/api/search", params=query))) == 5
        write_photo(root / "photos" / "late.jpg", (10, 10, 10))
        open_index(root, tiny_encoder).close()  # another process's `retriever index`, in effect
        found = results(client.get("/api/search", params=query))
    assert len(found) == 6 and str(root / "photos" / "late.jpg") in {r["path"] for r in found}


def test_info_counts_what_the_index_holds(client, media):
    info = client.get("/api/info").json()
    assert (info["images"], info["files"]) == (5, 8)  # 5 photos + red.txt + 2 notes
    assert {key: info["model"][key] for key in ("name", "pretrained", "dim")} == {
        "name": "retriever-tiny", "pretrained": "none", "dim": 64}
    assert info["directory"] == str(media[1].directory.resolve())


def test_the_page_is_served_and_loads_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="results"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset, kind in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        response = client.get(asset)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
    for path in WEB.iterdir():  # offline: no CDN, no external fonts or scripts
        assert "http://" not in path.read_text() and "https://" not in path.read_text(), path


def test_other_host_names_are_refused(client):
    """A web page on another site must not reach the photos by rebinding its DNS name."""
    response = client.get("/api/info", headers={"host": "evil.example"})
    assert response.status_code == 400


def test_every_library_error_maps_to_a_4xx():
    from retriever.server.app import STATUS, UploadTooLarge

    kinds = [k for k in vars(errors).values()
             if isinstance(k, type) and issubclass(k, errors.RetrieverError)] + [UploadTooLarge]
    for kind in kinds:
        status = next(code for base, code in STATUS if issubclass(kind, base))
        assert 400 <= status < 500, kind


def test_a_port_in_use_is_one_line_naming_the_fix():
    with listen("127.0.0.1", 0) as taken:
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(errors.UsageError, match=f"cannot listen on 127.0.0.1:{port} "
                           r"\(Address already in use\): pass another --port"):
            listen("127.0.0.1", port)


DEEP = b"[" * 100_000 + b"]" * 100_000
HOSTILE_BODIES = [
    # (raw JSON body, words in the error): non-finite numbers, deep nesting
    (b'{"text": "x", "add": [{"text": "y", "weight": NaN}]}', "weight must be a number"),
    (b'{"text": "x", "add": [{"text": "y", "weight": Infinity}]}', "weight must be a number"),
    (b'{"text": "x", "sub": [{"text": "y", "weight": -Infinity}]}', "weight must be a number"),
    (b'{"text": "x", "add": [{"text": "y", "weight": 1e400}]}', "weight must be a number"),
    (b'{"text": "x", "min_score": NaN}', "min_score must be a number"),
    (b'{"text": "x", "min_score": -Infinity}', "min_score must be a number"),
    (b'{"text": "x", "after": Infinity}', "after must be a number"),
    (b'{"text": "x", "k": 1e400}', "k must be a whole number"),
    (b'{"text": "x", "k": Infinity}', "k must be a whole number"),
    (b'{"item": NaN}', "item must be a whole number"),
    (b'{"text": "x", "add": [{"item": 99999999999999999999}]}', "item must be a whole number"),
    (DEEP, "nests too deeply"),
    (b'{"text": ' * 50_000 + b'"x"' + b"}" * 50_000, "nests too deeply"),
    (b'{"text": "x", "add": ' + DEEP + b"}", "nests too deeply"),
]


@pytest.mark.parametrize(("body", "words"), HOSTILE_BODIES,
                         ids=[b[:40].decode() for b, _ in HOSTILE_BODIES])
def test_non_finite_and_deep_json_are_400(client, body, words):
    response = client.post("/api/search", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


def test_a_huge_weight_is_that_term_alone(client):
    """1e39 overflows float32: the sum is made in float64, so the term simply dominates."""
    alone = results(client.post("/api/search", json={"text": "blue", "k": 5,
                                                     "match": "semantic"}))  # vectors alone
    huge = results(client.post("/api/search", json={
        "text": "x", "add": [{"text": "blue", "weight": 1e39}], "k": 5, "match": "semantic"}))
    assert [r["id"] for r in huge] == [r["id"] for r in alone]
    assert [r["score"] for r in huge] == pytest.approx([r["score"] for r in alone], abs=1e-5)


def test_weights_near_the_float_limit_weigh_as_their_ratios(client):
    """Only the weights' ratios matter: two terms at 1e308 (their sum overflows a float)
    beside one at 1 give what the two alone, at equal weights, give."""
    huge = results(client.post("/api/search", json={
        "text": "x", "k": 5, "match": "semantic", "add": [{"text": "blue", "weight": 1e308},
                                                          {"text": "red", "weight": 1e308}]}))
    plain = results(client.post("/api/search", json={
        "text": "blue", "k": 5, "match": "semantic", "add": [{"text": "red"}]}))
    assert [r["id"] for r in huge] == [r["id"] for r in plain]
    assert [r["score"] for r in huge] == pytest.approx([r["score"] for r in plain], abs=1e-5)


def test_a_json_body_over_its_cap_is_413(client):
    response = client.post("/api/search", json={"text": "x" * (2 * 1024 * 1024)})
    assert response.status_code == 413 and "send a shorter query" in response.json()["error"]


def indexed(client) -> list[dict]:
    """Every indexed item, of every kind (images, passages, video frames, words in images)."""
    return results(client.get("/api/search", params={"text": "x", "k": 1000, "target": "all"}))


@pytest.fixture
def served(tiny_encoder, tmp_path):
    """A fresh index whose files a test may swap, a secret outside it, and a client."""
    secret = tmp_path / "secret" / "passwd.txt"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:secret\n")
    root = make_media(tmp_path / "media")
    (root / "notes" / "passwd.txt").symlink_to(secret)  # planted before indexing
    (root / "notes" / "alias.txt").symlink_to("todo.txt")  # a link to an indexed file
    (root / "private").mkdir()
    (root / "private" / "plan.txt").write_text("the plan")
    collection = open_index(root, tiny_encoder)
    with client_for(collection, tiny_encoder) as client:
        yield root, secret, client
    collection.close()


def test_a_symlink_out_of_the_indexed_folders_is_not_served(served):
    """The link out is never indexed, and no item's file route answers with its target's
    bytes; a link to a file inside the folders is indexed and served."""
    root, secret, client = served
    found = indexed(client)
    paths = {r["path"] for r in found}
    assert str(root / "notes" / "passwd.txt") not in paths
    assert str(root / "notes" / "todo.txt") in paths  # passages are searched too
    alias = [r["id"] for r in found if r["path"] == str(root / "notes" / "alias.txt")]
    assert alias and client.get(f"/api/items/{alias[0]}/file").text == "buy red paint"
    for item in {r["id"] for r in found}:
        assert "root:x" not in client.get(f"/api/items/{item}/file").text, item


@pytest.mark.parametrize("swap", ["file for a symlink", "folder for a symlink", "bytes edited"])
def test_a_file_swapped_after_indexing_is_not_served(served, swap):
    root, secret, client = served
    found = results(client.get("/api/search", params={"text": "x", "k": 1000, "target": "all"}))
    plan = next(r["id"] for r in found if r["path"] == str(root / "private" / "plan.txt"))
    photo = next(r["id"] for r in found if r["path"] == str(root / "photos" / "blue.jpg"))
    if swap == "file for a symlink":
        (root / "private" / "plan.txt").unlink()
        (root / "private" / "plan.txt").symlink_to(secret)
    elif swap == "folder for a symlink":  # a file of the same name and size
        (secret.parent / "plan.txt").write_text("the sec!")
        (root / "private" / "plan.txt").unlink()
        (root / "private").rmdir()
        (root / "private").symlink_to(secret.parent)
    else:
        (root / "private" / "plan.txt").write_text("the PLAN")
    (root / "photos" / "blue.jpg").unlink()
    (root / "photos" / "blue.jpg").symlink_to(root / "photos" / "red.jpg")
    for url in (f"/api/items/{plan}/file", f"/api/items/{photo}/file",
                f"/api/items/{photo}/thumbnail"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "root:x" not in response.text and "sec!" not in response.text
        assert "secret" not in response.text  # nor where the link points


def test_a_read_only_index_answers_searches_and_thumbnails_without_writing(
        tmp_path, tiny_encoder, monkeypatch):
    root = make_media(tmp_path / "media")
    open_index(root, tiny_encoder).close()
    before = sorted(p.name for p in (root / ".retriever").iterdir())
    monkeypatch.setattr("retriever.library.collection._writable", lambda directory: False)
    collection = Collection.open(root / ".retriever")
    assert collection.read_only
    with client_for(collection, tiny_encoder) as web:
        hits = results(web.get("/api/search", params={"text": "red", "target": "images"}))
        thumb = web.get(hits[0]["thumbnail"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(thumb.content)).size[0] > 0
    collection.close()
    assert sorted(p.name for p in (root / ".retriever").iterdir()) == before  # no thumbs/
