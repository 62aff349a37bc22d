"""Named errors. The library raises these; only the CLI turns them into one-line messages.

Each error carries the fix in its message, so `str(err)` is what a user needs to read.
"""

from __future__ import annotations


class RetrieverError(Exception):
    """Base for every expected failure: the CLI prints it as one line, no traceback."""

    exit_code = 1


class UsageError(RetrieverError):
    """A flag or argument is wrong (bad value, missing file, conflicting options)."""

    exit_code = 2


class FolderNotFound(UsageError):
    """A folder given on the command line does not exist."""


class ModelNotFound(UsageError):
    """`--model` names no open_clip architecture and no config file."""


class WeightsUnavailable(RetrieverError):
    """Pretrained weights are neither cached nor downloadable (offline, unknown tag)."""


class CheckpointError(RetrieverError):
    """A checkpoint file cannot be read or does not fit the model."""


class ModelMismatch(RetrieverError):
    """The model asked for differs from the one an index or checkpoint was built with."""


class IndexNotFound(RetrieverError):
    """No index where one was expected (`search`/`info` outside an indexed folder)."""


class ItemNotFound(UsageError):
    """An item id that is not in the index (a stale link, a typo)."""


class IndexBusy(RetrieverError):
    """Another process holds the index's write lock."""

    exit_code = 3


class DatasetError(UsageError):
    """Training or evaluation data cannot be read (missing columns, no pairs, bad paths)."""


class ImageError(RetrieverError):
    """One media file could not be decoded. Indexing reports it and goes on."""


class TrainingDiverged(RetrieverError):
    """Training produced a non-finite loss or weights; the run stops and writes no checkpoint."""

    def __init__(self, step: int, epoch: int, lr: float, what: str) -> None:
        super().__init__(step, epoch, lr, what)  # args rebuild it when it crosses processes
        self.step, self.epoch, self.lr = step, epoch, lr
        self.what = what  # what went non-finite, e.g. "the loss is nan"

    def __str__(self) -> str:
        return (f"training diverged at step {self.step} (epoch {self.epoch}): {self.what}; "
                f"no checkpoint written: rerun with a lower --lr than {self.lr:g}, "
                f"e.g. {self.lr / 10:g}")


class NonFiniteVectors(RetrieverError):
    """A model gave vectors holding NaN or inf (diverged training, broken weights): nothing it
    encodes is stored, since every search over such a vector ranks nonsense."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model  # "name (pretrained)"

    def __str__(self) -> str:
        return (f"{self.model} gives vectors with NaN or inf (diverged or damaged weights); "
                f"nothing was stored: index with a sound model")


class StoreError(RetrieverError):
    """The index's SQLite store cannot be opened or written (and none of the cases below)."""


class StoreDamaged(StoreError):
    """store.db is not a sound SQLite database (truncated, overwritten, corrupt pages)."""


class DiskFull(StoreError):
    """The disk holding the index is full (SQLite or a saved vector index could not write)."""


class IndexReadOnly(StoreError):
    """The index folder cannot be written: searching works, indexing does not."""


class BadStoreUrl(UsageError):
    """A store URL (RETRIEVER_STORE_URL) SQLAlchemy cannot parse, or whose driver is missing."""

    def __init__(self, message: str, url: str, reason: str) -> None:
        super().__init__(message)
        self.url, self.reason = url, reason
