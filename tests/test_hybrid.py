"""Hybrid search (issue 22): keyword hits fused with the cosine ranking, snippets with the
query's words marked, a document's page or section shown.

The model is retriever-tiny with random weights: its cosine ranking of near-identical invoices
("... INV-48210 ...", "... INV-48211 ...") is arbitrary, which is the point: only the keyword
ranking can tell the exact token, and the tests check that hybrid search lets it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import pytest
from rich.text import Text

from index.kinds import TEXT
from index.records import FileRecord, ItemRecord
from retriever.errors import UsageError
from retriever.ingest.pipeline import IngestOptions, ingest_media
from retriever.library.collection import Collection
from retriever.present.html_page import marked_html
from retriever.present.output import MARK, marked, where
from retriever.search.fusion import Fusion, fused
from retriever.search.highlight import ELLIPSIS, SNIPPET_CHARS, Highlighter
from retriever.search.query import Query, Result, search
from retriever.server.remote import request_for

from .helpers import TINY_ARGS, client_for, results, rows, write_photo

TOKENS = [f"INV-4821{n}" for n in range(8)]
OLD = datetime(2020, 1, 1).timestamp()


def invoice(token: str) -> str:
    return f"Invoice {token} for the garden chairs, paid by card on delivery."


def write_library(root: Path) -> Path:
    """Eight near-identical invoices (one token each, two in `old/`, dated 2020), a note
    without the invoice words, a hostile passage, a captioned photo."""
    for n, token in enumerate(TOKENS):
        path = root / ("old" if n < 2 else "new") / f"invoice-{n}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(invoice(token))
        if n < 2:
            import os

            os.utime(path, (OLD, OLD))
    (root / "new" / "garden.txt").write_text("We planted tomatoes by the fence in spring.")
    (root / "new" / "hostile.txt").write_text("<script>alert('x')</script> QX-7 & <b>bold</b>")
    write_photo(root / "photos" / "receipt.jpg", (200, 200, 200))
    (root / "photos" / "receipt.txt").write_text("till receipt 4471-2209 from the café")
    for colour, name in (((220, 30, 30), "red"), ((30, 60, 220), "blue")):
        write_photo(root / "photos" / f"{name}.jpg", colour)
    return root


def build(root: Path, index_dir: Path, encoder) -> Collection:
    collection = Collection.open(index_dir)
    with collection.writing():
        ingest_media(collection, encoder, IngestOptions((write_library(root),)))
    return collection


@pytest.fixture
def on_both(tmp_path, tiny_encoder, store_env):
    """The library indexed on SQLite, then on PostgreSQL."""
    collection = build(tmp_path / "lib", tmp_path / "index", tiny_encoder)
    yield tmp_path / "lib", collection
    collection.close()


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_encoder):
    """The library on SQLite, with a PDF-like passage on page 12 written through the store."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("RETRIEVER_STORE_URL", raising=False)
        folder = tmp_path_factory.mktemp("hybrid")
        collection = build(folder / "lib", folder / "index", tiny_encoder)
        text = "Total due under contract ZK-5512, payable within thirty days."
        record = FileRecord(str(folder / "lib" / "report.pdf"), TEXT,
                            hashlib.sha256(text.encode()).hexdigest(), len(text), OLD)
        vector = tiny_encoder.encode_texts([text])[0]
        with collection.writing():
            collection.write_files([(record, [ItemRecord(TEXT, 0, text, vector, page=12)])])
            collection.save()
    yield folder / "lib", collection
    collection.close()


def names(found: list[Result]) -> list[str]:
    return [Path(r.path).name for r in found]


def test_an_exact_token_finds_its_file_first_though_the_cosine_ranks_it_lower(
        on_both, tiny_encoder):
    _, collection = on_both
    by_cosine = {t: names(search(collection, tiny_encoder, Query(
        text=t, target="texts", match="semantic", k=20))) for t in TOKENS}
    missed = [n for n, t in enumerate(TOKENS) if by_cosine[t][0] != f"invoice-{n}.txt"]
    assert missed, "the random model ranked every invoice first: the test shows nothing"
    for n in missed:
        found = search(collection, tiny_encoder, Query(text=TOKENS[n], target="texts"))
        assert names(found)[0] == f"invoice-{n}.txt", (TOKENS[n], names(found))


def test_a_token_in_a_caption_finds_the_photo_first(on_both, tiny_encoder):
    _, collection = on_both
    found = search(collection, tiny_encoder, Query(text="4471-2209", k=3))
    assert names(found)[0] == "receipt.jpg" and found[0].caption.startswith("till receipt")
    assert found[0].snippet[slice(*found[0].marks[0])] == "4471-2209"


def test_keyword_semantic_and_hybrid_differ_as_they_should(library, tiny_encoder):
    _, collection = library
    ask = dict(text="garden chairs", target="texts", k=20)
    keyword = search(collection, tiny_encoder, Query(**ask, match="keyword"))
    semantic = search(collection, tiny_encoder, Query(**ask, match="semantic"))
    hybrid = search(collection, tiny_encoder, Query(**ask))
    holding = {f"invoice-{n}.txt" for n in range(8)}  # every file holding both words
    assert set(names(keyword)) == holding  # only those, each once
    assert {"garden.txt", "hostile.txt", "report.pdf"} <= set(names(semantic))  # all texts
    assert len(semantic) == len(hybrid) > len(keyword)
    assert set(names(hybrid)[: len(holding)]) == holding  # the keyword hits lead the fusion
    assert set(names(hybrid)) == set(names(semantic))
    # the score is the cosine whichever ranking found it
    cosine = {r.id: r.score for r in semantic}
    assert all(r.score == pytest.approx(cosine[r.id], abs=1e-5) for r in keyword + hybrid)


def test_an_image_query_ignores_keywords(library, tiny_encoder):
    root, collection = library
    image = root / "photos" / "red.jpg"
    hybrid = search(collection, tiny_encoder, Query(image=image, k=5))
    semantic = search(collection, tiny_encoder, Query(image=image, k=5, match="semantic"))
    assert [r.id for r in hybrid] == [r.id for r in semantic] and names(hybrid)[0] == "red.jpg"
    with pytest.raises(UsageError, match="--match keyword needs words"):
        Query(image=image, match="keyword").check()


def test_filters_apply_to_keyword_hits(library, tiny_encoder):
    root, collection = library
    ask = dict(text="garden chairs", target="texts", k=20, match="keyword")
    under = search(collection, tiny_encoder, Query(**ask, path_prefix=str(root / "old")))
    assert sorted(names(under)) == ["invoice-0.txt", "invoice-1.txt"]
    recent = search(collection, tiny_encoder, Query(**ask, after=OLD + 86400))
    assert sorted(names(recent)) == [f"invoice-{n}.txt" for n in range(2, 8)]
    hybrid = search(collection, tiny_encoder, Query(text=TOKENS[0], target="texts",
                                                    path_prefix=str(root / "new")))
    assert "invoice-0.txt" not in names(hybrid) and hybrid  # filtered out of both rankings


def test_marks_point_at_the_matched_words(library, tiny_encoder):
    _, collection = library
    found = search(collection, tiny_encoder, Query(text="CHAIRS invoice inv-48213",
                                                   target="texts", match="keyword"))
    assert names(found) == ["invoice-3.txt"]
    r = found[0]
    assert [r.snippet[a:b] for a, b in r.marks] == ["Invoice", "INV-48213", "chairs"]


def test_highlight_folds_case_and_diacritics_and_cuts_at_words():
    words = Highlighter.of("CAFE inv-48213")
    text = "word " * 80 + "at the Café, invoice INV-48213 was paid " + "more words " * 40
    snippet, marks = words.snippet(text)
    assert [snippet[a:b] for a, b in marks] == ["Café", "INV-48213"]
    assert snippet.startswith(ELLIPSIS + "word ") and snippet.endswith(ELLIPSIS)
    body = snippet.strip(ELLIPSIS)
    assert len(body) <= SNIPPET_CHARS and text.find(body) >= 0  # whole words of the text
    assert Highlighter.of("inv").marks("INV-48213 invoice") == [(0, 3)]  # whole words only
    assert Highlighter.of('"* NEAR( ) AND').marks("a NEAR b and c") == [(2, 6), (9, 12)]
    # the text as it is (the table shows its controls as escapes), cut at any white space
    assert Highlighter.of("paint").snippet("buy\nred\tpaint") == ("buy\nred\tpaint", [(8, 13)])
    cut, _ = Highlighter.of("x").snippet("a\n" * 150 + "x")
    assert cut.startswith(ELLIPSIS + "a\n") and cut.endswith("x")


def test_terminal_and_html_mark_the_words_and_escape_the_text():
    text = Text()
    text.append_text(marked("a \x1b[31m <b>INV-1</b>", [(11, 16)]))
    assert text.plain == "a \\x1b[31m <b>INV-1</b>"  # controls shown, markup not read
    assert [text.plain[s.start:s.end] for s in text.spans if s.style == MARK] == ["INV-1"]
    page = marked_html("<script>x</script> INV-1 & y", [(19, 24)])
    assert page == "&lt;script&gt;x&lt;/script&gt; <mark>INV-1</mark> &amp; y"


def test_html_page_escapes_hostile_passages_while_marking(library, cli, tmp_path):
    _, collection = library
    page = tmp_path / "results.html"
    result = cli("search", "QX-7", "--to", "texts", "--html", page, "--db",
                 collection.directory, *TINY_ARGS)
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)" in html
    assert "<mark>QX-7</mark> &amp; &lt;b&gt;bold" in html


def test_a_document_hit_shows_its_page(library, cli, tiny_encoder):
    _, collection = library
    found = rows(cli("search", "ZK-5512", "--to", "texts", "--json", "--db",
                     collection.directory, *TINY_ARGS))
    top = found[0]
    assert Path(top["path"]).name == "report.pdf" and top["page"] == 12
    assert top["section"] is None and top["found_in"] == "texts"
    assert top["snippet"][slice(*top["marks"][0])] == "ZK-5512"
    table = cli("search", "ZK-5512", "--to", "texts", "-k", "1", "--db", collection.directory,
                *TINY_ARGS)
    assert "report.pdf p. 12" in table.stdout
    heading = Result(1, "/d/guide.docx", 0.5, "text", 3, "x", None, section="Setup")
    assert where(heading) == "/d/guide.docx § Setup"


def test_the_api_returns_snippets_marks_and_pages(library, tiny_encoder):
    _, collection = library
    with client_for(collection, tiny_encoder) as client:
        found = results(client.get("/api/search", params={
            "text": "zk-5512", "target": "texts", "match": "keyword"}))
        assert [Path(r["path"]).name for r in found] == ["report.pdf"]
        row = found[0]
        assert row["page"] == 12 and row["section"] is None
        assert [row["snippet"][a:b] for a, b in row["marks"]] == ["ZK-5512"]
        bad = client.get("/api/search", params={"text": "x", "match": "fuzzy"})
        assert bad.status_code == 400 and "match must be one of" in bad.json()["error"]
        body = client.post("/api/search", json={"text": "garden chairs", "target": "texts",
                                                "match": "semantic", "k": 20})
        assert {Path(r["path"]).name for r in results(body)} >= {"garden.txt"}


def test_a_forwarded_search_carries_match():
    fields, _ = request_for(Query(text="INV-48213", match="keyword"))
    assert fields["match"] == "keyword"


def test_a_bad_match_is_one_line(cli, tmp_path):
    result = cli("search", "x", "--match", "fuzzy", "--db", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --match 'fuzzy' is not a way to match: use hybrid, semantic or keyword"]


def test_fusion_prefers_items_both_rankings_place():
    semantic = [(1, 0.9), (2, 0.8), (3, 0.7)]
    order = fused(semantic, [3, 9], {3: 0.7, 9: 0.1})
    # 9 is placed after the cosine ranking (rank 4): 3 = 1/63 + 1/61, 9 = 1/64 + 1/62,
    # 1 = 1/61, 2 = 1/62
    assert [i for i, _ in order] == [3, 9, 1, 2]
    assert dict(order) == {1: 0.9, 2: 0.8, 3: 0.7, 9: 0.1}  # scores stay cosines
    keyword_heavy = fused(semantic, [9], {9: 0.1}, Fusion(semantic=1.0, keyword=3.0))
    assert keyword_heavy[0][0] == 9
    # some words held (Fusion.partial): a third ranking, weighed as asked; 0 leaves it out
    assert fused(semantic, [], {2: 0.8}, Fusion(partial=1.0), partial=[2])[0][0] == 2
    assert fused(semantic, [], {2: 0.8}, Fusion(), partial=[2])[0][0] == 1


@pytest.mark.parametrize("words", ['"', "a AND", "NEAR(", "*", "'; DROP TABLE items; --",
                                   "\x00", "inv-" * 2500, "(((", "é-" * 300])
def test_hostile_words_are_plain_words(library, tiny_encoder, words):
    _, collection = library
    keyword = search(collection, tiny_encoder, Query(text=words, target="all", match="keyword"))
    assert keyword == []  # no file holds these words: nothing, not everything
    hybrid = search(collection, tiny_encoder, Query(text=words, target="all", k=5))
    assert len(hybrid) == 5  # the cosine ranking still answers
    for r in hybrid:
        assert all(0 <= a < b <= len(r.snippet or "") for a, b in r.marks)
