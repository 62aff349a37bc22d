"""`--in FOLDER` is that folder and what lies below it: on a path component (`2024` is not
`2024-old`), case-sensitive (`Cats` is not `cats`), LIKE's wildcards and escapes taken as
letters; a file given is that file. The same in every command that takes a folder (search
from the CLI and the server, duplicates, tag, which writes) and on both stores."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from retriever.library.collection import Collection
from retriever.media.paths import key_path, path_key
from retriever.server.app import ServerSettings, create_app

from .helpers import TINY_ARGS, rows, write_photo

PHOTOS = [b"2024/a.jpg", b"2024/sub/b.jpg", b"2024-old/c.jpg", b"20240/d.jpg", b"2024.jpg",
          b"Cats/e.jpg", b"cats/f.jpg", b"100%/g.jpg", b"1000/h.jpg", b"a_b/i.jpg",
          b"axb/j.jpg", b"back\\slash/k.jpg", b"back\\slashes/l.jpg", b"n\xffo/m.jpg",
          b"n\\xffo/n.jpg"]
# what --in names, relative to the root
FOLDERS = [b"2024", b"2024/", b"Cats", b"cats", b"100%", b"a_b", b"back\\slash", b"n\xffo",
           b"n\\xffo", b"2024/a.jpg", b"2024/sub", b"", b"nowhere"]


def below(root: Path, name: bytes) -> Path:
    return Path(os.fsdecode(os.fsencode(root) + b"/" + name)) if name else root


def expected(root: Path, folder: Path) -> set[Path]:
    """The photos `--in folder` must give, decided by path components, not by SQL."""
    photos = {below(root, p) for p in PHOTOS}
    return {p for p in photos if p == folder or folder in p.parents}


@pytest.fixture
def library(tmp_path, cli, store_env):
    root = tmp_path / "X"
    first = write_photo(below(root, PHOTOS[0]), (200, 30, 30))
    for name in PHOTOS[1:]:
        below(root, name).parent.mkdir(parents=True, exist_ok=True)
        below(root, name).write_bytes(first.read_bytes())
    db = tmp_path / "index"
    done = cli("index", root, "--db", db, *TINY_ARGS)
    assert done.exit_code == 0, done.output
    return root, db


def searched(cli, db: Path, folder: str) -> set[Path]:
    found = rows(cli("search", "a photo", "--in", folder, "-k", "100", "--to", "images",
                     "--json", "--db", db, "--no-server"))
    return {key_path(r["path"]) for r in found}


def test_search_in_a_folder_is_that_folder_and_below(library, cli):
    root, db = library
    for name in FOLDERS:
        folder = below(root, name)
        arg = os.fsdecode(os.fsencode(folder) + (b"/" if name.endswith(b"/") else b""))
        assert searched(cli, db, arg) == expected(root, folder), name
    assert searched(cli, db, str(root.parent)) == expected(root, root)  # the index's parent
    assert searched(cli, db, "/") == expected(root, root)


def test_a_relative_folder_is_taken_from_the_current_folder(library, cli, monkeypatch):
    root, db = library
    monkeypatch.chdir(root / "2024-old")
    assert searched(cli, db, "../2024") == expected(root, root / "2024")
    assert searched(cli, db, ".") == expected(root, root / "2024-old")


def test_the_server_filters_by_a_folder_as_results_show_it(library, tiny_encoder):
    root, db = library
    collection = Collection.open(db)
    app = create_app(collection, tiny_encoder, ServerSettings())
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for name in FOLDERS:
            folder = below(root, name)
            key = path_key(folder) + ("/" if name.endswith(b"/") else "")
            found = client.get("/api/search", params={"text": "a photo", "in": key, "k": 100})
            assert found.status_code == 200, found.text
            assert {key_path(r["path"]) for r in found.json()["results"]} == \
                expected(root, folder), name
    collection.close()


def test_duplicates_in_a_folder_are_that_folders(library, cli):
    root, db = library
    for name in FOLDERS:
        folder = below(root, name)
        result = cli("duplicates", "--in", folder, "--db", db, "--json")
        groups = rows(result)
        copies = {key_path(c["path"]) for g in groups for c in g["copies"]}
        want = expected(root, folder)
        assert copies == (want if len(want) > 1 else set()), name  # a group has two or more


def test_tag_in_a_folder_tags_that_folder_only(library, cli):
    root, db = library
    for i, name in enumerate(FOLDERS):
        folder = below(root, name)
        labels = [f"first{i}", f"second{i}"]  # a label set of its own: replaces no other
        tagged = rows(cli("tag", *labels, "--in", folder, "--db", db, "--json"))
        assert {key_path(t["path"]) for t in tagged} == expected(root, folder), name
        for label in labels:
            search = cli("search", "a photo", "--tag", label, "-k", "100", "--json", "--db", db,
                         "--no-server")
            if not tagged:  # no image was tagged with this set: its labels are unknown tags
                assert search.exit_code == 2 and f"--tag {label}: no image" in search.output
                continue
            found = rows(search)
            assert {key_path(r["path"]) for r in found} == {
                key_path(t["path"]) for t in tagged if label in t["labels"]}, (name, label)


@pytest.mark.postgres
@pytest.mark.parametrize("collation", ["C", "ICU en-US"])
def test_each_store_read_filters_the_same_under_any_database_collation(postgres, collation):
    """PostgreSQL compares text by the database's collation: a language's (ICU) sorts case
    and punctuation apart from bytes, so the folder range must not depend on it."""
    from index.kinds import IMAGE
    from index.records import FileRecord, ItemRecord, ModelRecord
    from index.store import Store

    from .helpers import vec

    name = f"retriever_test_{uuid.uuid4().hex[:16]}"
    icu = " LOCALE_PROVIDER icu ICU_LOCALE 'en-US'" if collation != "C" else ""
    try:
        postgres._admin(f'CREATE DATABASE "{name}" TEMPLATE template0{icu}')
    except Exception as error:  # a server built without ICU
        pytest.skip(f"no {collation} database: {error}")
    postgres.made.append(name)
    store = Store(make_url(postgres.admin_url).set(database=name)
                  .render_as_string(hide_password=False))
    root = Path("/X")
    store.set_model(ModelRecord("m", "none", 8, "f" * 64))
    store.write_files([(FileRecord(path_key(below(root, p)), IMAGE, f"h{i}", 1, 1.0),
                        [ItemRecord(IMAGE, 0, None, vec(i))]) for i, p in enumerate(PHOTOS)])
    for folder in [below(root, n) for n in FOLDERS] + [Path("/")]:
        want = {path_key(p) for p in expected(root, folder)}
        files = store.image_files(path_key(folder))
        ids = {f.id for f in files}
        assert {f.path for f in files} == want, folder
        assert set(store.item_ids_where(IMAGE, path_key(folder)).tolist()) == ids, folder
        assert set(store.vectors(IMAGE, path_key(folder))[0].tolist()) == ids, folder
    store.close()
    postgres.drop_databases()
