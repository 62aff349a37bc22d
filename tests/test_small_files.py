"""Small JSON files, damaged or replaced, through the commands that read them (issue 20, class
11): the user registry (`retriever indexes`, `index`, `info` found from inside a folder),
roots.json (`info`, a registry rebuild) and, in serve.json's place, a server's socket
(`search`'s server discovery, retriever.server.discovery): damaged, it is not a socket.

Each command runs as a subprocess, as a user runs it, with a time limit generous for a loaded
machine (a hang fails the test instead of stalling the suite) and its data segment capped
(reading /dev/zero fails the test instead of filling the machine's memory). Every case must give
the right answer or one line, never a hang or a traceback; a damaged registry is kept aside and
rebuilt from the indexes' own roots.json, and the indexes it still names are listed again.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from retriever.library.collection import Collection
from retriever.library.locations import REGISTRY_FILE, ROOTS_FILE, register, registry_path
from retriever.server.discovery import SOCKET_FILE
from retriever.server.remote import find_server

from .helpers import SHAPES, plant, user_settings, write_photo

ROOT = Path(__file__).resolve().parents[1]
WAIT = 300  # seconds: a cold CLI takes a few on a loaded 2-core machine; a hang, forever
MEMORY = 2 << 30  # bytes of data segment a command may use: torch and a search fit in it
TINY = ("--model", "retriever-tiny", "--pretrained", "none")


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`retriever ARGS` in a subprocess, in this test's environment (its XDG folders)."""
    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (MEMORY, MEMORY))

    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=WAIT, cwd=cwd,
                          env={**os.environ, "COLUMNS": "1000"}, preexec_fn=cap_memory)


def warnings_in(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in done.stderr, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("warning:")]


def listed(done: subprocess.CompletedProcess[str]) -> set[str]:
    """The index folders `retriever indexes --json` printed."""
    assert done.returncode == 0, done.stderr
    return {json.loads(line)["index"] for line in done.stdout.splitlines()}


@pytest.fixture
def two_indexes(tmp_path) -> list[Path]:
    """Two registered indexes, each kept apart from the folder it covers (so only the registry
    leads from the folder to its index), each with a store and its roots.json."""
    indexes = []
    for name in ("holiday", "work"):
        (tmp_path / name).mkdir()
        index = tmp_path / "indexes" / name
        Collection.open(index).close()
        register(index, [tmp_path / name], user_settings().data_dir)
        indexes.append(index.resolve())
    return indexes


def damage_registry(shape: str, indexes: list[Path]) -> bytes | None:
    """Put `shape` where the registry is; the bytes it then holds, if it is a file."""
    path = registry_path(user_settings().data_dir)
    good = path.read_text()
    path.unlink()
    text = {  # damaged, yet still naming both indexes
        "truncated": good[: good.rindex("]")],  # cut before its last closing brackets
        "a list": json.dumps([str(i) for i in indexes]),
        "another shape": json.dumps({"indexes": [[str(i), []] for i in indexes]}),
        "huge": good[:-1] + ', "padding": "' + "x" * (1 << 20) + '"}',
        "numbers": "[1, 2.5, -3]",
    }.get(shape)
    if text is None:
        plant(path, shape)
    else:
        path.write_text(text)
    return path.read_bytes() if path.is_file() and not path.is_symlink() else None


NAMING = ("truncated", "a list", "another shape", "huge")  # shapes that still name both indexes


@pytest.mark.parametrize("shape", [*SHAPES, "a list", "another shape", "numbers"])
def test_a_damaged_registry_is_kept_aside_and_rebuilt_with_one_line(two_indexes, shape):
    damaged = damage_registry(shape, two_indexes)
    done = run("indexes", "--json")
    found = listed(done)
    assert found == ({str(i) for i in two_indexes} if shape in NAMING else set())
    [line] = warnings_in(done)
    assert str(registry_path(user_settings().data_dir)) in line and "damaged" in line
    [aside] = registry_path(user_settings().data_dir).parent.glob(f"{REGISTRY_FILE}.damaged-*")
    assert aside.is_symlink() if shape == "/dev/zero" else aside.exists()
    if damaged is not None:
        assert aside.read_bytes() == damaged  # kept as it was
    again = run("indexes", "--json")  # the rebuilt registry is sound: no second warning
    assert listed(again) == found and not warnings_in(again)


@pytest.mark.parametrize("shape", ["truncated", "fifo"])
def test_an_index_run_on_a_damaged_registry_forgets_no_other_index(two_indexes, tmp_path,
                                                                   shape):
    damage_registry(shape, two_indexes)
    photos = tmp_path / "photos"
    write_photo(photos / "red.jpg", (220, 30, 30))
    done = run("index", photos, "--db", tmp_path / "indexes" / "photos", *TINY)
    assert done.returncode == 0, done.stderr
    assert len(warnings_in(done)) == 1
    found = listed(run("indexes", "--json"))
    new = str((tmp_path / "indexes" / "photos").resolve())
    assert found == ({new, *map(str, two_indexes)} if shape == "truncated" else {new})


def test_a_folder_finds_its_index_through_a_damaged_registry(two_indexes, tmp_path):
    damage_registry("truncated", two_indexes)
    done = run("info", cwd=tmp_path / "work")
    assert done.returncode == 0, done.stderr
    assert f"index     {two_indexes[1]}" in done.stdout
    assert len(warnings_in(done)) == 1


@pytest.mark.parametrize("shape", [*SHAPES, "a list", "numbers"])
def test_a_damaged_roots_json_is_not_recorded_in_info_and_skipped_by_a_rebuild(
        two_indexes, shape):
    roots = two_indexes[0] / ROOTS_FILE
    roots.unlink()
    if shape in ("a list", "numbers"):
        roots.write_text({"a list": '["/holiday"]', "numbers": '{"roots": [1, 2]}'}[shape])
    else:
        plant(roots, shape)
    done = run("info", "--db", two_indexes[0], "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["locations"]["roots"] == "(not recorded)"
    assert not warnings_in(done)
    damage_registry("truncated", two_indexes)  # a rebuild reads both roots.json
    rebuilt = run("indexes", "--json")
    assert listed(rebuilt) == {str(two_indexes[1])} and len(warnings_in(rebuilt)) == 1


@pytest.mark.parametrize("shape", [*SHAPES, "a list", "numbers"])
def test_a_damaged_server_socket_means_no_server(tmp_path, shape):
    """find_server, which every `retriever search` asks first, answers None at once."""
    index = tmp_path / "index"
    index.mkdir()
    path = index / SOCKET_FILE
    if shape in ("a list", "numbers"):
        path.write_text({"a list": '["http://127.0.0.1:1"]', "numbers": "8765"}[shape])
    else:
        plant(path, shape)
    answers: list[object] = []
    asking = threading.Thread(target=lambda: answers.append(find_server(index)), daemon=True)
    asking.start()
    asking.join(WAIT)
    if asking.is_alive():  # blocked opening the FIFO: open its other end to let it go
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    assert answers == [None]


@pytest.mark.parametrize("shape", ["fifo", "nested"])
def test_search_with_a_damaged_server_socket_searches_here(tmp_path, shape):
    photos = tmp_path / "photos"
    write_photo(photos / "red.jpg", (220, 30, 30))
    index = tmp_path / "index"
    assert run("index", photos, "--db", index, *TINY).returncode == 0
    plant(index / SOCKET_FILE, shape)
    done = run("search", "red", "--db", index, "--paths-only")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str((photos / "red.jpg").resolve())]
    assert not warnings_in(done)
