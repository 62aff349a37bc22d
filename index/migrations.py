"""Numbered schema migrations for the metadata store.

Each migration runs in one transaction together with the row that records it, so a store is
always at exactly one known version, whatever fails half-way (a full disk, a killed process):
both databases roll DDL back. On SQLite that needs an explicit BEGIN (`_exclusive`): Python's
sqlite3 opens a transaction only before INSERT/UPDATE/DELETE, so a CREATE or ALTER TABLE would
run on its own and stay applied, with no version row, and the store could never open again.
Never edit a released migration: append a new one.

The DDL is SQLite's, word for word, so SQLite stores are made exactly as they always were; the
few words PostgreSQL spells otherwise are written {int}, {rowid}, {serial} and {blob} and filled
in per database (`DIALECT_WORDS`). FLOAT is a double on both.

This is the one statement of the schema. SQLAlchemy is imported by the functions that run a
migration, not by this module: a one-off search checks a SQLite store's version (`LATEST`,
`APPLIED`) through sqlite3 alone (index.connection).
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING

from retriever.errors import IndexReadOnly

if TYPE_CHECKING:
    from sqlalchemy import Connection, TextClause

Migration = tuple[int, str, Callable[["Connection"], None]]

# SQLite's INTEGER is 64-bit; INTEGER PRIMARY KEY is its rowid, and AUTOINCREMENT keeps a
# deleted id from ever coming back, as a PostgreSQL sequence (BIGSERIAL) never gives one twice.
# Any other database gets SQLite's words, as before.
DIALECT_WORDS = {
    "sqlite": {"int": "INTEGER", "rowid": "INTEGER PRIMARY KEY",
               "serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB"},
    "postgresql": {"int": "BIGINT", "rowid": "BIGSERIAL PRIMARY KEY",
                   "serial": "BIGSERIAL PRIMARY KEY", "blob": "BYTEA"},
}


def text(sql: str) -> TextClause:
    """SQLAlchemy's `text`, imported when a migration runs."""
    from sqlalchemy import text as sqlalchemy_text

    return sqlalchemy_text(sql)


def _execute(conn: Connection, *statements: str) -> None:
    """Run statements written with {int}, {rowid}, {serial}, {blob} in this database's words."""
    words = DIALECT_WORDS.get(conn.dialect.name, DIALECT_WORDS["sqlite"])
    for statement in statements:
        conn.execute(text(statement.format(**words)))


def _v1_initial(conn: Connection) -> None:
    statements = [
        """CREATE TABLE collection_model (
            id {int} PRIMARY KEY CHECK (id = 1),
            name TEXT NOT NULL,
            pretrained TEXT NOT NULL,
            dim {int} NOT NULL,
            created_at FLOAT NOT NULL
        )""",
        """CREATE TABLE files (
            id {rowid},
            path TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            size {int} NOT NULL,
            mtime FLOAT NOT NULL,
            width {int},
            height {int},
            caption TEXT,
            indexed_at FLOAT NOT NULL
        )""",
        "CREATE INDEX ix_files_content_hash ON files (content_hash)",
        # AUTOINCREMENT: an item id is never reused, so a stale FAISS id can never name
        # another item.
        """CREATE TABLE items (
            id {serial},
            file_id {int} NOT NULL REFERENCES files (id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            position {int} NOT NULL,
            passage TEXT
        )""",
        "CREATE INDEX ix_items_file_id ON items (file_id)",
        "CREATE INDEX ix_items_kind ON items (kind)",
        """CREATE TABLE vectors (
            item_id {int} PRIMARY KEY REFERENCES items (id) ON DELETE CASCADE,
            data {blob} NOT NULL
        )""",
    ]
    _execute(conn, *statements)


def _v2_runs_failures_generation(conn: Connection) -> None:
    statements = [
        # Bumped by every write transaction; a FAISS file records the generation it was saved
        # at, so a reader can tell a stale file from a current one.
        """CREATE TABLE store_state (
            id {int} PRIMARY KEY CHECK (id = 1),
            generation {int} NOT NULL
        )""",
        "INSERT INTO store_state (id, generation) VALUES (1, 0)",
        """CREATE TABLE runs (
            id {serial},
            started_at FLOAT NOT NULL,
            finished_at FLOAT,
            status TEXT NOT NULL,
            stats TEXT NOT NULL DEFAULT '{{}}'
        )""",
        """CREATE TABLE failures (
            path TEXT PRIMARY KEY,
            size {int},
            mtime FLOAT,
            reason TEXT NOT NULL,
            run_id {int} NOT NULL
        )""",
    ]
    _execute(conn, *statements)


def _v3_taken_at(conn: Connection) -> None:
    # When a photo was taken (EXIF DateTimeOriginal), else the file's mtime: --after/--before.
    conn.execute(text("ALTER TABLE files ADD COLUMN taken_at FLOAT"))
    conn.execute(text("UPDATE files SET taken_at = mtime"))
    conn.execute(text("CREATE INDEX ix_files_taken_at ON files (taken_at)"))


def _v4_model_fingerprint(conn: Connection) -> None:
    # sha256 of the model's config and weights (retriever.encoding.checkpoints.model_fingerprint):
    # a config
    # or weights file edited in place changes it, and the index refuses the changed model.
    # NULL for stores made before: the next `retriever index` records it.
    conn.execute(text("ALTER TABLE collection_model ADD COLUMN fingerprint TEXT"))


def _v5_tags(conn: Connection) -> None:
    # Zero-shot tags (`retriever tag`): an image's best label(s) among one label set. The set is
    # named by its sorted labels as a JSON list, so tagging with the same labels again replaces
    # that set's tags, and tags from other sets stay.
    _execute(conn, """CREATE TABLE tags (
        item_id {int} NOT NULL REFERENCES items (id) ON DELETE CASCADE,
        label_set TEXT NOT NULL,
        label TEXT NOT NULL,
        score FLOAT NOT NULL,
        PRIMARY KEY (item_id, label_set, label)
    )""")
    conn.execute(text("CREATE INDEX ix_tags_label ON tags (label)"))


def _v6_item_time(conn: Connection) -> None:
    # Video frames (kind 'video') are items at a moment of their file: seconds from its start.
    # NULL for every other kind. OCR text of an image is kind 'image-text'; kinds are plain
    # strings, so new kinds need no schema change.
    conn.execute(text("ALTER TABLE items ADD COLUMN time FLOAT"))


def _v7_item_page_section(conn: Connection) -> None:
    # Where a document passage came from: its page (PDF, 1-based) or its heading/chapter
    # (DOCX, ODT, EPUB, HTML). NULL for every other item and for passages stored before.
    _execute(conn, "ALTER TABLE items ADD COLUMN page {int}",
             "ALTER TABLE items ADD COLUMN section TEXT")


def _v9_words_read(conn: Connection) -> None:
    # 1 once `index --ocr` has read an image's words (whether it found any), NULL before: a
    # later --ocr run reads only the images still NULL. A file's row is written anew when its
    # bytes change, so new bytes are unread. Images with words stored already were read.
    _execute(conn, "ALTER TABLE files ADD COLUMN words_read {int}",
             "UPDATE files SET words_read = 1 WHERE files.id IN "
             "(SELECT items.file_id FROM items WHERE items.kind = 'image-text')")


# Keyword rows (migration 8): what an item is found by, by words rather than by meaning. The
# same rows on both databases, one per item, defined once by the view `keyword_rows`: a TEXT
# passage or an image's OCR words (`body`), with its file's caption and file name (`label`);
# an image or a video frame by its caption and name alone, once per file (its kind's first
# item). SQLite: an FTS5 index over that view (external content: no text stored twice),
# unicode61 words, accents dropped; index.keywords keeps it in step with every write.
# PostgreSQL: a tsvector per item ('simple': no stemming, names stay whole), weighted A for
# the label and B for the body, GIN-indexed; its rows go when their items do (cascade).
KEYWORD_FIRST_ITEM = (
    "items.kind IN ('text', 'image-text') OR items.position = (SELECT min(head.position) "
    "FROM items AS head WHERE head.file_id = items.file_id AND head.kind = items.kind)")
# PostgreSQL's parser reads "receipt-INV-48213.jpg" as one file name token and "a-b" as a
# hyphenated word with its parts; SQLite's unicode61 splits at every such mark. Punctuation
# becomes spaces first (`keyword_text`, a function of the store), for documents and queries
# alike, so both databases see the same words. Frozen: the stored tsvectors were made with it.
KEYWORD_PUNCTUATION = ("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"  # ASCII's, and common others
                       "\u2013\u2014\u2018\u2019\u201a\u201c\u201d\u201e\u2026\u00ab\u00bb\u2039"
                       "\u203a\u00b7\u2022\u00a1\u00bf")
# Latin letters with accents (U+00C0 to U+024F that decompose to an ASCII letter and marks) and
# that letter: `keyword_text` drops the accents, as SQLite's remove_diacritics does ("Café"
# finds "cafe"). Canonical decompositions never change (Unicode's stability policy).
KEYWORD_ACCENTED = "".join(chr(c) for c in range(0xC0, 0x250)
                           if len(unicodedata.normalize("NFD", chr(c))) > 1
                           and unicodedata.normalize("NFD", chr(c))[0].isascii())
KEYWORD_UNACCENTED = "".join(unicodedata.normalize("NFD", c)[0] for c in KEYWORD_ACCENTED)


def _v10_vector_precision(conn: Connection) -> None:
    # The arithmetic that made the index's vectors: "fp32" (torch or ONNX fp32 on CPU), "int8"
    # (ONNX int8 image tower), "fp16" (torch autocast on CUDA). NULL for stores made before:
    # their vectors were fp32 (int8 was never the default then).
    conn.execute(text("ALTER TABLE collection_model ADD COLUMN vector_precision TEXT"))


def _v11_duplicate_threshold(conn: Connection) -> None:
    # `retriever duplicates`' threshold as measured on this model and collection
    # (retriever.library.calibration): one row, reused while the model (fingerprint) and the
    # precision asked are the same and the collection has not doubled since.
    _execute(conn, """CREATE TABLE duplicate_threshold (
        id {int} PRIMARY KEY CHECK (id = 1),
        threshold FLOAT NOT NULL,
        target_precision FLOAT NOT NULL,
        sample {int} NOT NULL,
        images {int} NOT NULL,
        recall FLOAT NOT NULL,
        fingerprint TEXT,
        measured_at FLOAT NOT NULL
    )""")


def _v8_keywords(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        _v8_keywords_postgresql(conn)
        return
    name = "substr(files.path, length(rtrim(files.path, replace(files.path, '/', ''))) + 1)"
    conn.execute(text(
        "CREATE VIEW keyword_rows AS SELECT items.id AS item_id, files.path AS path, "
        f"items.passage AS body, coalesce(files.caption, '') || ' ' || {name} AS label "
        f"FROM items JOIN files ON files.id = items.file_id WHERE {KEYWORD_FIRST_ITEM}"))
    conn.execute(text(
        "CREATE VIRTUAL TABLE keywords USING fts5(body, label, content='keyword_rows', "
        "content_rowid='item_id', tokenize='unicode61 remove_diacritics 2')"))
    conn.execute(text("INSERT INTO keywords(keywords) VALUES ('rebuild')"))  # the backfill


def _v8_keywords_postgresql(conn: Connection) -> None:
    marks = (KEYWORD_PUNCTUATION + KEYWORD_ACCENTED).replace("'", "''")
    plain = " " * len(KEYWORD_PUNCTUATION) + KEYWORD_UNACCENTED
    conn.execute(text(  # text(): no ':word' in it, and it doubles the '%' for the driver
        "CREATE FUNCTION keyword_text(words text) RETURNS text LANGUAGE sql IMMUTABLE "
        f"PARALLEL SAFE AS $$ SELECT translate(words, '{marks}', '{plain}') $$"))
    words = ("setweight(to_tsvector('simple', keyword_text(coalesce(items.passage, ''))), 'B') "
             "|| setweight(to_tsvector('simple', keyword_text(coalesce(files.caption, '') || "
             "' ' || regexp_replace(files.path, '^.*/', ''))), 'A')")
    conn.exec_driver_sql(
        f"CREATE VIEW keyword_rows AS SELECT items.id AS item_id, files.path AS path, {words} "
        f"AS words FROM items JOIN files ON files.id = items.file_id WHERE {KEYWORD_FIRST_ITEM}")
    conn.exec_driver_sql("CREATE TABLE keywords (item_id BIGINT PRIMARY KEY REFERENCES items "
                         "(id) ON DELETE CASCADE, words TSVECTOR NOT NULL)")
    conn.exec_driver_sql("INSERT INTO keywords (item_id, words) SELECT item_id, words "
                         "FROM keyword_rows")  # the backfill, before the index: faster
    conn.exec_driver_sql("CREATE INDEX ix_keywords_words ON keywords USING GIN (words)")


MIGRATIONS: list[Migration] = [
    (1, "initial: collection_model, files, items, vectors", _v1_initial),
    (2, "store_state generation, runs, failures", _v2_runs_failures_generation),
    (3, "files.taken_at", _v3_taken_at),
    (4, "collection_model.fingerprint", _v4_model_fingerprint),
    (5, "tags", _v5_tags),
    (6, "items.time (video frames)", _v6_item_time),
    (7, "items.page, items.section (document passages)", _v7_item_page_section),
    (8, "keywords: full-text rows of passages, captions, file names", _v8_keywords),
    (9, "files.words_read (images whose words --ocr read)", _v9_words_read),
    (10, "collection_model.vector_precision (fp32, int8, fp16)", _v10_vector_precision),
    (11, "duplicate_threshold (measured on the model and collection)", _v11_duplicate_threshold),
]
LATEST = MIGRATIONS[-1][0]  # a current store's schema version
APPLIED = "SELECT version FROM schema_migrations"  # the versions a store has


def applied_versions(conn: Connection) -> set[int]:
    from sqlalchemy import inspect

    if not inspect(conn).has_table("schema_migrations"):
        return set()
    return {row[0] for row in conn.execute(text(APPLIED))}


def pending(conn: Connection) -> list[int]:
    """Versions a store still lacks (read without writing: a read-only store is checked)."""
    done = applied_versions(conn)
    return [version for version, _, _ in MIGRATIONS if version not in done]


def check_current(conn: Connection, name: str) -> None:
    """A read-only store cannot be migrated: one older than this code is refused."""
    missing = pending(conn)
    if missing:
        raise IndexReadOnly(
            f"{name} has schema version {missing[0] - 1}, this retriever needs {LATEST}, and "
            f"it is read-only: run `retriever index` once where the index folder is writable "
            f"to upgrade it")


def migrate(connect: Callable[[], object]) -> list[int]:
    """Apply every pending migration; returns the versions applied now.

    `connect` is `engine.begin`: each migration gets its own transaction.
    """
    with connect() as conn:  # type: ignore[attr-defined]
        _exclusive(conn)
        conn.execute(text(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at FLOAT NOT NULL)"
        ))
        done = applied_versions(conn)
    applied = []
    for version, name, apply in MIGRATIONS:
        if version in done:
            continue
        with connect() as conn:  # type: ignore[attr-defined]
            _exclusive(conn)
            if version in applied_versions(conn):  # another process applied it meanwhile
                continue
            apply(conn)
            conn.execute(
                text("INSERT INTO schema_migrations VALUES (:v, :n, :t)"),
                {"v": version, "n": name, "t": time.time()},
            )
        applied.append(version)
    return applied


def _exclusive(conn: Connection) -> None:
    """Open this migration's transaction for real, held by one process at a time: processes
    opening a new store together migrate it one after another. SQLite: BEGIN IMMEDIATE (the
    write lock, waited for by busy_timeout), so the DDL that follows is inside it; without
    it each CREATE/ALTER commits on its own (see the module docstring). The commit and
    rollback SQLAlchemy sends end it. PostgreSQL: a lock held until this transaction ends."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('retriever.migrate:' || "
                          "current_schema()))"))
