"""Keyword search in the store (`Store.keyword_hits`, index.keywords): an item is found by the
words of its passage or OCR text, its file's caption and its file name; every word typed must
match, a word of several parts as a phrase; what a user types is never query syntax. On SQLite
and PostgreSQL (`stores`); on SQLite FTS5's own integrity check proves the index matches the
rows after every kind of write."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from index.kinds import IMAGE, IMAGE_TEXT, KINDS, TEXT, VIDEO
from index.records import FileRecord, ItemRecord, TagRecord
from index.store import Store, open_store

from .helpers import engine_at_version, vec

ALL = list(KINDS)
RECEIPT = "/m/scans/IMG_2041 receipt-INV-48213.jpg"
NOTES = "/m/docs/notes.txt"
CLIP = "/m/video/holiday.mp4"
OTHER = "/m/scans/IMG_2042.jpg"
LONG = ("the quarterly invoice was paid late again and the supplier wrote a long letter about "
        "it which nobody read carefully because the office had moved twice that year")


def corpus() -> list[tuple[FileRecord, list[ItemRecord]]]:
    """A scanned receipt (with OCR words), a text of three passages, a video of three frames
    and an image whose OCR words hold the receipt's number in other order."""
    return [
        (FileRecord(RECEIPT, IMAGE, "h1", 1, 1.0, caption="a paper receipt", taken_at=100.0),
         [ItemRecord(IMAGE, 0, None, vec(1)),
          ItemRecord(IMAGE_TEXT, 0, "TOTAL 4471-2209 Café Müller", vec(2))]),
        (FileRecord(NOTES, TEXT, "h2", 1, 1.0, taken_at=200.0),
         [ItemRecord(TEXT, 0, "invoice invoice invoice", vec(3)),
          ItemRecord(TEXT, 1, LONG, vec(4), page=2),
          ItemRecord(TEXT, 2, "reference INV-48214, see the receipt", vec(5))]),
        (FileRecord(CLIP, VIDEO, "h3", 1, 1.0, caption="sunset over the harbour",
                    taken_at=300.0),
         [ItemRecord(VIDEO, n, None, vec(6 + n), time=float(n)) for n in range(3)]),
        (FileRecord(OTHER, IMAGE, "h4", 1, 1.0, taken_at=400.0),
         [ItemRecord(IMAGE, 0, None, vec(9)),
          ItemRecord(IMAGE_TEXT, 0, "48213 inv (not the number)", vec(10))]),
    ]


@pytest.fixture
def store(stores):
    s = Store(stores.url())
    s.write_files(corpus())
    yield s
    s.close()


def places(store: Store, hits: list[tuple[int, float]]) -> list[tuple[str, str, int]]:
    """(file name, kind, position) of each hit, in order."""
    views = store.items([i for i, _ in hits])
    return [(views[i].path.rsplit("/", 1)[1], views[i].kind, views[i].position) for i, _ in hits]


def found(store: Store, words: str, kinds=ALL, limit: int = 100, **filters) -> set:
    return set(places(store, store.keyword_hits(words, kinds, limit, **filters)))


def check_index(store: Store) -> None:
    """SQLite: FTS5 compares its index with the rows of keyword_rows, and raises if they
    differ (a 'delete' with other values than were indexed, a row left behind or missing)."""
    if not store.postgresql:
        with store.engine.begin() as conn:
            conn.execute(text("INSERT INTO keywords (keywords, rank) "
                              "VALUES ('integrity-check', 1)"))


def test_a_number_in_a_file_name_is_found_as_typed_and_nothing_like_it(store):
    hits = store.keyword_hits("INV-48213", ALL, 10)
    assert set(places(store, hits)) == {
        ("IMG_2041 receipt-INV-48213.jpg", IMAGE, 0),
        ("IMG_2041 receipt-INV-48213.jpg", IMAGE_TEXT, 0)}  # not INV-48214, not "48213 inv"
    assert all(score > 0 for _, score in hits)
    assert found(store, "4471-2209") == {("IMG_2041 receipt-INV-48213.jpg", IMAGE_TEXT, 0)}
    assert found(store, "4471 2209") == found(store, "4471-2209")
    assert found(store, "4471-2208") == set()


def test_captions_names_ocr_words_and_passages_are_found(store):
    assert found(store, "receipt", [IMAGE]) == {("IMG_2041 receipt-INV-48213.jpg", IMAGE, 0)}
    assert found(store, "paper") == {("IMG_2041 receipt-INV-48213.jpg", IMAGE, 0),
                                     ("IMG_2041 receipt-INV-48213.jpg", IMAGE_TEXT, 0)}
    assert found(store, "müller", [IMAGE_TEXT]) == {
        ("IMG_2041 receipt-INV-48213.jpg", IMAGE_TEXT, 0)}
    assert found(store, "cafe muller") == found(store, "CAFÉ Müller")  # accents, case
    assert found(store, "supplier letter") == {("notes.txt", TEXT, 1)}
    assert found(store, "notes", [TEXT]) == {("notes.txt", TEXT, n) for n in range(3)}


def test_a_video_is_found_by_its_caption_and_name_once(store):
    assert found(store, "harbour sunset") == {("holiday.mp4", VIDEO, 0)}
    assert found(store, "holiday") == {("holiday.mp4", VIDEO, 0)}


def test_every_word_must_match_in_the_same_item(store):
    assert found(store, "invoice supplier") == {("notes.txt", TEXT, 1)}
    assert found(store, "invoice receipt") == set()  # in two passages, never in one
    assert found(store, "receipt reference") == {("notes.txt", TEXT, 2)}


def test_the_best_match_comes_first(store):
    hits = store.keyword_hits("invoice", [TEXT], 10)
    assert places(store, hits) == [("notes.txt", TEXT, 0), ("notes.txt", TEXT, 1)]
    assert hits[0][1] > hits[1][1]
    assert places(store, store.keyword_hits("invoice", [TEXT], 1)) == [("notes.txt", TEXT, 0)]
    assert store.keyword_hits("invoice", [TEXT], 0) == []


def test_many_matches_rank_the_newest_candidates(stores, monkeypatch):
    """Where more items match than index.keywords.CANDIDATES, the newest that many are ranked
    (bm25 costs time a row): the best of them first."""
    monkeypatch.setattr("index.keywords.CANDIDATES", 4)
    store = Store(stores.url())
    try:
        written = store.write_files([
            (FileRecord(f"/m/{n}.txt", TEXT, f"h{n}", 1, 1.0),
             [ItemRecord(TEXT, 0, " ".join(["harbour"] * (1 + n % 3) + ["boat"] * 5), vec(n))])
            for n in range(10)])
        ids = written.added[TEXT][0].tolist()
        hits = store.keyword_hits("harbour", [TEXT], 10)
        assert {i for i, _ in hits} == set(ids[-4:])
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
        assert hits[0][0] == ids[-2]  # "harbour" thrice, the best row (n = 8)
        assert [i for i, _ in store.keyword_hits("harbour", [TEXT], 2)] == [
            i for i, _ in hits[:2]]
    finally:
        store.close()


def test_a_common_word_still_filters_when_a_rarer_one_ranks(stores, monkeypatch):
    """On SQLite a word in more than CANDIDATES items is left out of the ranking when a rarer
    word is typed with it (index.keywords.SQLITE_EVERY), and still required: the same items
    match, ranked by the rarer word. PostgreSQL ranks every word, the same items."""
    monkeypatch.setattr("index.keywords.CANDIDATES", 3)
    store = Store(stores.url())
    try:
        boats = {2: 1, 5: 3}  # and a file without "harbour": three, no more than CANDIDATES
        written = store.write_files([
            (FileRecord(f"/m/{n}.txt", TEXT, f"h{n}", 1, 1.0),
             [ItemRecord(TEXT, 0, " ".join(["harbour"] * 2 + ["boat"] * boats.get(n, 0)
                                           + ["x"] * 5), vec(n))]) for n in range(10)]
            + [(FileRecord("/m/lone.txt", TEXT, "h", 1, 1.0), [ItemRecord(TEXT, 0, "boat x",
                                                                          vec(10))])])
        ids = written.added[TEXT][0].tolist()
        for words in ("harbour boat", "boat harbour"):
            hits = store.keyword_hits(words, [TEXT], 10)
            assert {i for i, _ in hits} == {ids[n] for n in boats}, words  # not the newest
            if not store.postgresql:  # ranked by "boat" alone: thrice first
                assert hits[0][0] == ids[5] and hits[0][1] > hits[1][1], words
        assert {i for i, _ in store.keyword_hits("boat", [TEXT], 10)} == {ids[2], ids[5],
                                                                          ids[10]}
        assert store.keyword_hits("harbour nowhere", [TEXT], 10) == []
        assert {i for i, _ in store.keyword_hits("harbour x", [TEXT], 10)} == set(ids[7:10])
    finally:
        store.close()


HOSTILE = ['"', 'a AND', "NEAR(", "*", "'; DROP TABLE files; --", "\x00", "!!! ... ---",
           "receipt OR paper", "NOT receipt", "receipt*", "(receipt)", "receipt:", "^receipt",
           "label:receipt", "receipt & | ! <->", "%s %(x)s :word_0 ?", "\ud800receipt",
           "{receipt}", "\\", "", "   ", "\u200b"]


@pytest.mark.parametrize("words", HOSTILE)
def test_hostile_queries_are_plain_words(store, words):
    """Query syntax of FTS5 or tsquery is words like any other: it neither raises nor matches
    more than the words it holds would."""
    hits = found(store, words)
    plain = [w for w in words.replace("\ud800", " ").split() if any(c.isalnum() for c in w)]
    if not plain:
        assert hits == set()
    for word in plain:  # each item found holds each word as typed
        assert hits <= found(store, word)
    if words in ("receipt OR paper", "NOT receipt"):
        assert hits == set()  # OR and NOT are words no item holds
    if words == "a AND":  # the one passage holding "a" and "and"
        assert hits == {("notes.txt", TEXT, 1)}
    assert store.counts().files == 4


def test_a_long_query_matches_as_its_words(store):
    assert found(store, "invoice " * 1250) == found(store, "invoice")  # 10,000 characters
    assert found(store, " ".join(LONG.split() * 20)) == {("notes.txt", TEXT, 1)}
    assert found(store, "x" * 10_000) == set()
    assert found(store, " ".join(f"w{n}" for n in range(2000))) == set()  # 2,000 words
    assert found(store, "invoice " + " ".join(["supplier"] * 2000)) == {("notes.txt", TEXT, 1)}
    assert found(store, LONG + " nowhere") == set()


def test_filters_are_those_of_item_ids_where(store):
    dog = store.item_ids_where(IMAGE)
    store.replace_tags('["dog"]', dog.tolist(), [TagRecord(int(dog[0]), "dog", 0.9)])
    for filters in ({"prefix": "/m/scans"}, {"prefix": "/m/docs/"}, {"prefix": "/m/sc"},
                    {"after": 150.0}, {"before": 300.0}, {"after": 100.0, "before": 100.5},
                    {"tag": "dog"}, {"tag": "cat"}, {"prefix": "/m", "after": 350.0}):
        for kinds in ([IMAGE], [TEXT, IMAGE_TEXT], ALL):
            hits = {i for i, _ in store.keyword_hits("inv", kinds, 100, **filters)}
            every = {i for i, _ in store.keyword_hits("inv", kinds, 100)}
            allowed = {int(i) for kind in kinds for i in store.item_ids_where(kind, **filters)}
            assert hits == every & allowed, (filters, kinds)
    assert found(store, "receipt", tag="dog") == {("IMG_2041 receipt-INV-48213.jpg", IMAGE, 0)}
    assert store.keyword_hits("receipt", [], 10) == []


def test_rows_follow_files_replaced_removed_and_recaptioned(store):
    store.write_files([(FileRecord(NOTES, TEXT, "h5", 1, 2.0),
                        [ItemRecord(TEXT, 0, "a new text about lighthouses", vec(11))])])
    check_index(store)
    assert found(store, "invoice") == set()
    assert found(store, "lighthouses notes") == {("notes.txt", TEXT, 0)}
    store.touch_files([FileRecord(CLIP, VIDEO, "h3", 1, 5.0, caption="storm at the pier"),
                       FileRecord(RECEIPT, IMAGE, "h1", 1, 5.0, caption="a paper receipt"),
                       FileRecord("/m/absent.jpg", IMAGE, "h9", 1, 5.0, caption="absent")])
    check_index(store)
    assert found(store, "sunset") == set()
    assert found(store, "storm pier") == {("holiday.mp4", VIDEO, 0)}
    assert len(found(store, "paper receipt")) == 2  # an unchanged caption: its rows stay
    store.remove_files([RECEIPT, "/m/never.jpg"])
    check_index(store)
    assert found(store, "4471-2209") == found(store, "paper") == set()
    assert found(store, "48213") == {("IMG_2042.jpg", IMAGE_TEXT, 0)}
    store.clear()
    check_index(store)
    assert found(store, "storm") == found(store, "48213") == set()
    store.write_files(corpus())
    check_index(store)
    assert len(found(store, "INV-48213")) == 2


def test_a_store_of_version_7_finds_its_old_items_once_migrated(stores):
    url = stores.url()
    engine = engine_at_version(url, 7)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO files (id, path, kind, content_hash, size, mtime, "
                          "caption, indexed_at, taken_at) VALUES "
                          "(1, :clip, 'video', 'h1', 1, 1.0, 'old harbour', 1.0, 1.0), "
                          "(2, :notes, 'text', 'h2', 1, 1.0, NULL, 1.0, 1.0)"),
                     {"clip": CLIP, "notes": NOTES})
        conn.execute(text("INSERT INTO items (id, file_id, kind, position, passage) VALUES "
                          "(1, 1, 'video', 0, NULL), (2, 1, 'video', 1, NULL), "
                          "(3, 2, 'text', 0, 'an old passage about INV-77'), "
                          "(4, 2, 'text', 1, 'and another one')"))
    engine.dispose()
    store = Store(url)
    try:
        check_index(store)
        assert found(store, "harbour") == {("holiday.mp4", VIDEO, 0)}
        assert found(store, "inv-77") == {("notes.txt", TEXT, 0)}
        assert found(store, "notes another") == {("notes.txt", TEXT, 1)}
        store.remove_files([NOTES])
        check_index(store)
        assert found(store, "passage") == set()
    finally:
        store.close()


def test_read_only_stores_answer_the_same(stores):
    url = stores.url()
    writer = Store(url)
    writer.write_files(corpus())
    expected = [writer.keyword_hits(w, ALL, 10) for w in ("receipt", "INV-48213", "harbour")]
    writer.close()
    readers = [Store(url, read_only=True)]
    if stores.server is None:  # a one-off search: sqlite3 alone
        readers.append(open_store(url, reading=True))
    for reader in readers:
        try:
            got = [reader.keyword_hits(w, ALL, 10) for w in ("receipt", "INV-48213", "harbour")]
            assert got == expected and all(expected)
        finally:
            reader.close()
