"""`retriever mcp`: the real command started as a subprocess, driven by the `mcp` SDK's own
client over stdio (and, for what that client cannot send, by raw JSON-RPC lines).

One server serves the module (its model load is the slow part); every test after a refused
call checks the session still answers, so a refusal that killed the server fails there.
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp import Client, StdioServerParameters
from mcp_types import CallToolResult
from PIL import Image
from typer.testing import CliRunner

from .helpers import TINY_ARGS, make_media, write_photo

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 300  # s: a model load on a busy 2-core machine, then any one answer
TOOLS = {"search", "search_by_image", "more_like", "show_item", "info", "duplicates", "tags"}
PASSED_ON = ("XDG_DATA_HOME", "XDG_CACHE_HOME", "HF_HOME", "RETRIEVER_BACKEND")


class Session:
    """A live client session, called from the (synchronous) tests through a portal."""

    def __init__(self, portal: BlockingPortal, client: Client) -> None:
        self.portal, self.client = portal, client

    def call(self, name: str, arguments: dict[str, Any] | None = None) -> CallToolResult:
        return self.portal.call(self.client.call_tool, name, arguments or {})

    def rows(self, name: str, arguments: dict[str, Any]) -> list[dict]:
        result = self.call(name, arguments)
        assert not result.is_error, error_text(result)
        return result.structured_content["results"]

    def tool_names(self) -> set[str]:
        return {tool.name for tool in self.portal.call(self.client.list_tools).tools}


def error_text(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """make_media's photos and notes (and a byte copy of red.jpg) indexed by the real CLI
    with retriever-tiny, the images tagged red/green/blue; an image outside the folders."""
    base = tmp_path_factory.mktemp("mcp")
    with pytest.MonkeyPatch.context() as env:  # the autouse isolation is per test
        for name in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "HF_HOME"):
            env.setenv(name, str(base / name.lower()))
        env.setenv("RETRIEVER_BACKEND", "torch")
        env.delenv("RETRIEVER_DB", raising=False)
        env.delenv("RETRIEVER_STORE_URL", raising=False)
        media = make_media(base / "media")
        shutil.copyfile(media / "photos" / "red.jpg", media / "photos" / "red-copy.jpg")
        db = base / "index"
        from cli import app

        for args in (["index", media, "--db", db, *TINY_ARGS],
                     ["tag", "red", "green", "blue", "--db", db]):
            result = CliRunner().invoke(app, [str(a) for a in args])
            assert result.exit_code == 0, result.output
        outside = write_photo(base / "elsewhere" / "secret.jpg", (220, 30, 30))
        (media / "photos" / "link.jpg").symlink_to(outside)  # inside by name, not in fact
        yield {"media": media, "db": db, "outside": outside,
               "env": {name: os.environ[name] for name in PASSED_ON}}


@pytest.fixture(scope="module")
def session(library) -> Iterator[Session]:
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "cli", "mcp", "--db", str(library["db"])],
                                   env=library["env"], cwd=ROOT)
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(
            Client(params, read_timeout_seconds=DEADLINE)) as client:
        yield Session(portal, client)


def id_of(session: Session, media: Path, name: str) -> int:
    found = [r for r in session.rows("search", {"text": "photo", "k": 20})
             if r["path"] == str(media / "photos" / name)]
    assert found, f"{name} is not among the indexed photos"
    return found[0]["id"]


def test_lists_the_read_only_tools_with_typed_arguments(session):
    tools = {tool.name: tool for tool in session.portal.call(session.client.list_tools).tools}
    assert set(tools) == TOOLS
    assert all(tool.description and tool.annotations.read_only_hint for tool in tools.values())
    k = tools["search"].input_schema["properties"]["k"]
    assert (k["type"], k["minimum"], k["maximum"]) == ("integer", 1, 100)
    assert tools["search"].input_schema["required"] == ["text"]


def test_search_by_words_finds_the_passage_and_the_filters_apply(session, library):
    notes = library["media"] / "notes"
    rows = session.rows("search", {"text": "buy red paint", "target": "texts", "k": 3})
    assert rows[0]["path"] == str(notes / "todo.txt")
    assert rows[0]["passage"] == "buy red paint"
    under = session.rows("search", {"text": "buy red paint", "target": "texts",
                                    "folder": str(library["media"] / "photos")})
    assert under and all(r["path"].startswith(str(library["media"] / "photos")) for r in under)
    counts = session.call("tags").structured_content["tags"]
    label = max(counts, key=counts.get)  # a random tiny model places what it places
    tagged = session.rows("search", {"text": "a disc", "k": 20, "tag": label})
    assert len(tagged) == counts[label] and all(label in r["tags"] for r in tagged)


def test_search_by_an_indexed_image_finds_that_photo_first(session, library):
    blue = library["media"] / "photos" / "blue.jpg"
    rows = session.rows("search_by_image", {"path": str(blue), "k": 3})
    assert rows[0]["path"] == str(blue)
    assert rows[0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_more_like_an_item_starts_with_the_item(session, library):
    green = id_of(session, library["media"], "green.jpg")
    rows = session.rows("more_like", {"item": green, "k": 2})
    assert rows[0]["id"] == green


def test_show_item_returns_its_record_and_a_real_thumbnail(session, library):
    red = id_of(session, library["media"], "red.jpg")
    result = session.call("show_item", {"item": red})
    assert not result.is_error, error_text(result)
    record = result.structured_content
    assert record["path"] == str(library["media"] / "photos" / "red.jpg")
    assert "red" in record["tags"] and record["date"]
    images = [block for block in result.content if block.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/jpeg"
    with Image.open(io.BytesIO(base64.b64decode(images[0].data))) as picture:
        assert picture.format == "JPEG" and max(picture.size) == 160  # never enlarged
        r, g, b = picture.convert("RGB").getpixel((picture.width // 2, picture.height // 2))
    assert r > 150 and g < 90 and b < 90  # the red disc at the centre


def test_a_photo_changed_since_indexing_is_shown_without_its_new_bytes(session, library):
    photo = library["media"] / "photos" / "rotated.jpg"
    item, indexed = id_of(session, library["media"], "rotated.jpg"), photo.read_bytes()
    try:
        write_photo(photo, (10, 10, 10))
        result = session.call("show_item", {"item": item})
    finally:
        photo.write_bytes(indexed)
    assert not result.is_error, error_text(result)
    assert "changed since it was indexed" in result.structured_content["thumbnail_error"]
    assert [block.type for block in result.content] == ["text"]


def test_a_text_item_is_shown_without_a_picture(session, library):
    rows = session.rows("search", {"text": "buy red paint", "target": "texts", "k": 1})
    result = session.call("show_item", {"item": rows[0]["id"]})
    assert result.structured_content["passage"] == "buy red paint"
    assert [block.type for block in result.content] == ["text"]


def test_info_duplicates_and_tags_describe_the_index(session, library):
    info = session.call("info").structured_content
    assert (info["images"], info["model"]["name"]) == (6, "retriever-tiny")
    assert info["folders"] == [str(library["media"].resolve())]
    groups = session.call("duplicates").structured_content
    copies = {c["path"]: c["same_bytes_as"] for g in groups["listed"] for c in g["copies"]}
    photos = library["media"] / "photos"
    assert {str(photos / "red.jpg"), str(photos / "red-copy.jpg")} <= set(copies)
    assert any(copies[str(photos / name)] for name in ("red.jpg", "red-copy.jpg"))
    tags = session.call("tags").structured_content["tags"]
    assert set(tags) <= {"red", "green", "blue"} and sum(tags.values()) == 6


@pytest.mark.parametrize("path, words", [
    ("outside", "outside the indexed folders"),
    ("link", "outside the indexed folders"),  # a symlink in the folders to a file outside
    ("/etc/passwd", "outside the indexed folders"),
    ("photos/red.jpg", "relative"),
    ("notes/todo.txt", "not a readable image"),
])
def test_an_image_path_that_cannot_be_searched_by_is_a_tool_error(session, library, path,
                                                                 words):
    named = {"outside": library["outside"], "link": library["media"] / "photos" / "link.jpg",
             "notes/todo.txt": library["media"] / "notes" / "todo.txt"}.get(path, path)
    result = session.call("search_by_image", {"path": str(named)})
    assert result.is_error
    message = error_text(result)
    assert words in message.lower() and "\n" not in message and message.startswith(
        "search_by_image: ")
    assert not any(block.type == "image" for block in result.content)
    assert session.tool_names() == TOOLS  # the server still answers


@pytest.mark.parametrize("tool, arguments, words", [
    ("search", {"text": "red", "k": -1}, "k: input should be greater than or equal to 1"),
    ("search", {"text": "red", "k": 10**6}, "k: input should be less than or equal to 100"),
    ("search", {"text": "red", "k": "ten"}, "k: input should be a valid integer"),
    ("search", {"text": "red", "k": 2.5}, "k: input should be a valid integer"),
    ("search", {"k": 3}, "text is required"),
    ("search", {"text": "   "}, "the query text is empty"),
    ("search", {"text": "red", "target": "planets"}, "target: input should be"),
    ("search", {"text": "red", "colour": "red"}, "unknown argument 'colour'"),
    ("search", {"text": "red", "after": "yesterday"}, "after 'yesterday' is not a date"),
    ("search", {"text": "red", "folder": "photos"}, "folder must be an absolute folder"),
    ("search", {"text": "red", "tag": "purple"}, "no image is tagged so"),
    ("more_like", {"item": 987654}, "no item 987654"),
    ("more_like", {"item": 2**70}, "item: input should be less than or equal to"),
    ("more_like", {"item": True}, "item: input should be a valid integer"),
    ("show_item", {"item": 987654}, "no item 987654"),
    ("show_item", {"item": "[1, 2"}, "item: input should be a valid integer"),  # bad JSON
    ("duplicates", {"threshold": 7}, "threshold: input should be less than or equal to 1"),
    ("search_by_image", {"path": "/" + "a" * 5000}, "path: string should have at most 4096"),
    ("search_by_image", {"path": "/tmp/a\x00b.jpg"}, "is not a file path"),
    ("no_such_tool", {}, "unknown tool"),
])
def test_bad_arguments_are_one_line_tool_errors(session, tool, arguments, words):
    result = session.call(tool, arguments)
    assert result.is_error
    message = error_text(result)
    assert words in message.lower(), message
    assert "\n" not in message and "Traceback" not in message
    assert session.tool_names() == TOOLS  # the server still answers


@pytest.mark.slow  # a second server: its own model load
def test_the_wire_carries_only_protocol_and_survives_malformed_json(library, tmp_path):
    """Raw JSON-RPC lines: a line that is not JSON, and one that is not a request, are
    answered or dropped; the next request is answered; every stdout line is a JSON-RPC
    message (the model load and the logs went to stderr)."""
    command = [sys.executable, "-m", "cli", "mcp", "--db", str(library["db"])]
    with (tmp_path / "stderr").open("w") as log, subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **library["env"]}, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log, text=True) as process:
        lines = _lines_of(process.stdout)
        try:
            _send(process, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "test", "version": "0"}}})
            assert _answer(lines, 1)["result"]["serverInfo"]["name"] == "retriever"
            _send(process, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            process.stdin.write('{"jsonrpc": "2.0", "id": 2, "method": \n[1, 2\n\x00\n')
            _send(process, {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                            "params": {"name": "info", "arguments": "not an object"}})
            assert "error" in _answer(lines, 3)
            _send(process, {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                            "params": {"name": "info", "arguments": {}}})
            answer = _answer(lines, 4)["result"]
            assert answer["structuredContent"]["images"] == 6
        finally:
            process.stdin.close()
            process.wait(timeout=DEADLINE)
        assert all(message.get("jsonrpc") == "2.0" for message in lines.seen)
    assert process.returncode == 0  # stdin closed: the server ends, cleanly
    assert "retriever mcp: serving" in (tmp_path / "stderr").read_text()


def test_an_index_that_is_not_there_is_one_line_on_stderr(tmp_path):
    run = subprocess.run([sys.executable, "-m", "cli", "mcp", "--db", str(tmp_path / "none")],
                         cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE,
                         stdin=subprocess.DEVNULL)
    assert run.returncode != 0 and run.stdout == ""
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1


def test_serving_takes_no_writer_lock(session, library):
    """`retriever index` runs while the assistant's server is up, and its new photo is found
    (then the photo is taken out again: the other tests count the library's photos)."""
    session.call("info")  # the server is up and has answered
    added = write_photo(library["media"] / "photos" / "yellow.jpg", (230, 220, 40))
    try:
        reindex(library)
        rows = session.rows("search_by_image", {"path": str(added), "k": 1})
        assert rows[0]["path"] == str(added)
    finally:
        added.unlink()
        reindex(library)
    assert session.call("info").structured_content["images"] == 6


def reindex(library: dict[str, Any]) -> None:
    from cli import app

    with pytest.MonkeyPatch.context() as env:
        for name, value in library["env"].items():
            env.setenv(name, value)
        result = CliRunner().invoke(app, ["index", str(library["media"]), "--db",
                                          str(library["db"]), *TINY_ARGS])
    assert result.exit_code == 0, result.output


class _Lines:
    """stdout's lines, read on a thread: every JSON message seen, and a queue to wait on."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.queue: queue.Queue[dict] = queue.Queue()


def _lines_of(stdout: Any) -> _Lines:
    lines = _Lines()

    def read() -> None:
        for line in stdout:
            message = json.loads(line)  # a line that is not JSON fails the test below
            lines.seen.append(message)
            lines.queue.put(message)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _send(process: subprocess.Popen, message: dict) -> None:
    process.stdin.write(json.dumps(message) + "\n")
    process.stdin.flush()


def _answer(lines: _Lines, request_id: int) -> dict:
    while True:
        message = lines.queue.get(timeout=DEADLINE)
        if message.get("id") == request_id:
            return message
