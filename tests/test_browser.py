"""The page in a real browser: `retriever serve` as a subprocess, driven in headless Chromium.

Debian's chromium (/usr/bin/chromium; `.ci/run` installs it) through Playwright's Python API:
no browser is downloaded. The screenshot is kept in the test's tmp dir and copied to
/tmp/retriever-browser.png for people to look at.
"""

from __future__ import annotations

import re
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .helpers import CHROMIUM, CHROMIUM_ARGS, OLD, make_media, open_index, serving

pytestmark = pytest.mark.browser

SCREENSHOT_COPY = Path("/tmp/retriever-browser.png")
SHOTS = Path("/tmp/retriever-browser-shots")  # the filter test's screenshots, to look at


@pytest.fixture
def served(tmp_path, tiny_encoder):
    """(url, media folder) of a real `retriever serve` on a free loopback port."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (as .ci/run does)")
    root = make_media(tmp_path / "media")
    open_index(root, tiny_encoder).close()
    with serving(root / ".retriever", tmp_path / "serve.log") as url:
        yield url, root


def drop_file(page, path: Path) -> None:
    """Drop `path` on the page as a user dragging it from a file manager would."""
    page.evaluate("""([name, bytes]) => {
        const data = new DataTransfer();
        data.items.add(new File([new Uint8Array(bytes)], name, {type: "image/jpeg"}));
        document.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true,
                                                      cancelable: true}));
    }""", [path.name, list(path.read_bytes())])


@contextmanager
def page_at(url: str) -> Iterator[tuple[Any, list[str]]]:
    """(the page at `url` in Debian's chromium, its uncaught errors: a list that grows); the
    browser closes after. Playwright's waits are 120 s: for the page, not a speed requirement."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            yield page, errors
        finally:
            browser.close()


def test_search_click_drop_and_screenshot(served, tmp_path):
    from playwright.sync_api import expect

    url, root = served
    with page_at(url) as (page, errors):
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
        second = page.locator("#results .result.text").nth(1)  # a passage, not red.jpg
        # (found by its sidecar caption red.txt: a hit on a caption is the photo)
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
        page.select_option("#target", "all")  # reruns "red": the page may be redrawn
        page.locator(f'#results .result.image[data-id="{photo_id}"] .more').click()
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
    shutil.copy(shot, SCREENSHOT_COPY)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_an_answer_that_comes_back_late_never_replaces_a_newer_searchs(served):
    """Two searches in flight (a choice changed, then a click at once): the older one's
    answer, arriving last, is dropped; the page shows the newer search's results."""
    from playwright.sync_api import expect

    url, root = served
    with page_at(url) as (page, errors):
        expect(page.locator("#info")).to_contain_text("5 images, ")
        held = []  # the older search's request, answered only once the newer one shows
        page.route("**/api/search?*", lambda route: held.append(route)
                   if "held+back" in route.request.url else route.continue_())
        page.select_option("#target", "texts")
        page.fill("#text", "held back")
        page.press("#text", "Enter")
        page.fill("#text", "buy red paint")
        page.press("#text", "Enter")
        first = page.locator("#results .result").first
        expect(first).to_have_attribute("data-path", str(root / "notes" / "todo.txt"))
        assert len(held) == 1
        with page.expect_response(lambda r: "held+back" in r.url):
            held[0].continue_()
        page.evaluate("() => new Promise(done => setTimeout(done, 500))")  # its handler ran
        expect(first).to_have_attribute("data-path", str(root / "notes" / "todo.txt"))
        expect(page.locator("#status")).to_contain_text("buy red paint")
        assert errors == []


def test_recent_photos_date_filter_large_view_and_a_shareable_url(served, tmp_path):
    from datetime import date

    from playwright.sync_api import expect

    url, root = served
    old_day = date.fromtimestamp(OLD).isoformat()
    shots = []
    with page_at(url) as (page, errors):
        # before any search: the newest photos, old.jpg (mtime OLD) last
        expect(page.locator("h2.section")).to_have_text("Recent photos")
        expect(page.locator("#results .result.image")).to_have_count(5)
        expect(page.locator("#results .result").last).to_have_attribute(
            "data-path", str(root / "photos" / "old.jpg"))
        shots.append(tmp_path / "1-recent.png")
        page.screenshot(path=str(shots[-1]))

        # a date filter: only old.jpg was taken before the day after OLD
        page.fill("#text", "a photo")
        page.fill("#before", _next_day(old_day))
        page.press("#text", "Enter")
        expect(page.locator("#results .result")).to_have_count(1)
        expect(page.locator("#results .result")).to_have_attribute(
            "data-path", str(root / "photos" / "old.jpg"))
        assert f"before={_next_day(old_day)}" in page.url and "text=a+photo" in page.url
        shots.append(tmp_path / "2-filtered.png")
        page.screenshot(path=str(shots[-1]))

        # the large view: path, date, open/download links to the file; Esc closes it
        page.keyboard.press("Escape")
        page.locator("#results .open").first.focus()
        page.keyboard.press("Enter")
        viewer = page.locator("#viewer")
        expect(viewer).to_be_visible()
        expect(page.locator("#viewer-path")).to_have_text(str(root / "photos" / "old.jpg"))
        expect(page.locator("#viewer-date")).not_to_be_empty()
        page.wait_for_function("() => document.getElementById('viewer-image').naturalWidth > 0")
        href = page.locator("#viewer-open").get_attribute("href") or ""
        assert re.fullmatch(r"/api/items/\d+/file", href)
        with urllib.request.urlopen(url + href) as answer:
            assert answer.read() == (root / "photos" / "old.jpg").read_bytes()
        shots.append(tmp_path / "3-large-view.png")
        page.screenshot(path=str(shots[-1]))
        page.keyboard.press("Escape")
        expect(viewer).to_be_hidden()

        # the URL is the search: opened anew, it shows the same filtered results
        again = page.context.browser.new_page(viewport={"width": 1200, "height": 900})
        again.goto(page.url)
        expect(again.locator("#before")).to_have_value(_next_day(old_day))
        expect(again.locator("#results .result")).to_have_count(1)
        assert errors == []
    keep_shots(shots)


def keep_shots(shots: list[Path]) -> None:
    SHOTS.mkdir(exist_ok=True)
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        shutil.copy(shot, SHOTS / shot.name)


def _next_day(iso: str) -> str:
    from datetime import date, timedelta

    return (date.fromisoformat(iso) + timedelta(days=1)).isoformat()
