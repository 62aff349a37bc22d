"""Combined queries, filters, and the ways results are shown (issue: results people can see)."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retriever.encoding.pixels import load_pixels
from retriever.errors import ItemNotFound, UsageError
from retriever.ingest.pipeline import IngestOptions, ingest_media
from retriever.library.collection import Collection
from retriever.present.preview import KITTY_CHUNK, inline_image, terminal_protocol
from retriever.search.query import Query, Term, parse_date, parse_term, query_vector, search

from .helpers import write_photo

COLOURS = [(220, 30, 30), (30, 200, 60), (30, 60, 220), (230, 210, 20), (20, 20, 20),
           (140, 40, 170), (250, 250, 250), (120, 60, 20)]


def exif_photo(path: Path, colour, taken: str) -> Path:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = taken  # DateTimeOriginal, "YYYY:MM:DD HH:MM:SS"
    Image.new("RGB", (64, 48), colour).save(path, exif=exif)
    return path


@pytest.fixture
def indexed(tmp_path, tiny_encoder, store_env):
    """An index of ten photos (two with EXIF dates) and a note; tests taking it run on a
    SQLite store, then on a PostgreSQL one."""
    root = tmp_path / "lib"
    for i, colour in enumerate(COLOURS):
        write_photo(root / ("old" if i < 4 else "new") / f"p{i}.jpg", colour)
    exif_photo(root / "dated-2019.jpg", (10, 120, 200), "2019:06:01 12:00:00")
    exif_photo(root / "dated-2023.jpg", (200, 120, 10), "2023:06:01 12:00:00")
    (root / "notes.txt").write_text("a note about a summer trip")
    mtime = datetime(2021, 1, 1).timestamp()  # no EXIF: the mtime is the date
    for path in (root / "old").iterdir():
        os.utime(path, (mtime, mtime))
    collection = Collection.open(tmp_path / "index")
    with collection.writing():
        ingest_media(collection, tiny_encoder, IngestOptions((root,)))
    yield root, collection
    collection.close()


def names(results):
    return [Path(r.path).name for r in results]


def test_query_vector_is_the_renormalised_weighted_sum(indexed, tiny_encoder):
    root, collection = indexed
    query = Query(text="red", add=(Term(2.0, image=root / "new" / "p4.jpg"),),
                  sub=(Term(0.5, text="people"),))
    e = tiny_encoder.encode_texts(["red", "people"])
    # query images are decoded the way indexed ones are (retriever.encoding.pixels.load_pixels)
    pixels = load_pixels(root / "new" / "p4.jpg", tiny_encoder.pixels).data
    img = tiny_encoder.encode_pixels(pixels[None])[0]
    want = e[0] + 2.0 * img - 0.5 * e[1]
    np.testing.assert_allclose(query_vector(collection, tiny_encoder, query)[0],
                               want / np.linalg.norm(want), atol=1e-5)


def test_a_negative_query_pushes_matching_items_down(indexed, tiny_encoder):
    root, collection = indexed
    target = root / "old" / "p0.jpg"
    plain = names(search(collection, tiny_encoder, Query(image=target, target="images", k=20)))
    assert plain[0] == "p0.jpg"
    pushed = names(search(collection, tiny_encoder, Query(
        image=target, sub=(Term(1.0, image=root / "old" / "p0.jpg"),
                           Term(1.0, image=root / "old" / "p1.jpg")),
        add=(Term(1.0, text="anything else"),), target="images", k=20)))
    assert pushed.index("p0.jpg") > plain.index("p0.jpg")
    assert pushed.index("p1.jpg") > plain.index("p1.jpg")


def test_search_by_item_puts_that_item_first(indexed, tiny_encoder):
    _, collection = indexed
    some = search(collection, tiny_encoder, Query(text="x", target="images", k=3))[2]
    first = search(collection, tiny_encoder, Query(item=some.id, target="images", k=3))[0]
    assert first.id == some.id and first.score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ItemNotFound, match="no item 999999"):
        search(collection, tiny_encoder, Query(item=999_999))


def test_in_filter(indexed, tiny_encoder):
    root, collection = indexed
    found = search(collection, tiny_encoder, Query(text="x", k=50, path_prefix=str(root / "old")))
    assert sorted(names(found)) == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"]


def test_type_filter_through_the_cli(indexed, cli):
    root, collection = indexed
    out = cli("search", "x", "--type", "text", "--json", "--db", collection.directory)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows and {r["kind"] for r in rows} == {"text"}


def test_date_filters_use_exif_then_mtime(indexed, tiny_encoder):
    root, collection = indexed
    q = dict(text="x", target="images", k=50)
    before_2020 = search(collection, tiny_encoder, Query(**q, before=parse_date("2020-01-01", "")))
    assert names(before_2020) == ["dated-2019.jpg"]
    in_2021 = search(collection, tiny_encoder, Query(
        **q, after=parse_date("2020-12-31", ""), before=parse_date("2021-01-02", "")))
    assert sorted(names(in_2021)) == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"]
    after_2022 = names(search(collection, tiny_encoder,
                              Query(**q, after=parse_date("2022-01-01", ""))))
    assert "dated-2023.jpg" in after_2022 and "dated-2019.jpg" not in after_2022
    assert not {"p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"} & set(after_2022)


def test_min_score_drops_weaker_results(indexed, tiny_encoder):
    _, collection = indexed
    scores = [r.score for r in search(collection, tiny_encoder, Query(text="x", k=50))]
    cut = sorted(scores)[len(scores) // 2]
    kept = search(collection, tiny_encoder, Query(text="x", k=50, min_score=cut))
    assert all(r.score >= cut for r in kept) and 0 < len(kept) < len(scores)


@pytest.mark.parametrize(
    ("spec", "term"),
    [("sunset", Term(1.0, text="sunset")), ("2:sunset", Term(2.0, text="sunset")),
     ("0.5:item:12", Term(0.5, item=12)), ("item:7", Term(1.0, item=7)),
     ("note: a colon", Term(1.0, text="note: a colon"))],
)
def test_parse_term(spec, term):
    assert parse_term(spec) == term


def test_parse_term_reads_existing_files_as_images(tmp_path):
    path = write_photo(tmp_path / "photo.jpg", (1, 2, 3))
    assert parse_term(f"2:{path}") == Term(2.0, image=path)


@pytest.mark.parametrize(
    ("query", "words"),
    [(Query(text="a", sub=(Term(-1, text="b"),)), "must be positive"),
     (Query(text="a", after=2.0, before=1.0), "--after must be earlier"),
     (Query(text="a", image=Path("x.jpg")), "not both or neither")],
)
def test_bad_queries_say_what_to_do(query, words):
    with pytest.raises(UsageError, match=words):
        query.check()


def test_bad_date_names_the_flag():
    with pytest.raises(UsageError, match="--after 'last tuesday' is not a date"):
        parse_date("last tuesday", "--after")


def test_html_page_embeds_thumbnails_and_passages(indexed, cli, tmp_path):
    _, collection = indexed
    page = tmp_path / "out" / "results.html"
    result = cli("search", "summer <trip>", "--to", "all", "-k", "20", "--html", page, "--db",
                 collection.directory)
    assert result.exit_code == 0 and f"wrote {page}" in result.stderr
    text = page.read_text()
    assert text.count('<div class="card image">') == 10
    assert text.count("data:image/jpeg;base64,") == 10  # self-contained: no file links
    assert "a note about a <mark>summer</mark> <mark>trip</mark>" in text  # words marked
    assert "(passage 0)" in text
    assert "summer &lt;trip&gt;" in text  # the query is escaped


def test_terminal_detection():
    assert terminal_protocol({"TERM": "xterm-kitty"}) == "kitty"
    assert terminal_protocol({"TERM_PROGRAM": "iTerm.app"}) == "iterm2"
    assert terminal_protocol({"TERM": "xterm-256color"}) is None


def test_inline_image_escape_codes():
    png = os.urandom(5000)  # 6668 base64 bytes: two kitty chunks
    kitty = inline_image(png, "kitty")
    assert kitty.startswith("\x1b_Ga=T,f=100,m=1;") and kitty.count("\x1b_G") == 2
    assert "\x1b_Gm=0;" in kitty and all(len(c) <= KITTY_CHUNK + 20 for c in kitty.split("\x1b\\"))
    iterm = inline_image(png, "iterm2")
    assert iterm.startswith(f"\x1b]1337;File=inline=1;size={len(png)};") and iterm.endswith("\x07")


def test_preview_without_a_capable_terminal_says_so_and_shows_the_table(indexed, cli):
    _, collection = indexed
    result = cli("search", "x", "--preview", "--db", collection.directory)
    assert result.exit_code == 0
    assert "--preview needs a kitty or iTerm2 terminal" in result.stderr
    assert "score" in result.stdout


def test_version_and_documented_environment(cli):
    from retriever import __version__

    assert cli("--version").stdout.strip() == f"retriever {__version__}"
    help_text = cli("index", "--help").stdout
    assert "RETRIEVER_DB" in help_text and "RETRIEVER_MODEL" in help_text
    assert "--install-completion" in cli("--help").stdout


@pytest.mark.parametrize("query", [
    Query(text="a", add=(Term(float("nan"), text="b"),)),
    Query(text="a", add=(Term(float("inf"), text="b"),)),
    Query(text="a", sub=(Term(float("-inf"), text="b"),)),
    Query(text="a", min_score=float("nan")),
    Query(text="a", min_score=float("inf")),
    Query(item=2**64),
    Query(text="a", add=(Term(item=-(2**70)),)),
], ids=["nan weight", "inf weight", "-inf weight", "nan min-score", "inf min-score",
        "item past 64 bits", "term item past 64 bits"])
def test_non_finite_and_out_of_range_values_are_usage_errors(query):
    with pytest.raises(UsageError):
        query.check()


@pytest.mark.parametrize("spec", ["nan:cat", "inf:cat", "-inf:cat", "1e999:cat", "NaN:cat"])
def test_non_finite_weights_from_the_command_line_are_refused(spec):
    with pytest.raises(UsageError, match="must be positive and finite"):
        Query(text="a", add=(parse_term(spec),)).check()


def test_a_huge_text_query_is_cut_before_tokenizing(indexed, tiny_encoder, monkeypatch):
    """A 20 MB query must not be tokenized whole: the encoder sees what the model can read."""
    from retriever.search.query import CHARS_PER_TOKEN

    _, collection = indexed
    seen: list[int] = []
    original = tiny_encoder.encode_texts

    def counted(texts):
        seen.extend(len(t) for t in texts)
        return original(texts)

    monkeypatch.setattr(tiny_encoder, "encode_texts", counted)
    huge = "red paint " * 2_000_000  # 20 MB
    found = search(collection, tiny_encoder, Query(text=huge, k=5))
    cut = search(collection, tiny_encoder, Query(
        text=huge[: CHARS_PER_TOKEN * tiny_encoder.context_length], k=5))
    assert seen and max(seen) <= CHARS_PER_TOKEN * tiny_encoder.context_length
    assert [(r.id, r.score) for r in found] == [(r.id, r.score) for r in cut]


def test_k_beyond_the_index_is_the_whole_index(indexed, tiny_encoder):
    _, collection = indexed
    everything = search(collection, tiny_encoder, Query(text="red", k=2**62))
    assert len(everything) == len(search(collection, tiny_encoder, Query(text="red", k=1000)))
