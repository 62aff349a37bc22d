"""What the page shows of every kind of hit, in headless Chromium against a real `retriever
serve`: video frames that play from their moment, document passages with their page (a PDF
opening at it) and marked words, the tag menu, whole file names, selecting results to copy
their paths or download them as one zip, and every choice kept in the URL.

Screenshots go to the test's tmp dir and to /tmp/retriever-browser-shots/ for people to look at.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest

from .helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    make_media,
    open_index,
    serving,
    tag_files,
    write_photo,
    write_video,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOTS = Path("/tmp/retriever-browser-shots")
LONG_NAME = "holiday-at-the-seaside-with-grandmother-and-the-dog-2024-07-14-evening.jpg"
TOKEN = "quokka"  # on page 3 of report.pdf only
HOSTILE = '<img src=x onerror="document.title=1"> quokka <b>bold</b>'
NEWER, DAY = 1_262_304_000, 86_400  # 2010-01-01, in seconds
WAIT_MS = 120_000  # a wait for the page on a loaded machine, not a speed requirement


def write_pdf(path: Path) -> Path:
    """Three pages of text; only page 3 says TOKEN."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=14)
    for text in ("Minutes of the garden committee.", "Budget for new fences and paint.",
                 f"The {TOKEN} was seen near the shed."):
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    pdf.output(str(path))
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_encoder):
    """(url, media root, tagged photo paths) of a served index of photos, notes, a video, a PDF."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (as .ci/run does)")
    folder = tmp_path_factory.mktemp("browser-results")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("RETRIEVER_STORE_URL", raising=False)
        root = make_media(folder / "media")
        write_photo(root / "photos" / LONG_NAME, (240, 160, 20))
        write_video(root / "clip.mp4")
        write_pdf(root / "notes" / "report.pdf")
        (root / "notes" / "hostile.txt").write_text(HOSTILE)
        (root / "notes" / "guide.html").write_text(
            "<html><body><h1>Guide</h1><h2>Setup</h2><p>Feed the quokka at noon.</p></body></html>")
        for n, path in enumerate(sorted(p for p in root.rglob("*") if p.is_file())):
            if path.name != "old.jpg":  # old.jpg stays the oldest (2001)
                os.utime(path, (NEWER + n * DAY, NEWER + n * DAY))  # a date each
        collection = open_index(root, tiny_encoder)
        photos = root / "photos"
        tagged = {photos / "red.jpg": "warm", photos / "old.jpg": "warm",
                  photos / "blue.jpg": "cold"}
        tag_files(collection, tagged)
        collection.close()
        with serving(root / ".retriever", folder / "serve.log") as url:
            yield url, root, tagged


@pytest.fixture
def browser():
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def open_page(browser, url: str, errors: list[str], **options):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, **options)
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    return page


def api(url: str, **params) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/search?{urllib.parse.urlencode(params)}") as answer:
        return json.load(answer)["results"]


def shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    SHOTS.mkdir(exist_ok=True)
    shutil.copy(path, SHOTS / name)


def test_a_video_hit_plays_from_its_moment(site, browser, tmp_path):
    from playwright.sync_api import expect

    url, root, _ = site
    frames = api(url, text="a picture", target="videos", k=20)
    latest = max(frames, key=lambda row: row["time"])
    assert latest["time"] >= 2  # a start at 0 would be off by more than the 1 s allowed
    errors: list[str] = []
    page = open_page(browser, f"{url}/?text=a+picture&target=videos&k=20", errors)
    expect(page.locator("#target")).to_have_value("videos")  # the menu names the choice
    card = page.locator(f'#results .result[data-id="{latest["id"]}"]')
    page.wait_for_function("""() => [...document.querySelectorAll('#results img')]
        .every(img => img.complete && img.naturalWidth > 0)""")  # frame thumbnails
    expect(card.locator(".place")).to_have_text(re.compile(r"@ 00:0\d"))
    page.evaluate("""() => document.addEventListener('playing',
        (e) => { window.started = e.target.currentTime; }, true)""")
    card.locator(".play").click()
    page.wait_for_function("() => window.started !== undefined")
    started = page.evaluate("() => window.started")
    assert abs(started - latest["time"]) <= 1.0, (started, latest["time"])
    assert card.locator("video").get_attribute("src") == latest["file"]
    shot(page, tmp_path, "video-playing.png")
    # the large view of another frame plays the video too, from that frame's moment
    other = next(row for row in frames if row["id"] != latest["id"])
    page.locator(f'#results .result[data-id="{other["id"]}"] .open').click()
    expect(page.locator("#viewer-video")).to_be_visible()
    assert page.locator("#viewer-video").get_attribute("src") == other["file"]
    assert other["file"].endswith(f"#t={other['time']:g}")
    assert errors == []


def test_a_pdf_hit_shows_and_opens_its_page_and_marks_the_words(site, browser, tmp_path):
    from playwright.sync_api import expect

    url, root, _ = site
    pdf = str(root / "notes" / "report.pdf")
    errors: list[str] = []
    page = open_page(browser, f"{url}/?text={TOKEN}&target=texts&k=50", errors)
    cards = page.locator(f'#results .result[data-path="{pdf}"]')
    expect(cards).to_have_count(3)  # a passage per page
    for n in range(3):
        card = cards.nth(n)
        number = int((card.locator(".place").text_content() or "").removeprefix("p. "))
        href = card.locator(".name").get_attribute("href") or ""
        assert re.fullmatch(rf"/api/items/\d+/file#page={number}", href), href
        if TOKEN in (card.locator(".passage").text_content() or ""):
            assert number == 3
            expect(card.locator(".passage mark").first).to_have_text(
                re.compile(TOKEN, re.IGNORECASE))
            with urllib.request.urlopen(url + href.split("#")[0]) as answer:
                assert answer.read() == Path(pdf).read_bytes()
    guide = page.locator(f'#results .result[data-path="{root / "notes" / "guide.html"}"]')
    expect(guide.locator(".place")).to_have_text("§ Setup")  # a document's section
    hostile = page.locator(f'#results .result[data-path="{root / "notes" / "hostile.txt"}"]')
    expect(hostile.locator(".passage")).to_contain_text("<img src=x")  # shown as text
    assert hostile.locator(".passage img, .passage b").count() == 0
    assert page.title() == "retriever" and errors == []
    shot(page, tmp_path, "pdf-pages.png")


def test_the_tag_menu_narrows_results_and_cards_show_tags(site, browser):
    from playwright.sync_api import expect

    url, root, tagged = site
    errors: list[str] = []
    page = open_page(browser, url, errors)
    expect(page.locator("#tag option")).to_have_text(["any", "cold (1)", "warm (2)"])
    page.fill("#text", "a photo")
    page.press("#text", "Enter")
    expect(page.locator("#results .result")).to_have_count(6)  # every photo
    page.select_option("#tag", "warm")
    warm = sorted(str(p) for p, label in tagged.items() if label == "warm")
    expect(page.locator("#results .result")).to_have_count(len(warm))
    paths = page.locator("#results .result").evaluate_all("cards => cards.map(c => c.dataset.path)")
    assert sorted(paths) == warm and "tag=warm" in page.url
    expect(page.locator("#results .result .tag").first).to_have_text("#warm")
    page.locator("#results .result .tag").first.click()  # a chip keeps the same filter
    expect(page.locator("#tag")).to_have_value("warm")
    assert errors == []


def test_every_file_name_is_whole_and_readable_at_1280_px(site, browser, tmp_path):
    from playwright.sync_api import expect

    url, root, _ = site
    errors: list[str] = []
    page = open_page(browser, f"{url}/?text=anything&target=all&k=50", errors)
    expect(page.locator(f'#results .result[data-path="{root / "photos" / LONG_NAME}"]')
           ).to_have_count(1)
    names = page.locator("#results .result .name").evaluate_all("""links => links.map(a => {
        const card = a.closest('.result').getBoundingClientRect(), box = a.getBoundingClientRect();
        return {text: a.textContent, path: a.closest('.result').dataset.path,
                fits: a.scrollWidth <= a.clientWidth && box.right <= card.right + 0.5
                      && box.bottom <= card.bottom + 0.5 && box.height > 0};
    })""")
    assert len(names) >= 10
    for name in names:
        assert name["text"] == Path(name["path"]).name and name["fits"], name
    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")  # lazy images load
    page.wait_for_function("""() => [...document.querySelectorAll('#results img')]
        .every(img => img.complete && img.naturalWidth > 0)""")
    shot(page, tmp_path, "whole-names.png")
    # sorted by date: newest first in each group (ties keep their rank), the same rows
    rows = api(url, text="anything", target="all", k=50)
    page.select_option("#sort", "date")
    for grid in ("images", "texts"):
        newest = sorted((r for r in rows if r["found_in"] == grid), key=lambda r: -r["taken_at"])
        shown = page.locator(f'#results .grid[data-section="{grid}"] .result').evaluate_all(
            "cs => cs.map(c => Number(c.dataset.id))")  # `change` re-sorts at once
        assert len(shown) >= 5 and shown == [r["id"] for r in newest]
    assert "sort=date" in page.url and errors == []


def test_three_selected_results_copy_their_paths_and_download_as_one_zip(site, browser):
    from playwright.sync_api import expect

    url, root, _ = site
    errors: list[str] = []
    page = open_page(browser, url, errors, accept_downloads=True,
                     permissions=["clipboard-read", "clipboard-write"])
    expect(page.locator("#results .result.image")).to_have_count(6)  # recent photos
    cards = page.locator("#results .result.image")
    chosen = [cards.nth(n).get_attribute("data-path") or "" for n in (0, 2, 4)]
    for n in (0, 2, 4):
        cards.nth(n).locator(".pick").check()
    expect(page.locator("#selected-count")).to_have_text("3 selected")
    page.click("#copy-paths")
    expect(page.locator("#status")).to_have_text("Copied 3 paths")
    assert page.evaluate("() => navigator.clipboard.readText()").split("\n") == chosen
    with page.expect_download() as started:
        page.click("#download-zip")
    with zipfile.ZipFile(io.BytesIO(Path(started.value.path()).read_bytes())) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    assert files == {Path(p).name: Path(p).read_bytes() for p in chosen}
    page.click("#unselect")
    expect(page.locator("#selection")).to_be_hidden()
    assert page.locator("#results .pick:checked").count() == 0 and errors == []


def test_every_choice_round_trips_through_the_url(site, browser, tmp_path):
    from playwright.sync_api import expect

    url, root, _ = site
    errors: list[str] = []
    page = open_page(browser, url, errors)
    choices = {"#target": "all", "#match": "semantic", "#k": "9", "#in": str(root / "photos"),
               "#after": "2000-01-01", "#before": "2100-01-01", "#min_score": "-1",
               "#tag": "warm", "#sort": "date"}
    for selector, value in choices.items():
        if page.locator(selector).evaluate("e => e.tagName") == "SELECT":
            page.select_option(selector, value)
        else:
            page.fill(selector, value)
    page.fill("#text", "a photo")
    page.press("#text", "Enter")
    expect(page.locator("#results .result")).to_have_count(2)
    order = page.locator("#results .result").evaluate_all("cs => cs.map(c => c.dataset.path)")
    assert order[-1] == str(root / "photos" / "old.jpg")  # newest first: 2001 last
    again = open_page(browser, page.url, errors)
    for selector, value in choices.items():
        expect(again.locator(selector)).to_have_value(value)
    expect(again.locator("#text")).to_have_value("a photo")
    expect(again.locator("#results .result")).to_have_count(2)
    assert again.locator("#results .result").evaluate_all(
        "cs => cs.map(c => c.dataset.path)") == order
    # an image search shows the image searched by
    again.set_input_files("#image", str(root / "photos" / "green.jpg"))
    expect(again.locator("#query")).to_be_visible()
    again.wait_for_function("() => document.getElementById('query-image').naturalWidth > 0")
    expect(again.locator("#status")).to_contain_text("for the image green.jpg")
    assert "text=" not in again.url and "tag=warm" in again.url  # the image replaced the words
    shot(again, tmp_path, "round-trip.png")
    assert errors == []


def test_a_url_naming_no_such_choice_shows_the_defaults(site, browser):
    from playwright.sync_api import expect

    url, _, _ = site
    errors: list[str] = []
    odd = urllib.parse.urlencode({"text": "x", "target": "bogus", "match": "zzz",
                                  "sort": "evil", "tag": "<b>t</b>"})
    page = open_page(browser, f"{url}/?{odd}", errors)
    for selector, default in (("#target", "images"), ("#match", "hybrid"), ("#sort", "score")):
        expect(page.locator(selector)).to_have_value(default)
    expect(page.locator("#tag")).to_have_value("<b>t</b>")  # shown as text, not markup
    expect(page.locator("#tag option:checked")).to_have_text("<b>t</b> (none)")
    assert page.locator("#tag b").count() == 0 and errors == []
