"""`GET /api/items/{id}/file` reads an indexed file once: not hashed whole, then read again.

A file at its stored path, reached through real folders only (retriever.media.in_place), with
the stored size and mtime, is sent as it is read (retriever.library.thumbnails); any other is
hashed whole first, once per identity, as before. Bytes read are counted at the Python
file-object level (every `read` of the files the route opens) and by /proc/self/io's rchar
(every read() of the process).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from index.kinds import IMAGE
from index.records import FileRecord, ItemRecord, ModelRecord
from retriever.library import thumbnails
from retriever.library.collection import Collection
from tests.helpers import client_for

BIG = 200 * 2**20
DIM = 8


class Counted(io.BufferedReader):
    """A binary file that adds every byte its `read` returns to `total`."""

    total = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        Counted.total += len(data)
        return data


@pytest.fixture
def counted(monkeypatch):
    """Every file the route opens (thumbnails' `open`) counts the bytes read from it."""
    def opening(file, mode="rb", opener=None):
        assert mode == "rb"
        return Counted(io.FileIO(file, "rb", opener=opener))

    Counted.total = 0
    monkeypatch.setattr(thumbnails, "open", opening, raising=False)
    return Counted


def rchar() -> int:
    return int(next(line.split()[1] for line in Path("/proc/self/io").read_text().splitlines()
                    if line.startswith("rchar:")))


def indexed(folder: Path, paths: list[Path]) -> tuple[Collection, list[int]]:
    """An index whose store records `paths` as they are now (sha256, size, mtime): what
    `retriever index` would record; the item id of each."""
    collection = Collection.open(folder)
    collection.bind_model(ModelRecord("m", "none", DIM))
    records = []
    for i, path in enumerate(paths):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        now = path.stat()
        records.append((FileRecord(str(path), IMAGE, digest.hexdigest(), now.st_size,
                                   now.st_mtime),
                        [ItemRecord(IMAGE, 0, None, np.eye(DIM, dtype=np.float32)[i % DIM])]))
    with collection.writing():
        collection.write_files(records)
    items = collection.reads.items(list(range(1, len(paths) + 1)))
    ids = {view.path: item for item, view in items.items()}
    return collection, [ids[str(path)] for path in paths]


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve-once") / "media" / "long.mp4"
    path.parent.mkdir()
    with open(path, "wb") as fh:
        block = bytes(range(256)) * 4096  # 1 MiB
        for n in range(BIG // len(block)):
            fh.write(block[n % 256:] + block[:n % 256])
    return path


def test_a_200_mb_file_is_read_once_to_be_served(big, tmp_path, tiny_encoder, counted):
    collection, [item] = indexed(tmp_path / "index", [big])
    expected = hashlib.sha256(big.read_bytes()).hexdigest()
    with client_for(collection, tiny_encoder) as client:
        for _ in range(2):  # the first request and a later one
            counted.total, before = 0, rchar()
            response = client.get(f"/api/items/{item}/file")
            assert response.status_code == 200
            assert hashlib.sha256(response.content).hexdigest() == expected
            assert counted.total == BIG  # each byte read once: sent, never hashed first
            assert BIG <= rchar() - before < BIG * 5 // 4
        os.utime(big, (1_000_000_000, 1_000_000_000))  # same bytes, another mtime
        counted.total = 0
        response = client.get(f"/api/items/{item}/file")
        assert response.status_code == 200 and len(response.content) == BIG
        assert counted.total == 2 * BIG  # hashed whole first: not as stored any more
    collection.close()


def test_a_folder_swapped_for_a_link_to_a_look_alike_is_refused(tmp_path, tiny_encoder,
                                                                counted):
    """Same name, size and mtime (set by whoever made the look-alike) outside the indexed
    folders: reached through a symlink, so hashed first, and refused."""
    plan = tmp_path / "media" / "private" / "plan.txt"
    plan.parent.mkdir(parents=True)
    plan.write_text("the plan")
    secret = tmp_path / "secret" / "plan.txt"
    secret.parent.mkdir()
    secret.write_text("the sec!")
    collection, [item] = indexed(tmp_path / "index", [plan])
    stamp = plan.stat()
    os.utime(secret, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    shutil.rmtree(plan.parent)
    plan.parent.symlink_to(secret.parent)
    with client_for(collection, tiny_encoder) as client:
        response = client.get(f"/api/items/{item}/file")
    collection.close()
    assert response.status_code == 404 and "changed since it was indexed" in response.text
    assert "sec!" not in response.text
    assert counted.total == len("the sec!")  # hashed, never sent


def test_through_a_linked_folder_a_file_is_hashed_once_for_many_ranges(tmp_path, tiny_encoder,
                                                                      counted):
    """A root the user reached through a symlink: the stored path is not a real folder's,
    so the file is hashed whole before it is used; once, for every range a <video> asks."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "clip.mp4").write_bytes(bytes(range(256)) * 400)
    (tmp_path / "linked").symlink_to(real)
    clip = tmp_path / "linked" / "clip.mp4"
    collection, [item] = indexed(tmp_path / "index", [clip])
    data = clip.read_bytes()
    with client_for(collection, tiny_encoder) as client:
        for first in range(0, 5000, 1000):
            part = client.get(f"/api/items/{item}/file",
                              headers={"Range": f"bytes={first}-{first + 9}"})
            assert part.status_code == 206 and part.content == data[first:first + 10]
    collection.close()
    assert counted.total == len(data) + 5 * 10
