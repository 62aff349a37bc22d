"""Hostile input to the real CLI: bad arguments and environment values, and files whose names
and contents are terminal markup or control characters.

Every bad value must end in an exit code (2: a bad argument, 1: an error), exactly one line on
stderr and no traceback. Text from files is printed as plain text with controls made visible.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import cli
from retriever.server.discovery import socket_paths

from .helpers import indexed_media

TINY = ("--model", "retriever-tiny", "--pretrained", "none")
# Any control character but the newline that ends a line (C0, DEL, C1, line/bidi controls).
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def media(tmp_path_factory, tiny_encoder):
    yield from indexed_media(tmp_path_factory.mktemp("hostile"), tiny_encoder)


def invoke(*args: object, env: dict[str, str] | None = None, cwd: Path | None = None):
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as patch:
        if cwd is not None:
            patch.chdir(cwd)
        return runner.invoke(cli.app, [str(a) for a in args], env=env)


def assert_one_line_error(result, code: int) -> None:
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit), f"{type(result.exception).__name__}: {result.exception}"
    assert "Traceback" not in result.output
    # "note: retriever-tiny built with random weights" (retriever.encoding.models) may come first
    lines = [line for line in result.stderr.splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.exit_code == code, result.stderr


# (arguments, environment, exit code). {db}: the test index; {dir}: a folder; {file}: a file
CASES = [
    # index
    (("index", "{missing}", *TINY), {}, 2),
    (("index", "{file}", *TINY), {}, 2),
    (("index", "{dir}", "--batch-size", "0", *TINY), {}, 2),
    (("index", "{dir}", "--batch-size", "-5", *TINY), {}, 2),
    (("index", "{dir}", "--batch-size", "ten", *TINY), {}, 2),
    (("index", "{dir}", "--max-pixels", "0", *TINY), {}, 2),
    (("index", "{dir}", "--max-text-bytes", "-1", *TINY), {}, 2),
    (("index", "{dir}", "--index-type", "btree", *TINY), {}, 2),
    (("index", "{dir}", "--recall-target", "nan", *TINY), {}, 2),
    (("index", "{dir}", "--recall-target", "7", *TINY), {}, 2),
    (("index", "{dir}", "--memory-budget-mb", "-1", *TINY), {}, 2),
    (("index", "{dir}", "--backend", "gpu9000", *TINY), {}, 2),
    (("index", "{dir}", "--model", "no-such-model", "--pretrained", "none"), {}, 2),
    (("index", "{dir}", "--db", "{file}", *TINY), {}, 2),
    (("index", "{dir}", *TINY), {"RETRIEVER_STORE_URL": "garbage"}, 2),
    (("index", "{dir}", *TINY), {"RETRIEVER_BACKEND": "garbage"}, 2),
    (("index", "{dir}", "--pretrained", "none"), {"RETRIEVER_MODEL": "garbage"}, 2),
    (("index", "{dir}", "--bogus-flag", *TINY), {}, 2),
    # search
    (("search", "x", "-k", "0", "--db", "{db}"), {}, 2),
    (("search", "x", "-k", "-1", "--db", "{db}"), {}, 2),
    (("search", "x", "-k", "many", "--db", "{db}"), {}, 2),
    (("search", "--item", "99999999999999999999", "--db", "{db}"), {}, 2),
    (("search", "--item", "-99999999999999999999", "--db", "{db}"), {}, 2),
    (("search", "--item", "424242", "--db", "{db}"), {}, 2),
    (("search", "x", "--add", "item:99999999999999999999", "--db", "{db}"), {}, 2),
    (("search", "x", "--add", "nan:cat", "--db", "{db}"), {}, 2),
    (("search", "x", "--add", "inf:cat", "--db", "{db}"), {}, 2),
    (("search", "x", "--add", "-inf:cat", "--db", "{db}"), {}, 2),
    (("search", "x", "--add", "1e999:cat", "--db", "{db}"), {}, 2),
    (("search", "x", "--sub", "nan:cat", "--db", "{db}"), {}, 2),
    (("search", "x", "--add", "0:cat", "--db", "{db}"), {}, 2),
    (("search", "x", "--min-score", "nan", "--db", "{db}"), {}, 2),
    (("search", "x", "--min-score", "inf", "--db", "{db}"), {}, 2),
    (("search", "x", "--min-score", "-inf", "--db", "{db}"), {}, 2),
    (("search", "x", "--min-score", "high", "--db", "{db}"), {}, 2),
    (("search", "x", "--after", "yesterday", "--db", "{db}"), {}, 2),
    (("search", "x", "--after", "2024-13-45", "--db", "{db}"), {}, 2),
    (("search", "x", "--after", "2024-02-01", "--before", "2024-01-01", "--db", "{db}"), {}, 2),
    (("search", "x", "--to", "movies", "--db", "{db}"), {}, 2),
    (("search", "x", "--type", "movie", "--db", "{db}"), {}, 2),
    (("search", "--image", "{missing}", "--db", "{db}"), {}, 2),
    (("search", "--image", "{dir}", "--db", "{db}"), {}, 2),
    (("search", "--image", "/dev/null", "--db", "{db}"), {}, 2),
    (("search", "--image", "{file}", "--db", "{db}"), {}, 1),  # not an image: ImageError
    (("search", "x", "--html", "{dir}", "--db", "{db}"), {}, 2),
    (("search", "x", "--html", "/proc/x.html", "--db", "{db}"), {}, 2),
    (("search", "x", "--html", "{file}/x.html", "--db", "{db}"), {}, 2),
    (("search", "x", "--backend", "gpu9000", "--db", "{db}"), {}, 2),
    (("search", "x", "--model", "ViT-B-32", "--db", "{db}"), {}, 1),
    (("search", "x", "--db", "{missing}"), {}, 1),
    (("search", "x", "--db", "{file}"), {}, 1),
    (("search", "x"), {"RETRIEVER_DB": "{missing}"}, 1),
    (("search", "x", "--db", "{db}"), {"RETRIEVER_BACKEND": "garbage"}, 2),
    (("search", "x"), {"RETRIEVER_STORE_URL": "garbage", "RETRIEVER_DB": "{db}"}, 2),
    (("search",), {"RETRIEVER_DB": "{db}"}, 2),
    (("search", "x", "--no-such-flag"), {}, 2),
    # info
    (("info", "--db", "{missing}"), {}, 1),
    (("info", "--db", "{file}"), {}, 1),
    (("info",), {"RETRIEVER_DB": "/proc"}, 1),
    (("info",), {"RETRIEVER_STORE_URL": "garbage", "RETRIEVER_DB": "{db}"}, 2),
    # serve (each fails before it could listen)
    (("serve", "--port", "99999", "--db", "{db}"), {}, 2),
    (("serve", "--port", "-1", "--db", "{db}"), {}, 2),
    (("serve", "--port", "http", "--db", "{db}"), {}, 2),
    (("serve", "--host", "no such host", "--db", "{db}"), {}, 2),
    (("serve", "--db", "{missing}"), {}, 1),
    (("serve", "--db", "{db}", "--backend", "gpu9000"), {}, 2),
    # train (data checked before anything trains)
    (("train", "{missing}", "--out", "{dir}/m.pt", *TINY), {}, 2),
    (("train", "{file}", "--out", "{dir}/m.pt", *TINY), {}, 2),
    (("train", "{photos}", "--out", "{dir}/m.pt", "--epochs", "-1", *TINY), {}, 2),
    (("train", "{photos}", "--out", "{dir}/m.pt", "--batch-size", "0", *TINY), {}, 2),
    (("train", "{photos}", "--out", "{dir}/m.pt", "--lr", "nan", *TINY), {}, 2),
    (("train", "{photos}", "--out", "{dir}/m.pt", "--warmup", "2", *TINY), {}, 2),
    (("train", "{photos}", "--out", "{dir}/m.pt", "--val-fraction", "1.5", *TINY), {}, 2),
    (("train", "{photos}", "--out", "{dir}/m.pt", "--objective", "magic", *TINY), {}, 2),
    (("train", "{photos}", "--out", "{dir}/m.pt", "--precision", "fp7", *TINY), {}, 2),
    (("train", "{photos}", "--out", "{dir}/m.pt", "--grad-accum", "0", *TINY), {}, 2),
    (("train", "{photos}", "--out", "{dir}", *TINY), {}, 2),
    (("train", "{photos}", *TINY), {}, 2),
    # eval
    (("eval", "{missing}", *TINY), {}, 2),
    (("eval", "{file}", *TINY), {}, 2),
    (("eval", "{photos}", "--model", "no-such-model", "--pretrained", "none"), {}, 2),
    # demo (values checked before anything is generated)
    (("demo", "--out", "{file}"), {}, 2),
    (("demo", "--out", "{dir}/d", "--images", "-1"), {}, 2),
    (("demo", "--out", "{dir}/d", "--images", "0"), {}, 2),
    (("demo", "--out", "{dir}/d", "--epochs", "-3"), {}, 2),
    # the app itself
    (("no-such-command",), {}, 2),
]


def _ids(case: tuple) -> str:
    args, env, _ = case
    return " ".join(args).replace("/", "_") + (f" {sorted(env)}" if env else "")


@pytest.mark.parametrize(("args", "env", "code"), CASES, ids=[_ids(c) for c in CASES])
def test_bad_arguments_and_environment_are_one_line(media, tmp_path, args, env, code):
    root, collection = media
    (tmp_path / "dir").mkdir()
    (tmp_path / "file.txt").write_text("not an image, not a folder")
    names = {"db": collection.directory, "dir": tmp_path / "dir", "file": tmp_path / "file.txt",
             "missing": tmp_path / "missing", "photos": root / "photos"}
    result = invoke(*(a.format(**names) for a in args),
                    env={k: v.format(**names) for k, v in env.items()}, cwd=tmp_path)
    assert_one_line_error(result, code)


# --- item 4: text from files is printed as plain text --------------------------------------

HOSTILE_TEXT = [
    "[/b]", "[bold red]loud[/]", "[link=https://evil.example]click me[/link]",
    "trip [draft]", ":smiley:", "\x1b[2J\x1b[31mred", "\x1b]8;;https://evil.example\x1b\\x",
    "carriage\rreturn", "new\nline", "tab\there", "bell\x07", "del\x7f", "csi\x9b31m",
    "rtl\u202egnp.exe", "sep\u2028line",
]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_encoder):
    """An index of files named and filled with markup and control characters."""
    from retriever.ingest.pipeline import IngestOptions, ingest_media
    from retriever.library.collection import Collection

    from .helpers import write_photo

    root = tmp_path_factory.mktemp("hostile-media")
    for n, text in enumerate(HOSTILE_TEXT):
        name = text.replace("/", "-")
        (root / f"{n} {name}.txt").write_text(f"passage {text} end")  # and the photo's caption
        write_photo(root / f"{n} {name}.jpg", (10 * n, 100, 200))
    (root / "broken [-b] \x1b[31m.jpg").write_bytes(b"\xff\xd8 not really")
    collection = Collection.open(root / ".retriever")
    with collection.writing():
        report = ingest_media(collection, tiny_encoder, IngestOptions((root,)))
    collection.close()
    assert report.images == len(HOSTILE_TEXT) and len(report.failures) == 1
    return root


def search_hostile(root: Path, *args: str):
    result = invoke("search", "passage", "-k", "100", "--db", root / ".retriever", *args,
                    env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    return result


def assert_plain(output: str, contents: bool = True) -> None:
    """No raw control character; each hostile text shown escaped, none read as markup: in
    file names ("/" made "-") and, with `contents`, in passages and captions."""
    assert not RAW_CONTROL.search(output), repr(RAW_CONTROL.search(output))
    for text in HOSTILE_TEXT:
        assert cli.visible(text).replace("/", "-") in output, text
        assert not contents or f"passage {cli.visible(text)} end" in output, text
    assert "😃" not in output  # :smiley: stays words


@pytest.mark.parametrize("form", [(), ("--preview",)], ids=["table", "preview-fallback"])
def test_the_table_shows_file_text_as_plain_text(hostile, form):
    assert_plain(search_hostile(hostile, *form).stdout)


def test_paths_only_prints_one_line_per_result_with_controls_escaped(hostile):
    found = [json.loads(line) for line in search_hostile(hostile, "--json").stdout.splitlines()]
    lines = search_hostile(hostile, "--paths-only").stdout.splitlines()
    assert lines == [cli.visible(r["path"]) for r in found] and len(lines) == len(found)
    assert_plain("\n".join(lines), contents=False)
    assert "new\\nline" in "\n".join(lines) and "\\x1b[2J" in "\n".join(lines)


def test_json_keeps_the_text_exact(hostile):
    found = [json.loads(line) for line in search_hostile(hostile, "--json").stdout.splitlines()]
    # each .txt is its photo's sidecar caption: found as the photo, the caption exact
    assert {"passage [/b] end", "passage \x1b[2J\x1b[31mred end"} <= {
        r["caption"] for r in found}
    assert any(r["path"].endswith("new\nline.jpg") for r in found)


def test_previews_in_a_terminal_print_file_text_plainly(hostile, tiny_encoder, monkeypatch,
                                                        capsys):
    """The inline-image branch: the escape codes drawing thumbnails are ours, the text not."""
    from retriever.library.collection import Collection
    from retriever.search.query import Query, search

    monkeypatch.setenv("TERM", "xterm-kitty")
    monkeypatch.setattr(cli, "stdout", Console(force_terminal=True, highlight=False,
                                               soft_wrap=True, emoji=False, width=1000))
    collection = Collection.open(hostile / ".retriever")
    results = search(collection, tiny_encoder, Query("passage", k=100))
    cli._print_previews(results, collection, cli.read_settings())  # TERM, as a command reads it
    collection.close()
    shown = re.sub(r"\x1b_G[^\x1b]*\x1b\\", "", capsys.readouterr().out)  # drop the images
    assert_plain(shown)


def test_index_and_info_show_failed_file_names_plainly(hostile, tmp_path):
    again = invoke("index", hostile, "--db", hostile / ".retriever", *TINY,
                   env={"COLUMNS": "1000"})
    assert again.exit_code == 0 and not RAW_CONTROL.search(again.output)
    info = invoke("info", "--db", hostile / ".retriever", env={"COLUMNS": "1000"})
    assert info.exit_code == 0 and not RAW_CONTROL.search(info.output)
    assert "broken [-b] \\x1b[31m.jpg" in info.stdout
    first = invoke("index", hostile, "--db", tmp_path / "index", *TINY)
    assert not RAW_CONTROL.search(first.stderr)
    assert "skipped " in first.stderr and "broken [-b] \\x1b[31m.jpg" in first.stderr


def test_error_messages_naming_a_file_stay_one_line(tmp_path):
    image = tmp_path / "two\nlines [/b].jpg"
    result = invoke("search", "--image", image, "--db", tmp_path)
    assert_one_line_error(result, 2)
    assert "two\\nlines [/b].jpg" in result.stderr


# --- item 5: a planted server socket sends nothing anywhere ---------------------------------

class Listener:
    """A Unix socket at `path` that must never be connected to."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.mark.parametrize("planted", ["a file naming a socket", "a link to a socket",
                                     "another user's socket"])
def test_a_planted_server_socket_is_not_trusted(media, tmp_path, planted):
    """Where `retriever serve` puts its socket (retriever.server.discovery), anything but this
    user's socket is never connected to: the search is answered here."""
    root, collection = media
    if planted == "another user's socket" and os.geteuid() != 0:
        pytest.skip("making another user's socket needs root")
    served = socket_paths(collection.directory)[0]
    elsewhere = tmp_path / "listener.sock"
    listener = Listener(served if planted == "another user's socket" else elsewhere)
    try:
        if planted == "a file naming a socket":
            served.write_text(json.dumps({"socket": str(elsewhere), "pid": os.getpid()}))
        elif planted == "a link to a socket":
            served.symlink_to(elsewhere)
        else:
            os.chown(served, 65534, 65534)  # nobody's
        result = invoke("search", "red", "--to", "all", "--json", "--db", collection.directory)
        assert result.exit_code == 0, result.output
        assert len(result.stdout.splitlines()) == 10  # answered here
    finally:
        served.unlink()
        listener.close()
    assert listener.connections == 0
