"""Every statement the store runs, each written once, in the SQL both databases read.

Parameters are `:name`, which sqlite3 (named style) and SQLAlchemy's `text()` both bind; a list
parameter (`IN :ids`) is written out by `expand`, one name per value. The few statements only
one database has (PostgreSQL's locks, sequences and COPY; SQLite's counters) say so in their
names. Standard library only: a one-off search runs these through sqlite3 without SQLAlchemy.
The keyword rows' statements, which differ more between the databases, are index/keywords.py's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

# --- the model, the generation, runs and failures -----------------------------------------

MODEL = ("SELECT name, pretrained, dim, fingerprint, vector_precision FROM collection_model "
         "WHERE id = 1")
SET_MODEL = (
    "INSERT INTO collection_model (id, name, pretrained, dim, fingerprint, vector_precision, "
    "created_at) VALUES (1, :name, :pretrained, :dim, :fingerprint, :precision, :created_at) "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, pretrained = excluded.pretrained, "
    "dim = excluded.dim, fingerprint = excluded.fingerprint, "
    "vector_precision = excluded.vector_precision, created_at = excluded.created_at")
GENERATION = "SELECT store_state.generation FROM store_state"
# Every write transaction that changes what FAISS holds runs this (a FAISS file saved at
# another generation is stale).
BUMP = "UPDATE store_state SET generation = store_state.generation + 1 WHERE store_state.id = 1"
CLEAR = tuple(f"DELETE FROM {table}" for table in (
    "tags", "vectors", "items", "files", "failures", "collection_model", "duplicate_threshold"))
# `retriever duplicates`' measured threshold (retriever.library.calibration), one row
DUPLICATE_THRESHOLD = (
    "SELECT threshold, target_precision, sample, images, recall, fingerprint, measured_at "
    "FROM duplicate_threshold WHERE id = 1")
SET_DUPLICATE_THRESHOLD = (
    "INSERT INTO duplicate_threshold (id, threshold, target_precision, sample, images, recall, "
    "fingerprint, measured_at) VALUES (1, :threshold, :target_precision, :sample, :images, "
    ":recall, :fingerprint, :measured_at) ON CONFLICT (id) DO UPDATE SET "
    "threshold = excluded.threshold, target_precision = excluded.target_precision, "
    "sample = excluded.sample, images = excluded.images, recall = excluded.recall, "
    "fingerprint = excluded.fingerprint, measured_at = excluded.measured_at")

INTERRUPT_RUNS = "UPDATE runs SET status = 'interrupted' WHERE runs.status = 'running'"
START_RUN = ("INSERT INTO runs (started_at, status, stats) VALUES (:started_at, 'running', '{}') "
             "RETURNING runs.id")
FINISH_RUN = ("UPDATE runs SET status = 'completed', finished_at = :finished_at, stats = :stats "
              "WHERE runs.id = :id")
LAST_RUN = ("SELECT runs.id, runs.status, runs.started_at, runs.finished_at, runs.stats "
            "FROM runs ORDER BY runs.id DESC LIMIT 1")
RECORD_FAILURE = (
    "INSERT INTO failures (path, size, mtime, reason, run_id) "
    "VALUES (:path, :size, :mtime, :reason, :run_id) ON CONFLICT (path) DO UPDATE "
    "SET size = excluded.size, mtime = excluded.mtime, reason = excluded.reason, "
    "run_id = excluded.run_id")
CLEAR_FAILURES = "DELETE FROM failures WHERE failures.path IN :paths"
FAILURES = ("SELECT failures.path, failures.reason, failures.size, failures.mtime "
            "FROM failures ORDER BY failures.path")

# --- files and items ------------------------------------------------------------------------

TOUCH_FILE = ("UPDATE files SET size = :size, mtime = :mtime, caption = :caption, "
              "taken_at = :taken_at WHERE files.path = :path")
FILE_STATES = "SELECT files.path, files.size, files.mtime, files.content_hash FROM files"
FILE_STATE = ("SELECT files.size, files.mtime, files.content_hash FROM files "
              "WHERE files.path = :path")
COUNT_FILES = "SELECT count(files.id) FROM files"
# Images whose words `--ocr` has not read for their current bytes (files.words_read NULL)
UNREAD_IMAGES = ("SELECT files.path FROM files WHERE files.kind = 'image' "
                 "AND files.words_read IS NULL")
MARK_WORDS_READ = "UPDATE files SET words_read = 1 WHERE files.path = :path"
# Files with their items and vectors, in (file id, kind, position) order; a file without items
# comes as one row of NULL item columns. `{files}`: which files' ids.
FILE_ITEMS = (
    "SELECT files.path, files.kind, files.content_hash, files.size, files.mtime, files.width, "
    "files.height, files.caption, files.taken_at, items.kind, items.position, items.passage, "
    "vectors.data, items.time, items.page, items.section, files.id FROM files "
    "LEFT JOIN items ON items.file_id = files.id "
    "LEFT JOIN vectors ON vectors.item_id = items.id WHERE files.id IN "
    "({files}) ORDER BY files.id, items.kind, items.position")
# Some file per hash (the first stored)
ITEMS_WITH_HASHES = FILE_ITEMS.format(files=(
    "SELECT min(files.id) FROM files WHERE files.content_hash IN :hashes "
    "GROUP BY files.content_hash"))
# Every file, a page at a time by id (`index --switch` copies a staged store whole)
FILES_AFTER = FILE_ITEMS.format(files=(
    "SELECT files.id FROM files WHERE files.id > :after ORDER BY files.id LIMIT :limit"))
WORDS_READ = "SELECT files.path FROM files WHERE files.words_read = 1"
ITEMS = ("SELECT items.id, files.path, items.kind, items.position, items.passage, "
         "files.caption, items.time, files.taken_at, items.page, items.section FROM items "
         "JOIN files ON "
         "files.id = items.file_id WHERE items.id IN :ids")
HAS_ITEMS = "SELECT items.id FROM items WHERE items.kind = :kind LIMIT 1"
COUNT_ITEMS = "SELECT count(items.id) FROM items WHERE items.kind = :kind"
ITEM_VECTOR = ("SELECT items.kind, vectors.data FROM items JOIN vectors ON "
               "items.id = vectors.item_id WHERE items.id = :id")
# Filters of ITEM_IDS and IMAGE_FILES (`where`), each with its own parameter
ITEM_IDS = ("SELECT items.id FROM items JOIN files ON files.id = items.file_id "
            "WHERE items.kind = :kind{where}")
TAGGED = "items.id IN (SELECT tags.item_id FROM tags WHERE tags.label = :tag)"
TAKEN_AFTER = "files.taken_at >= :after"
TAKEN_BEFORE = "files.taken_at < :before"
RECENT = ("SELECT items.id FROM items JOIN files ON files.id = items.file_id "
          "WHERE items.kind = :kind ORDER BY files.taken_at DESC, items.id DESC LIMIT :limit")
KIND_AT = ("SELECT files.path, items.id FROM files JOIN items ON files.id = items.file_id "
           "WHERE items.kind = :kind AND files.path IN :paths")
IMAGE_FILES = ("SELECT items.id, files.path, files.size, files.width, files.height, "
               "files.content_hash FROM items JOIN files ON files.id = items.file_id "
               "WHERE items.kind = :kind{where} ORDER BY items.id")
ITEMS_AT = ("SELECT files.path, items.kind, items.position, items.id FROM items JOIN files "
            "ON files.id = items.file_id WHERE files.path IN :paths")

# --- vectors ----------------------------------------------------------------------------------

# The files join only for a folder filter (`vectors_sql`)
VECTORS = ("SELECT vectors.item_id, vectors.data FROM vectors JOIN items ON "
           "items.id = vectors.item_id{join} WHERE items.kind = :kind{where} "
           "ORDER BY vectors.item_id")
VECTORS_OF = ("SELECT vectors.item_id, vectors.data FROM vectors WHERE vectors.item_id IN :ids "
              "ORDER BY vectors.item_id")

# --- tags -------------------------------------------------------------------------------------

TAGS = ("SELECT DISTINCT tags.item_id, tags.label FROM tags WHERE tags.item_id IN :ids "
        "ORDER BY tags.item_id, tags.label")
DROP_TAGS = "DELETE FROM tags WHERE tags.label_set = :label_set AND tags.item_id IN :ids"
ADD_TAG = ("INSERT INTO tags (item_id, label_set, label, score) "
           "VALUES (:item_id, :label_set, :label, :score)")
TAG_COUNTS = ("SELECT tags.label, COUNT(DISTINCT tags.item_id) FROM tags GROUP BY tags.label "
              "ORDER BY tags.label")
PLACED_TAGS = ("SELECT files.path, items.kind, items.position, tags.label_set, tags.label, "
               "tags.score FROM tags JOIN items ON tags.item_id = items.id JOIN files ON "
               "files.id = items.file_id ORDER BY tags.item_id")

# --- PostgreSQL only ------------------------------------------------------------------------

# As JSON: datlocprovider is new in PostgreSQL 15 (`Queries._paths_bytewise`)
PG_DATABASE = "SELECT to_jsonb(d) FROM pg_database d WHERE datname = current_database()"
PG_CURRENT_SCHEMA = "SELECT current_schema()"
PG_NAME_SESSION = "SELECT set_config('application_name', :name, false)"
PG_LOCK = "SELECT pg_advisory_lock(:space, :key)"
PG_TRY_LOCK = "SELECT pg_try_advisory_lock(:space, :key)"
PG_UNLOCK = "SELECT pg_advisory_unlock(:space, :key)"
PG_LOCK_HOLDER = (
    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
    "AND l.classid = :space AND l.objid = :key AND l.database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())")

# --- the bulk writes' driver SQL (index.bulk), in each driver's own parameter style ---------

PG_SEQUENCE = "SELECT pg_get_serial_sequence(%s, 'id')"
PG_NEXT_IDS = "SELECT nextval(%s::regclass) AS id FROM generate_series(1, %s) ORDER BY id"
# One past the largest id `table` holds, or (AUTOINCREMENT: items) ever held
SQLITE_LAST_ID = ("SELECT max(coalesce(max(id), 0), coalesce((SELECT seq FROM sqlite_sequence "
                  "WHERE name = ?), 0)) FROM {table}")
SQLITE_INSERT = "INSERT INTO {table} ({columns}) VALUES ({marks})"
PG_COPY = "COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)"
PG_DELETE_FILES = ("WITH gone AS (DELETE FROM files WHERE path = ANY(%b) RETURNING id) "
                   "SELECT items.id FROM items JOIN gone ON gone.id = items.file_id")
SQLITE_ITEMS_OF_FILES = ("SELECT items.id FROM items JOIN files ON files.id = items.file_id "
                         "WHERE files.path IN ({marks})")
SQLITE_DELETE_FILES = "DELETE FROM files WHERE path IN ({marks})"

# A folder filter: the folder's own key (a file given as the folder), or a key below it. Keys
# below a folder are those that start with its key and '/' (retriever.media.paths.path_key),
# which sort in [low, high) byte-wise, '0' being '/' + 1: an indexed range query, exact on a
# path component and case-sensitive, where LIKE ignores ASCII case and sees wildcards.
# `{path}` is files.path, or under a language's collation files.path COLLATE "C" (`under`).
UNDER = "({path} = :own OR ({path} >= :low AND {path} < :high))"


def under(folder: str, bytewise: bool) -> tuple[str, dict[str, str]]:
    """UNDER for `folder` (a trailing '/' or not) and its parameters. `bytewise`: the
    database compares `files.path` byte-wise already (`Queries._paths_bytewise`)."""
    base = folder.rstrip("/")
    path = "files.path" if bytewise else 'files.path COLLATE "C"'
    return UNDER.format(path=path), {"own": base or "/", "low": base + "/", "high": base + "0"}


def where(*clauses: str) -> str:
    """The `{where}` of a statement: each clause ANDed to the ones it has."""
    return "".join(f" AND {clause}" for clause in clauses)


def vectors_sql(folder_clause: str | None) -> str:
    """VECTORS of one kind, under a folder (UNDER, as `under` wrote it) or not."""
    if folder_clause is None:
        return VECTORS.format(join="", where="")
    return VECTORS.format(join=" JOIN files ON files.id = items.file_id",
                          where=where(folder_clause))


def expand(sql: str, **lists: Sequence[object]) -> tuple[str, dict[str, object]]:
    """`sql` with each `:name` of a list in `lists` written `(:name_0, :name_1, ...)`, and the
    parameters that fill them: an IN list both sqlite3 and SQLAlchemy's `text()` bind. An empty
    list is `(NULL)`, which no value is IN."""
    params: dict[str, object] = {}
    for name, values in lists.items():
        names = [f"{name}_{n}" for n in range(len(values))]
        params.update(zip(names, values, strict=True))
        listed = "(" + (", ".join(f":{n}" for n in names) or "NULL") + ")"
        sql = re.sub(rf":{name}\b", listed, sql)  # names are words: no escapes in `listed`
    return sql, params


def chunks(values: Sequence, size: int = 10_000) -> Iterator[Sequence]:
    """`values` in lists short enough to bind in one statement (SQLite: 32,766 parameters,
    PostgreSQL: 65,535)."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def with_list(sql: str, values: Sequence, name: str, params: Mapping[str, object] | None = None
              ) -> Iterator[tuple[str, dict[str, object]]]:
    """`sql` and its parameters for each chunk of `values` bound as the list `:name`."""
    for chunk in chunks(values):
        text, listed = expand(sql, **{name: chunk})
        yield text, {**(params or {}), **listed}
