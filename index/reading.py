"""What code above the storage layer may do with a collection's store, as typed protocols.

`Collection.reads` is the store seen through `StoreReads` (every read search, the server,
`info`, tags, duplicates, thumbnails and ingest need) and `Collection.runs` through `RunBook`
(the indexing run's record and its failed files). `index.store.Store` satisfies both; writes
that must reach the FAISS indexes too go through `Collection` itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

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
    )


class StoreReads(Protocol):
    """The store's reads (index.store.Store has each, with these signatures)."""

    def model(self) -> ModelRecord | None: ...

    def duplicate_threshold(self) -> ThresholdRecord | None:
        """`duplicates`' threshold as last measured (retriever.library.calibration), or None."""

    def generation(self) -> int:
        """Bumped by every write: a reader that saw another one is looking at older data."""

    def counts(self) -> Counts: ...

    def items(self, ids: Sequence[int]) -> dict[int, ItemView]:
        """What search results show of each item id (those still stored)."""

    def tags(self, ids: Sequence[int]) -> dict[int, list[str]]:
        """item id -> its tags, sorted (items without any are left out)."""

    def item_ids_where(self, kind: str, prefix: str | None = None, after: float | None = None,
                       before: float | None = None, tag: str | None = None) -> np.ndarray:
        """Ids (n,) int64 of `kind` items under path `prefix`, taken in [after, before),
        tagged `tag`."""

    def keyword_hits(self, words: str, kinds: Sequence[str], limit: int,
                     prefix: str | None = None, after: float | None = None,
                     before: float | None = None, tag: str | None = None
                     ) -> list[tuple[int, float]]:
        """Items of `kinds` whose passage, words read in an image, caption or file name hold
        every word of `words` (typed by a user: no query syntax, any characters), filtered as
        `item_ids_where`: (item id, score: higher is better), best first, at most `limit`."""

    def item_vector(self, item_id: int) -> tuple[str, np.ndarray] | None:
        """(kind, (dim,) unit vector) of one stored item, or None."""

    def has_items(self, kind: str) -> bool: ...

    def count_items(self, kind: str) -> int: ...

    def file_state(self, path: str) -> FileState | None: ...

    def file_states(self) -> dict[str, FileState]: ...

    def failures(self) -> dict[str, FailureRecord]: ...

    def images_without_words(self) -> list[str]:
        """Paths of images whose words `--ocr` has not read (for their current bytes)."""

    def recent_images(self, limit: int) -> list[int]:
        """The newest image items (EXIF date, else mtime), newest first."""

    def image_items_at(self, paths: Sequence[str]) -> dict[str, int]: ...

    def image_files(self, prefix: str | None = None) -> list[ImageFile]:
        """Image items under path `prefix` with their files' size, dimensions and hash."""

    def vectors(self, kind: str, prefix: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of `kind` under path `prefix`: ids (n,) int64, vectors (n, dim)."""

    def vector_batches(self, kind: str, size: int = 10_000
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def vectors_of(self, ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def items_with_hashes(self, hashes: Sequence[str]
                          ) -> dict[str, tuple[FileRecord, list[ItemRecord]]]: ...

    def last_run(self) -> RunRecord | None: ...

    def tag_counts(self) -> dict[str, int]:
        """label -> how many items carry it, by label (the web page's tag menu)."""

    def placed_tags(self) -> list[PlacedTag]: ...

    def writer(self) -> str | None:
        """Who holds a PostgreSQL store's writer lock, or None."""


class RunBook(Protocol):
    """The record of indexing runs and of the files they could not index."""

    def start_run(self) -> int: ...

    def finish_run(self, run_id: int, stats: dict) -> None: ...

    def record_failures(self, run_id: int, failures: Sequence[FailureRecord]) -> None: ...

    def clear_failures(self, paths: Sequence[str]) -> None: ...
