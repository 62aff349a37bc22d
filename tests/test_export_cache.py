"""The ONNX export cache is checked, not trusted: every file of an export truncated, overwritten,
missing, made a folder or a FIFO is found by its checksum (meta.json's own included) and the
export is made again; a cache that cannot be written (read-only, a file where a folder should
be, a full disk) encodes in torch with one note. The vectors are right every time."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retriever.encoding import onnx_export, ort_encoder
from retriever.encoding.backends import export_dir, open_encoder, user_exports
from retriever.encoding.clip_encoder import ClipEncoder
from retriever.encoding.ort_encoder import META, TEXTUAL, TOKENIZER, VISUAL, OrtEncoder
from retriever.encoding.specs import ModelId

from .helpers import user_settings, write_photo

TINY_ID = ModelId("retriever-tiny", "none")
TEXTS = ["a red disc", "blue sky over a green field", "word " * 60]
FILES = [VISUAL, VISUAL + ".data", TEXTUAL, TEXTUAL + ".data", TOKENIZER, META]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_encoder) -> Path:
    """A real export of retriever-tiny (random weights), copied into each test's cache."""
    return onnx_export.export(tiny_encoder.loaded, tmp_path_factory.mktemp("onnx") / "tiny")


@pytest.fixture
def exports(monkeypatch, pristine) -> list[str]:
    """The graphs each export writes (the names): torch.onnx's ~10 s per export is replaced by
    copying the pristine export's graphs; everything else export() does is real."""
    written: list[str] = []

    def copy_graph(module, example, path: Path, max_tokens=None) -> None:
        written.append(path.name)
        for name in (path.name, path.name + ".data"):
            shutil.copyfile(pristine / name, path.with_name(name))

    monkeypatch.setattr(onnx_export, "_export", copy_graph)
    return written


@pytest.fixture
def cache(pristine) -> Path:
    """This test's export of retriever-tiny, where open_encoder looks for it."""
    folder = export_dir(user_cache(), TINY_ID)
    shutil.copytree(pristine, folder)
    return folder


def user_cache() -> Path:
    """The user's export cache (this test's $XDG_CACHE_HOME), as the CLI passes it."""
    return user_exports(user_settings())


def pictures() -> list[Image.Image]:
    return [Image.new("RGB", (40, 30), c) for c in [(200, 0, 0), (0, 0, 200), (20, 160, 20)]]


def assert_vectors_right(encoder, reference: ClipEncoder) -> None:
    for got, want in ((encoder.encode_texts(TEXTS), reference.encode_texts(TEXTS)),
                      (encoder.encode_images(pictures()), reference.encode_images(pictures()))):
        assert got.shape == want.shape
        assert ((got * want).sum(1) > 0.9999).all()


def notes(err: str) -> list[str]:
    """stderr's lines but the note that retriever-tiny has random weights (asked for here)."""
    return [line for line in err.splitlines() if line.strip() and "random weights" not in line]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def overwrite(path: Path) -> None:
    """4 kB of noise in the middle (all of a smaller file); meta.json: its dim edited, still
    valid JSON."""
    if path.name == META:
        meta = json.loads(path.read_text())
        path.write_text(json.dumps({**meta, "dim": meta["dim"] + 1}))
        return
    size = path.stat().st_size
    start = max(0, size // 2 - 2048)
    with path.open("r+b") as fh:
        fh.seek(start)
        fh.write(np.random.default_rng(0).bytes(min(4096, size)))


def remove(path: Path) -> None:
    path.unlink()


def folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


DAMAGES = {"truncated": truncate, "overwritten": overwrite, "missing": remove,
           "a folder": folder, "a FIFO": fifo}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_export_is_made_again_and_gives_the_right_vectors(
        cache, exports, tiny_encoder, capsys, name, damage):
    DAMAGES[damage](cache / name)

    encoder = open_encoder(TINY_ID, "onnx", user_cache())

    assert isinstance(encoder, OrtEncoder) and exports == [VISUAL, TEXTUAL]  # made again, once
    assert_vectors_right(encoder, tiny_encoder)
    told = notes(capsys.readouterr().err)
    assert len(told) == 1 and "could not be used" in told[0] and name in told[0]


def test_a_sound_export_is_summed_once_then_trusted_until_a_file_changes(
        cache, exports, monkeypatch):
    summed: list[str] = []
    real = ort_encoder.checksum
    monkeypatch.setattr(ort_encoder, "checksum", lambda path: summed.append(path.name) or
                        real(path))
    open_encoder(TINY_ID, "onnx", user_cache())
    assert sorted(summed) == sorted(FILES[:-1])  # every file once (the copy is new to it)
    summed.clear()
    open_encoder(TINY_ID, "onnx", user_cache())
    assert summed == []  # remembered by size, mtime, ctime, inode
    overwrite(cache / (VISUAL + ".data"))
    open_encoder(TINY_ID, "onnx", user_cache())
    assert set(summed) == {VISUAL + ".data"} and exports == [VISUAL, TEXTUAL]


def cache_root() -> Path:
    return Path(os.environ["XDG_CACHE_HOME"])


@pytest.mark.parametrize("blocked", ["retriever", "retriever/onnx"])
def test_a_cache_path_that_is_a_file_encodes_in_torch_with_one_note(
        exports, tiny_encoder, capsys, blocked):
    (cache_root() / blocked).parent.mkdir(parents=True, exist_ok=True)
    (cache_root() / blocked).write_text("not a folder")

    encoder = open_encoder(TINY_ID, "onnx", user_cache())

    assert isinstance(encoder, ClipEncoder)
    assert_vectors_right(encoder, tiny_encoder)
    told = notes(capsys.readouterr().err)
    assert len(told) == 1 and "cannot write the ONNX export" in told[0]


def test_an_export_folder_that_is_a_file_is_replaced(exports, tiny_encoder):
    target = export_dir(user_cache(), TINY_ID)
    target.parent.mkdir(parents=True)
    target.write_text("not an export")
    encoder = open_encoder(TINY_ID, "onnx", user_cache())
    assert isinstance(encoder, OrtEncoder) and target.is_dir()
    assert_vectors_right(encoder, tiny_encoder)


def test_a_full_disk_during_the_export_encodes_in_torch_and_leaves_nothing(
        monkeypatch, tiny_encoder, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx_export, "_export", full)
    encoder = open_encoder(TINY_ID, "onnx", user_cache())
    assert isinstance(encoder, ClipEncoder)
    assert_vectors_right(encoder, tiny_encoder)
    told = notes(capsys.readouterr().err)
    assert len(told) == 1 and os.strerror(errno.ENOSPC) in told[0]
    assert list(export_dir(user_cache(), TINY_ID).parent.iterdir()) == []  # no half export kept


def test_search_on_an_index_with_an_unwritable_cache_answers_as_torch(
        tmp_path, cli, media_folder):
    db = tmp_path / "db"
    assert cli("index", media_folder, "--db", db, "--model", "retriever-tiny",
               "--pretrained", "none").exit_code == 0
    want = cli("search", "red", "--db", db, "--json", "--backend", "torch")
    (cache_root() / "retriever").write_text("not a folder")

    got = cli("search", "red", "--db", db, "--json", "--backend", "onnx")

    assert got.exit_code == 0, got.output
    assert [json.loads(line)["path"] for line in got.stdout.splitlines()] == [
        json.loads(line)["path"] for line in want.stdout.splitlines()]
    told = notes(got.stderr)
    assert len(told) == 1 and told[0].startswith("note: cannot write the ONNX export")


def test_the_real_exporter_remakes_an_overwritten_weights_file(tiny_encoder, cache, capsys):
    """As the issue found it: 4 kB overwritten in visual.onnx.data, without a stand-in."""
    overwrite(cache / (VISUAL + ".data"))
    encoder = open_encoder(TINY_ID, "onnx", user_cache())
    assert isinstance(encoder, OrtEncoder)
    assert_vectors_right(encoder, tiny_encoder)
    assert "could not be used" in capsys.readouterr().err


nobody = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run a command as an unprivileged user")


@nobody
@pytest.mark.parametrize("export", ["none", "damaged"])
def test_search_by_a_user_who_cannot_write_the_cache(pristine, export):
    """For real: the cache belongs to root; `nobody` searches an index with --backend onnx."""
    shared = Path(tempfile.mkdtemp(prefix="retriever-ro-cache-"))
    try:
        shared.chmod(0o755)
        media = shared / "media"
        write_photo(media / "red.jpg", (220, 30, 30))
        env = {**os.environ, "HOME": str(shared), "HF_HOME": str(shared / "hf"),
               "XDG_CACHE_HOME": str(shared / "cache"), "XDG_DATA_HOME": str(shared / "data"),
               "RETRIEVER_BACKEND": "torch", "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("RETRIEVER_STORE_URL", None)
        cli = [sys.executable, str(ROOT / "cli.py")]
        subprocess.run([*cli, "index", str(media), "--db", str(shared / "db"), "--model",
                        "retriever-tiny", "--pretrained", "none"], env=env, check=True,
                       capture_output=True, timeout=300)
        onnx = shared / "cache" / "retriever" / "onnx"
        onnx.mkdir(parents=True)
        if export == "damaged":
            key = export_dir(onnx, TINY_ID)
            shutil.copytree(pristine, key)
            overwrite(key / (VISUAL + ".data"))
        for path in (shared, *shared.rglob("*")):
            path.chmod(0o555 if path.is_dir() else 0o444)
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cli, "search",
             "red", "--db", str(shared / "db"), "--json", "--backend", "onnx"],
            env=env, capture_output=True, text=True, cwd=shared, timeout=300)
        assert done.returncode == 0, done.stderr
        assert [json.loads(line)["path"] for line in done.stdout.splitlines()] == [
            str(media / "red.jpg")]
        told = notes(done.stderr)
        assert len(told) == 1 and told[0].startswith("note: cannot write the ONNX export"), told
    finally:
        for path in (shared, *shared.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("damage", ["truncated", "two tokens swapped"])
def test_a_damaged_tokenizer_copy_is_written_again(cache, tiny_encoder, damage):
    """tokenizer.bpe, the quick copy of tokenizer.json's tables made on first use: a damaged
    one with as many lines as before is caught by its checksum too."""
    OrtEncoder(cache).encode_texts(TEXTS)  # writes it
    copy = cache / "tokenizer.bpe"
    lines = copy.read_bytes().split(b"\n")
    if damage == "truncated":
        lines = lines[: len(lines) // 2]
    else:  # "red" reads as "blue" and "blue" as "red"; same lines, same size
        i, j = lines.index(b"red</w>"), lines.index(b"blue</w>")
        lines[i], lines[j] = lines[j], lines[i]
    copy.write_bytes(b"\n".join(lines))
    assert_vectors_right(open_encoder(TINY_ID, "onnx", user_cache()), tiny_encoder)
