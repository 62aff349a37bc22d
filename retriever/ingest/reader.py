"""Reading one file (`Reader`): hash it and, unless its bytes are stored already, decode what
the encoder takes with its kind's handler; a file that changes while it is read is read again;
whatever one file raises is that file's failure (`_failure`). Run in the reader threads
(`readers`), here or in a Ray read task."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Container
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from index.records import FailureRecord, FileRecord, FileState
from retriever.encoding.encoders import InputSpec
from retriever.errors import DocumentError, ImageError, NoTextLayer, VideoError
from retriever.ingest.handlers import HANDLERS, PreparedFile
from retriever.ingest.options import IngestOptions
from retriever.media.passages import read_text
from retriever.media.scan import MediaFile, open_regular, path_key, shown

READ_TRIES = 3  # a file that changes while it is read is read again, up to this many times


def reader_for(spec: InputSpec, stored: dict[str, FileState], options: IngestOptions
               ) -> Reader:
    """A reader that decodes no file whose bytes are among `stored`'s."""
    return Reader(spec, options, frozenset(state.content_hash for state in stored.values()))


@dataclass(frozen=True)
class Reader:
    """Reads one file (`__call__`): hashes it and, unless its bytes are `known`, decodes what
    the encoder takes. Holds only what reading needs, and pickles: the Ray engine ships one to
    its read tasks (with `known` and the token counter in forms cheaper to ship)."""

    spec: InputSpec  # the encoder's input: pixels, and how passages are cut
    options: IngestOptions
    # content hashes already stored: a file with such bytes is touched or reused, not decoded.
    # A hash found here that is not stored only costs a second read (`pipeline._index_chunk`)
    known: Container[str]

    def __call__(self, media: MediaFile) -> PreparedFile:
        """`media` read, or its failure. A file that changed while it was read (its bytes may
        be a mix) is read again as it is now, up to READ_TRIES times in all."""
        for _ in range(READ_TRIES):
            try:
                return self._read(media)
            except _Changed:
                try:
                    now = os.stat(media.path)
                except OSError as err:
                    return PreparedFile(media, failure=_failure(media, err))
                media = replace(media, size=now.st_size, mtime=now.st_mtime)
            except Exception as err:  # whatever one file raises is that file's failure alone
                return PreparedFile(media, failure=_failure(media, err))
        key = path_key(media.path)
        return PreparedFile(media, failure=FailureRecord(
            key, f"{key}: changed while it was being read, {READ_TRIES} times; "
            "tried again next run"))

    def _read(self, media: MediaFile) -> PreparedFile:
        """Raises `_Changed` unless the file stayed, from its opening to the end of its
        reading, the one the scan saw: its size and mtime, and the file its path names."""
        with open_regular(media.path) as fh:
            before = os.fstat(fh.fileno())
            if (before.st_size, before.st_mtime) != (media.size, media.mtime):
                raise _Changed
            try:
                prepared = self._prepare(media, fh)
            except Exception:
                _check_unchanged(media.path, fh, before)  # a failure of mixed bytes: _Changed
                raise
            _check_unchanged(media.path, fh, before)
        return prepared

    def _prepare(self, media: MediaFile, fh: BinaryIO) -> PreparedFile:
        record = _file_record(media, fh, self.options)
        if record.content_hash in self.known:  # every stored file's hash is in it
            return PreparedFile(media, record)  # touched or reused: nothing to decode
        fh.seek(0)
        record, decoded = HANDLERS[media.kind].decode(fh, record, self.spec, self.options)
        return PreparedFile(media, record, decoded)


class _Changed(Exception):
    """The file being read was written to, truncated or replaced meanwhile."""


def _check_unchanged(path: Path, fh: BinaryIO, before: os.stat_result) -> None:
    """Raise `_Changed` if the open file `fh` is not as it was `before`, or `path` now names
    another file (one renamed over it)."""
    after, now = os.fstat(fh.fileno()), os.stat(path)
    if (_identity(after) != _identity(before)
            or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino)):
        raise _Changed


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _file_record(media: MediaFile, fh: BinaryIO, options: IngestOptions) -> FileRecord:
    content_hash = _sha256(fh, media.size)
    fh.seek(0)
    taken = HANDLERS[media.kind].taken(fh)
    return FileRecord(path_key(media.path), media.kind, content_hash, media.size, media.mtime,
                      caption=_caption(media, options), taken_at=taken or media.mtime)


def _failure(media: MediaFile, err: Exception) -> FailureRecord:
    """What reading `media` raised, as its failure. An OSError comes from reading, not from a
    decoder (they raise ImageError, VideoError, DocumentError): a failure of the moment, tried
    next run. So is a PDF of scans read without --ocr: a run with --ocr reads it."""
    if isinstance(err, NoTextLayer):
        return FailureRecord(path_key(media.path), shown(str(err)))
    if isinstance(err, (ImageError, VideoError, DocumentError)):
        reason = str(err)
    elif isinstance(err, OSError):
        return FailureRecord(path_key(media.path), shown(f"{media.path}: {err.strerror or err}"))
    else:  # a decoder's own error, MemoryError, ...: named, as nothing else says what it is
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = f"{media.path}: {type(err).__name__}" + (f": {detail}" if detail else "")
    return FailureRecord(path_key(media.path), shown(reason), media.size, media.mtime)


def _caption(media: MediaFile, options: IngestOptions) -> str | None:
    if media.sidecar is None:
        return None
    try:
        return read_text(media.sidecar, options.max_text_bytes).strip() or None
    except OSError:
        return None


def _sha256(fh: BinaryIO, size: int) -> str:
    """Of the first `size` bytes: the size the scan saw. Fewer bytes than that: the file was
    cut while it was read (`_Changed`); one that grew is caught by its stat after reading."""
    digest = hashlib.sha256()
    while size > 0 and (block := fh.read(min(size, 1 << 20))):
        digest.update(block)
        size -= len(block)
    if size > 0:
        raise _Changed
    return digest.hexdigest()
