"""The page in a real browser: `retriever serve` as a subprocess, driven in headless Chromium.

Debian's chromium (/usr/bin/chromium; `.ci/run` installs it) through Playwright's Python API:
no browser is downloaded. The screenshot is kept in the test's tmp dir and copied to
/tmp/retriever-browser.png for people to look at.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .test_server import make_media, open_index

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SCREENSHOT_COPY = Path("/tmp/retriever-browser.png")
START_DEADLINE_S = 120  # loading torch and the model on a busy 2-core CI machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"retriever serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/api/info", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"retriever serve did not answer within {START_DEADLINE_S} s:\n{log.read_text()}")


@pytest.fixture
def served(tmp_path, tiny_encoder):
    """(url, media folder) of a real `retriever serve` on a free loopback port."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (as .ci/run does)")
    root = make_media(tmp_path / "media")
    open_index(root, tiny_encoder).close()
    port, log = free_port(), tmp_path / "serve.log"
    command = [sys.executable, "-m", "cli", "serve", "--db", str(root / ".retriever"),
               "--port", str(port)]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, process, log)
        yield url, root
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def drop_file(page, path: Path) -> None:
    """Drop `path` on the page as a user dragging it from a file manager would."""
    page.evaluate("""([name, bytes]) => {
        const data = new DataTransfer();
        data.items.add(new File([new Uint8Array(bytes)], name, {type: "image/jpeg"}));
        document.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true,
                                                      cancelable: true}));
    }""", [path.name, list(path.read_bytes())])


def test_search_click_drop_and_screenshot(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, root = served
    expect.set_options(timeout=30_000)  # a wait for the page, not a speed requirement
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            expect(page.locator("#info")).to_contain_text("5 images, ")
            first = page.locator("#results .result").first

            # words: the exact text of todo.txt's one passage must come first
            page.select_option("#target", "texts")
            page.fill("#text", "buy red paint")
            page.press("#text", "Enter")
            expect(first).to_have_attribute("data-path", str(root / "notes" / "todo.txt"))
            expect(first.locator(".score")).to_have_text("1.000")
            expect(first.locator(".passage")).to_have_text("buy red paint")

            # click a result: the new results are headed by it, marked as the query
            second = page.locator("#results .result").nth(1)
            clicked = second.get_attribute("data-id")
            second.locator(".more").click()
            expect(first).to_have_attribute("data-id", clicked or "?")
            expect(first).to_have_class(re.compile(r"\bquery\b"))

            # images: thumbnails load; clicking one searches by it, over images and texts
            page.select_option("#target", "images")
            page.fill("#text", "red")
            page.press("#text", "Enter")
            expect(page.locator("#results .result.image")).to_have_count(5)
            photo = page.locator("#results .result.image").nth(2)
            photo_id = photo.get_attribute("data-id")
            page.select_option("#target", "all")
            photo.locator(".more").click()
            expect(first).to_have_attribute("data-id", photo_id or "?")
            expect(page.locator("#results .result.text").first).to_be_visible()
            page.wait_for_function("""() => [...document.querySelectorAll('#results img')]
                .every(img => img.complete && img.naturalWidth > 0)""")
            assert page.locator("#results img").count() == 5
            shot = tmp_path / "retriever-browser.png"
            page.screenshot(path=str(shot), full_page=True)

            # an image dropped on the page, and one chosen with the Image... button
            drop_file(page, root / "photos" / "blue.jpg")
            expect(first).to_have_attribute("data-path", str(root / "photos" / "blue.jpg"))
            page.set_input_files("#image", str(root / "photos" / "green.jpg"))
            expect(first).to_have_attribute("data-path", str(root / "photos" / "green.jpg"))
            expect(page.locator("#status")).to_contain_text("the image green.jpg")
            assert errors == []
        finally:
            browser.close()
    shutil.copy(shot, SCREENSHOT_COPY)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
