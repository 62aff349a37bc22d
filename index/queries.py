"""The store's reads: each a statement of index.sql run by the store's executor, sqlite3's or
SQLAlchemy's (index.connection), with the same answers (tests/test_store_reader.py). `Store`
(index.store) adds the writes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property

import numpy as np

from index import keywords, sql
from index.connection import CoreExecutor, PlainExecutor, Rows
from index.kinds import IMAGE, IMAGE_TEXT, TEXT, VIDEO
from index.records import (
    Counts,
    FailureRecord,
    FileRecord,
    FileState,
    ImageFile,
    ItemRecord,
    ItemView,
    ModelRecord,
    PlacedTag,
    RunRecord,
    ThresholdRecord,
    decode,
    stacked,
)


class Queries:
    """Reads of the store `executor` opened (`postgresql`: on a PostgreSQL server)."""

    executor: CoreExecutor | PlainExecutor
    postgresql: bool

    def _rows(self, statement: str, params: dict | None = None) -> Rows:
        return self.executor.rows(statement, params)

    def _listed(self, statement: str, values: Sequence, name: str,
                params: dict | None = None) -> list:
        """The rows of `statement` with `values` bound as the list `:name`, a query per
        10,000 of them."""
        rows: list = []
        for text, bound in sql.with_list(statement, values, name, params):
            rows += self._rows(text, bound)
        return rows

    def model(self) -> ModelRecord | None:
        rows = self._rows(sql.MODEL)
        return ModelRecord(*rows[0]) if rows else None

    def duplicate_threshold(self) -> ThresholdRecord | None:
        rows = self._rows(sql.DUPLICATE_THRESHOLD)
        return ThresholdRecord(*rows[0]) if rows else None

    def generation(self) -> int:
        """Count of write transactions so far: a FAISS file saved at another one is stale."""
        rows = self._rows(sql.GENERATION)
        return int(rows[0][0] or 0) if rows else 0

    def last_run(self) -> RunRecord | None:
        rows = self._rows(sql.LAST_RUN)
        if not rows:
            return None
        run_id, status, started_at, finished_at, stats = rows[0]
        return RunRecord(run_id, status, started_at, finished_at, json.loads(stats))

    def failures(self) -> dict[str, FailureRecord]:
        return {row[0]: FailureRecord(*row) for row in self._rows(sql.FAILURES)}

    def images_without_words(self) -> list[str]:
        return [row[0] for row in self._rows(sql.UNREAD_IMAGES)]

    def items_with_hash(self, content_hash: str) -> tuple[FileRecord, list[ItemRecord]] | None:
        """Some stored file with these bytes, with its items and vectors (for reuse)."""
        return self.items_with_hashes([content_hash]).get(content_hash)

    def items_with_hashes(self, hashes: Sequence[str]
                          ) -> dict[str, tuple[FileRecord, list[ItemRecord]]]:
        """content hash -> some stored file with those bytes (the first stored), with its items
        ordered by (kind, position) and their vectors; hashes not stored are left out. One
        query per 10,000 hashes."""
        rows = self._listed(sql.ITEMS_WITH_HASHES, sorted(set(hashes)), "hashes")
        return {file.content_hash: (file, items) for file, items in _file_items(rows).values()}

    def files_after(self, after: int, limit: int
                    ) -> dict[int, tuple[FileRecord, list[ItemRecord]]]:
        """file id -> the file with its items and vectors, for the first `limit` files whose id
        is above `after`, in id order: every file, a page at a time."""
        return _file_items(self._rows(sql.FILES_AFTER, {"after": after, "limit": limit}))

    def images_with_words(self) -> list[str]:
        """Images whose words `--ocr` has read (files.words_read)."""
        return [row[0] for row in self._rows(sql.WORDS_READ)]

    def file_states(self) -> dict[str, FileState]:
        return {p: FileState(size, mtime, h) for p, size, mtime, h in self._rows(sql.FILE_STATES)}

    def file_state(self, path: str) -> FileState | None:
        """Size, mtime and hash of one stored file (the server checks a file against it)."""
        rows = self._rows(sql.FILE_STATE, {"path": path})
        return FileState(*rows[0]) if rows else None

    def vectors(self, kind: str, prefix: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All stored vectors of one kind (under the folder `prefix`, see `_under`): ids (n,)
        int64 and vectors (n, dim) float32."""
        clause, params = self._under(prefix)
        return stacked(self._rows(sql.vectors_sql(clause), {"kind": kind, **params}))

    def vector_batches(self, kind: str, size: int = 10_000
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The stored vectors of one kind, in id order, as batches of ids (b,) int64 and
        vectors (b, dim) float32, b <= `size`: one query read as it goes (a server-side cursor
        on PostgreSQL), so memory holds one batch whatever the corpus."""
        for rows in self.executor.batches(sql.vectors_sql(None), {"kind": kind}, size):
            yield stacked(rows)

    def vectors_of(self, ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of the items `ids` (any kind; ids not stored left out): ids (n,)
        int64 ascending and vectors (n, dim) float32. One query (per 10,000 ids): what an
        IVF-PQ search re-ranks exactly (index.rerank)."""
        return stacked(self._listed(sql.VECTORS_OF, sorted({int(i) for i in ids}), "ids"))

    def items(self, ids: Sequence[int]) -> dict[int, ItemView]:
        rows = self._listed(sql.ITEMS, sorted({int(i) for i in ids}), "ids")
        return {r[0]: ItemView(*r) for r in rows}

    def item_ids_where(self, kind: str, prefix: str | None = None, after: float | None = None,
                       before: float | None = None, tag: str | None = None) -> np.ndarray:
        """Ids of `kind` items under the folder `prefix` (see `_under`), taken in [after,
        before), tagged `tag` (SQL, indexed)."""
        where, params = self._filters(prefix, after, before, tag)
        rows = self._rows(sql.ITEM_IDS.format(where=where), {"kind": kind, **params})
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def keyword_hits(self, words: str, kinds: Sequence[str], limit: int,
                     prefix: str | None = None, after: float | None = None,
                     before: float | None = None, tag: str | None = None
                     ) -> list[tuple[int, float]]:
        """(item id, score) of the `kinds` items whose keyword row (index.keywords) holds
        every word of `words`, filtered as `item_ids_where`, best first (score: higher is
        better; bm25 on SQLite, ts_rank_cd on PostgreSQL), at most `limit`. `words` is what a
        user typed: no syntax, any characters; none that is a word: no hits."""
        typed = keywords.query_words(words)
        if not typed or not kinds or limit <= 0:
            return []
        where, params = self._filters(prefix, after, before, tag)
        common = [] if self.postgresql else keywords.common(self._rows, typed)
        statement, bound = keywords.hits(typed, common, kinds, where, self.postgresql)
        rows = self._rows(statement, {**params, **bound, "limit": int(limit)})
        return [(int(item_id), float(score)) for item_id, score in rows]

    def _filters(self, prefix: str | None, after: float | None, before: float | None,
                 tag: str | None) -> tuple[str, dict[str, object]]:
        """The `{where}` (sql.where) of "under the folder `prefix`, taken in [after, before),
        tagged `tag`" and its parameters."""
        clauses: list[str] = []
        params: dict[str, object] = {}
        if tag is not None:
            clauses.append(sql.TAGGED)
            params["tag"] = tag
        folder, bounds = self._under(prefix)
        if folder is not None:
            clauses.append(folder)
            params.update(bounds)
        for clause, name, value in ((sql.TAKEN_AFTER, "after", after),
                                    (sql.TAKEN_BEFORE, "before", before)):
            if value is not None:
                clauses.append(clause)
                params[name] = value
        return sql.where(*clauses), params

    def item_vector(self, item_id: int) -> tuple[str, np.ndarray] | None:
        """(kind, vector) of one stored item, or None."""
        rows = self._rows(sql.ITEM_VECTOR, {"id": int(item_id)})
        return (rows[0][0], decode(rows[0][1])) if rows else None

    def has_items(self, kind: str) -> bool:
        """Whether any item of `kind` is stored: one index probe, where counting them reads
        the whole index (70 ms at 1M items, bench/scale.py)."""
        return bool(self._rows(sql.HAS_ITEMS, {"kind": kind}))

    def count_items(self, kind: str) -> int:
        return int(self._rows(sql.COUNT_ITEMS, {"kind": kind})[0][0] or 0)

    def counts(self) -> Counts:
        files = int(self._rows(sql.COUNT_FILES)[0][0] or 0)
        return Counts(images=self.count_items(IMAGE), texts=self.count_items(TEXT), files=files,
                      videos=self.count_items(VIDEO), image_texts=self.count_items(IMAGE_TEXT))

    def recent_images(self, limit: int) -> list[int]:
        """Ids of the `limit` most recently taken image items, newest first."""
        return [r[0] for r in self._rows(sql.RECENT, {"kind": IMAGE, "limit": limit})]

    def image_items_at(self, paths: Sequence[str]) -> dict[str, int]:
        """path -> image item id, for those of `paths` stored as images."""
        return {path: item_id for path, item_id in
                self._listed(sql.KIND_AT, list(paths), "paths", {"kind": IMAGE})}

    def image_files(self, prefix: str | None = None) -> list[ImageFile]:
        """Every image item (under the folder `prefix`, see `_under`) with its file's size,
        dimensions and hash."""
        folder, params = self._under(prefix)
        statement = sql.IMAGE_FILES.format(where=sql.where(folder) if folder else "")
        return [ImageFile(*row) for row in self._rows(statement, {"kind": IMAGE, **params})]

    def tags(self, ids: Sequence[int]) -> dict[int, list[str]]:
        """item id -> its labels (every label set), sorted; items without tags are left out."""
        # ascending ids: the chunks' rows stay in order
        return _labels_by_item(self._listed(sql.TAGS, sorted({int(i) for i in ids}), "ids"))

    def tag_counts(self) -> dict[str, int]:
        """label -> how many items carry it (every label set), by label."""
        return {label: int(count) for label, count in self._rows(sql.TAG_COUNTS)}

    def placed_tags(self) -> list[PlacedTag]:
        """Every tag, its item named by place (path, kind, position) rather than id: what
        outlives the items, which `--reindex` makes anew under new ids."""
        return [PlacedTag(*row) for row in self._rows(sql.PLACED_TAGS)]

    def _under(self, folder: str | None) -> tuple[str | None, dict[str, object]]:
        """The clause (index.sql.UNDER) and parameters of "`files.path` is `folder` or below
        it", compared byte-wise as the range needs (`_paths_bytewise`); (None, {}) for no
        folder."""
        if folder is None:
            return None, {}
        clause, params = sql.under(folder, self._paths_bytewise)
        return clause, dict(params)

    @cached_property
    def _paths_bytewise(self) -> bool:
        """Whether `files.path` sorts byte-wise: on SQLite always, on PostgreSQL in a database
        whose collation is C. Then the folder range uses the path index; under a language's
        collation each comparison says COLLATE "C" (exact, but `files` is scanned)."""
        if not self.postgresql:
            return True
        database = self._rows(sql.PG_DATABASE)[0][0]
        return (database.get("datlocprovider", "c") == "c"  # not ICU's or another's
                and database["datcollate"] in ("C", "POSIX"))


def _file_items(rows: Iterable[Sequence]) -> dict[int, tuple[FileRecord, list[ItemRecord]]]:
    """sql.FILE_ITEMS' rows -> file id -> (file, its items with their vectors)."""
    found: dict[int, tuple[FileRecord, list[ItemRecord]]] = {}
    for row in rows:
        _, items = found.setdefault(row[16], (FileRecord(*row[:9]), []))
        if row[9] is not None:  # a file without items: one row, its item columns NULL
            items.append(ItemRecord(row[9], row[10], row[11], decode(row[12]), *row[13:16]))
    return found


def _labels_by_item(rows: Iterable[Sequence]) -> dict[int, list[str]]:
    """(item id, label) rows, in order -> item id -> its labels."""
    found: dict[int, list[str]] = {}
    for item_id, label in rows:
        found.setdefault(item_id, []).append(label)
    return found
