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
