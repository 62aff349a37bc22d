"""Keyword rows: what an item is found by when searched by its words rather than its meaning.

The rows are defined once, in the database, by migration 8's view `keyword_rows` (index.
migrations): an item's passage or OCR words, its file's caption and its file name. SQLite
indexes that view with FTS5 as external content, so this module keeps the index in step with
every write of the store: rows added after their items (`add_new`, `add_at`), deleted with the
values they were added with before their files go (`drop_files`) or are recaptioned
(`recaption`), all at once by `clear`. A wrong 'delete' would leave FTS5 damaged (its
integrity check, tests/test_keywords.py, catches one), so every write goes through here. On
PostgreSQL the rows are a table with a tsvector each, added here and deleted by cascade.

A query is the user's words as plain words (`query_words`): FTS5's and tsquery's syntax
(quotes, AND/OR/NOT/NEAR, `*`, `:`, parentheses) never reaches the database unquoted. Every
word must match; a word of several parts ("INV-48213", "4471-2209") matches them as a phrase.
Standard library only: a one-off search runs `hits` through sqlite3.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from index import sql

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from index.connection import CoreTransaction
    from index.records import FileRecord

# --- SQLite: FTS5 over keyword_rows. Its 'delete' takes the row's values as they were indexed,
# read from the view before the files change.
SQLITE_ADD_IDS = ("INSERT INTO keywords (rowid, body, label) SELECT item_id, body, label "
                  "FROM keyword_rows WHERE item_id BETWEEN ? AND ?")
SQLITE_DROP_PATHS = ("INSERT INTO keywords (keywords, rowid, body, label) SELECT 'delete', "
                     "item_id, body, label FROM keyword_rows WHERE path IN ({marks})")
SQLITE_ADD_AT = ("INSERT INTO keywords (rowid, body, label) SELECT item_id, body, label "
                 "FROM keyword_rows WHERE path IN :paths")
SQLITE_DROP_AT = ("INSERT INTO keywords (keywords, rowid, body, label) SELECT 'delete', "
                  "item_id, body, label FROM keyword_rows WHERE path IN :paths")
SQLITE_CLEAR = "INSERT INTO keywords (keywords) VALUES ('delete-all')"
# bm25: lower is better; its weights are the columns' (body, label): a word of the caption or
# file name counts twice one of the passage. Ranked are the newest CANDIDATES matches (all of
# them, where fewer match): bm25 costs microseconds a row, and a common word matches most of a
# million passages. CROSS JOIN: SQLite reads the FTS5 matches first, newest first, unsorted.
SQLITE_HITS = (
    "SELECT id, score FROM (SELECT keywords.rowid AS id, -bm25(keywords, 1.0, 2.0) AS score "
    "FROM keywords CROSS JOIN items ON items.id = keywords.rowid JOIN files ON "
    "files.id = items.file_id WHERE keywords MATCH :match{every} AND items.kind IN :kinds"
    "{where} ORDER BY keywords.rowid DESC LIMIT :candidates) ORDER BY score DESC, id "
    "LIMIT :limit")
# bm25 first counts every row each word matches: 80 ms for a word in most of a million rows.
# So the words in more than CANDIDATES rows (`common`) are left out of the ranked MATCH where
# others are not, and required by this filter: the rows every word matches, which FTS5 finds
# by skipping through the common words' lists (the rarer words bound them).
SQLITE_EVERY = (" AND +keywords.rowid IN (SELECT every.rowid FROM keywords AS every "
                "WHERE every.keywords MATCH :every)")
SQLITE_COMMON = "SELECT rowid FROM keywords WHERE keywords MATCH :match LIMIT 1 OFFSET :candidates"
CANDIDATES = 2_000  # bench/scale.py --keywords: a common word's query in ~10 ms, loaded

# --- PostgreSQL: a tsvector per item (keyword_rows computes it), deleted with its item.
PG_ADD_IDS = ("INSERT INTO keywords (item_id, words) SELECT item_id, words FROM keyword_rows "
              "WHERE item_id = ANY(%b)")
PG_ADD_AT = ("INSERT INTO keywords (item_id, words) SELECT item_id, words FROM keyword_rows "
             "WHERE path IN :paths")
PG_DROP_AT = ("DELETE FROM keywords USING items, files WHERE keywords.item_id = items.id "
              "AND files.id = items.file_id AND files.path IN :paths")
PG_CLEAR = "DELETE FROM keywords"
# ts_rank_cd's weights are those of D, C, B (the body) and A (the label), as bm25's on SQLite;
# normalization 1: divided by 1 + log(words in the row), as bm25 favours short rows.
# A user's word is a phrase of its parts after keyword_text (migration 8) took punctuation out.
PG_WORD = "phraseto_tsquery('simple', keyword_text(:word_{n}))"
# The query is written out twice, not a CTE: as a constant (its functions are immutable) the
# planner weighs it by the column's statistics and picks the GIN index for rare words.
PG_HITS = (
    "SELECT id, ts_rank_cd(ARRAY[0.1, 0.2, 0.5, 1.0]::float4[], hit.words, {query}, 1) AS "
    "score FROM (SELECT keywords.item_id AS id, keywords.words FROM keywords JOIN items ON "
    "items.id = keywords.item_id JOIN files ON files.id = items.file_id "
    "WHERE keywords.words @@ ({query}) AND items.kind IN :kinds{where} "
    "ORDER BY keywords.item_id DESC LIMIT :candidates) AS hit ORDER BY score DESC, id "
    "LIMIT :limit")

CAPTIONS = "SELECT files.path, files.caption FROM files WHERE files.path IN :paths"

# Characters that are never part of a word: control characters (NUL ends an FTS5 string and
# PostgreSQL refuses it) and lone surrogates (not encodable: a JSON "\ud800")
_NOT_WORDS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def query_words(text: str) -> list[str]:
    """The words of a user's query: split at whitespace and control characters, a word
    without a letter or digit left out (punctuation alone matches nothing: FTS5 would match
    no row for it, and every other word must still match), repeats (ignoring case) once."""
    seen: dict[str, str] = {}
    for word in _NOT_WORDS.sub(" ", text).split():
        if any(c.isalnum() for c in word):
            seen.setdefault(word.casefold(), word)
    return list(seen.values())


def common(rows: Callable[[str, dict], Sequence], words: Sequence[str]) -> list[str]:
    """SQLite: those of `words` that match more than CANDIDATES rows (`rows` runs a statement:
    one cheap probe a word, stopping at that many)."""
    return [word for word in words
            if rows(SQLITE_COMMON, {"match": _phrase(word), "candidates": CANDIDATES})]


def hits(words: Sequence[str], common: Sequence[str], kinds: Sequence[str], where: str,
         postgresql: bool) -> tuple[str, dict[str, Any]]:
    """The statement of `Queries.keyword_hits` for `words` (`query_words`; on SQLite those
    `common` found in many rows ranked by the others, if any) of `kinds` with the filter
    clauses `where` (sql.where) and its parameters, but for those of `where` and `:limit`.
    Where more than CANDIDATES items match, the newest CANDIDATES are ranked."""
    if postgresql:
        query = " && ".join(PG_WORD.format(n=n) for n in range(len(words)))
        statement, params = sql.expand(PG_HITS.format(query=query, where=where),
                                       kinds=list(kinds))
        return statement, {**params, "candidates": CANDIDATES,
                           **{f"word_{n}": w for n, w in enumerate(words)}}
    ranked = [word for word in words if word not in common] or list(words)
    every = SQLITE_EVERY if len(ranked) < len(words) else ""
    statement, params = sql.expand(SQLITE_HITS.format(every=every, where=where),
                                   kinds=list(kinds))
    return statement, {**params, "candidates": CANDIDATES, "match": _match(ranked),
                       **({"every": _match(words)} if every else {})}


def _phrase(word: str) -> str:
    """A word as an FTS5 string: a phrase of its tokens, nothing in it read as syntax."""
    return '"' + word.replace('"', '""') + '"'


def _match(words: Sequence[str]) -> str:
    return " AND ".join(_phrase(word) for word in words)


def add_new(conn: Connection, item_ids: Sequence[int]) -> None:
    """Add the rows of items just inserted (`index.bulk`; on SQLite their ids are one run)."""
    if not item_ids:
        return
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(PG_ADD_IDS, (list(item_ids),))
    else:
        conn.exec_driver_sql(SQLITE_ADD_IDS, (min(item_ids), max(item_ids)))


def drop_files(conn: Connection, paths: Sequence[str]) -> None:
    """Drop the rows of the files at `paths`, about to be deleted (`index.bulk`): on SQLite,
    now, while keyword_rows still holds them; PostgreSQL's go by cascade."""
    if conn.dialect.name != "postgresql" and paths:
        conn.exec_driver_sql(SQLITE_DROP_PATHS.format(marks=", ".join("?" * len(paths))),
                             tuple(paths))


def recaption(tx: CoreTransaction, records: Sequence[FileRecord], postgresql: bool
              ) -> list[str]:
    """Drop the rows of the files among `records` whose caption is about to change; returns
    their paths, to `add_at` once the files hold the new captions."""
    captions = {r.path: r.caption for r in records}
    changed = []
    for statement, params in sql.with_list(CAPTIONS, list(captions), "paths"):
        changed += [path for path, caption in tx.rows(statement, params)
                    if caption != captions[path]]
    for statement, params in sql.with_list(PG_DROP_AT if postgresql else SQLITE_DROP_AT,
                                           changed, "paths"):
        tx.rows(statement, params)
    return changed


def add_at(tx: CoreTransaction, paths: Sequence[str], postgresql: bool) -> None:
    """Add the rows of the files at `paths` (their rows dropped before: `recaption`)."""
    for statement, params in sql.with_list(PG_ADD_AT if postgresql else SQLITE_ADD_AT,
                                           paths, "paths"):
        tx.rows(statement, params)


def clear(tx: CoreTransaction, postgresql: bool) -> None:
    """Drop every row (`Store.clear`, before the items go)."""
    tx.rows(PG_CLEAR if postgresql else SQLITE_CLEAR)
