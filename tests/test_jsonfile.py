"""retriever.jsonfile: the one bounded reader of the small files retriever keeps.

Whatever sits at the name (a FIFO nobody writes, a link to /dev/zero, a folder, a huge or deeply
nested file, bytes that are not JSON), the answer comes at once: the value, FileNotFoundError
for nothing there, or one SmallFileError naming the file and the problem in one line.
"""

from __future__ import annotations

import json

import pytest

from retriever.errors import SmallFileError
from retriever.jsonfile import MAX_BYTES, read_json, read_small

from .helpers import SHAPES, plant

PROBLEMS = {"fifo": "not a regular file", "/dev/zero": "not a regular file",
            "directory": "not a regular file", "huge": f"larger than {MAX_BYTES} bytes",
            "nested": "nested too deeply", "truncated": "not valid JSON",
            "not utf-8": "not valid JSON", "empty": "not valid JSON"}


@pytest.mark.parametrize("shape", SHAPES)
def test_anything_but_a_small_json_file_is_one_line_naming_it(tmp_path, shape):
    path = tmp_path / "roots.json"
    plant(path, shape)
    with pytest.raises(SmallFileError) as caught:
        read_json(path)
    assert caught.value.path == path and PROBLEMS[shape] in caught.value.problem
    line = str(caught.value)
    assert line.startswith(f"{path}: ") and "\n" not in line


def test_a_small_json_file_is_read_and_one_at_the_cap_too(tmp_path):
    path = tmp_path / "indexes.json"
    path.write_text(json.dumps({"indexes": {"/a/.retriever": ["/a"]}}))
    assert read_json(path) == {"indexes": {"/a/.retriever": ["/a"]}}
    path.write_bytes(b"[" + b" " * (MAX_BYTES - 2) + b"]")  # exactly MAX_BYTES
    assert read_json(path) == []
    with pytest.raises(SmallFileError, match="larger than 100 bytes"):
        read_json(path, max_bytes=100)
    link = tmp_path / "link.json"  # a link to a regular file: a registry kept in dotfiles
    link.symlink_to(path)
    assert read_json(link) == []


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "serve.json")
    with pytest.raises(FileNotFoundError):
        read_small(tmp_path / "thumbs" / "256" / "1.jpg", inside=tmp_path)


@pytest.mark.parametrize("linked", ["the file", "its folder"])
def test_a_cache_file_is_never_read_through_a_link_below_its_cache(tmp_path, linked):
    cache = tmp_path / "index"
    secret = tmp_path / "elsewhere" / "1.jpg"
    secret.parent.mkdir()
    secret.write_bytes(b"the user's own photo")
    (cache / "thumbs").mkdir(parents=True)
    if linked == "the file":
        (cache / "thumbs" / "256").mkdir()
        (cache / "thumbs" / "256" / "1.jpg").symlink_to(secret)
    else:
        (cache / "thumbs" / "256").symlink_to(secret.parent)
    target = cache / "thumbs" / "256" / "1.jpg"
    assert read_small(target) == b"the user's own photo"  # followed where links are fine
    with pytest.raises(SmallFileError, match="a symlink") as caught:
        read_small(target, inside=cache)
    assert b"own photo" not in str(caught.value).encode()


def test_a_cache_reached_through_a_linked_index_folder_is_read(tmp_path):
    """Only names below `inside` are checked: the index folder itself may be a link."""
    real = tmp_path / "real-index"
    (real / "thumbs" / "256").mkdir(parents=True)
    (real / "thumbs" / "256" / "1.jpg").write_bytes(b"a thumbnail")
    (tmp_path / "index").symlink_to(real)
    cache = tmp_path / "index"
    assert read_small(cache / "thumbs" / "256" / "1.jpg", inside=cache) == b"a thumbnail"
    plant(real / "thumbs" / "256" / "2.jpg", "fifo")
    with pytest.raises(SmallFileError, match="not a regular file"):
        read_small(cache / "thumbs" / "256" / "2.jpg", inside=cache)
