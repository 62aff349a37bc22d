"""Indexing: scan folders, encode only what changed, write store and vectors in batches.

For each file found:
  same size and mtime as stored            -> unchanged, not read
  same bytes as stored (sha256)            -> touched: size/mtime/caption updated, not encoded
  same bytes as another stored file        -> reused: renamed, moved or duplicated; vectors copied
  failed before and unchanged since        -> skipped (retried once it changes)
  otherwise                                -> encoded
Files gone from disk are removed last, so a renamed file's vectors are still there to copy.
Files under a folder the scan could not list are unknown this run, not gone: kept as they are.

One file never stops the run: whatever reading it raises makes it a failure (path and reason)
and the run goes on. A failure of the file's bytes (a decoder's refusal) is remembered, and a
stored file whose current bytes fail loses its earlier vectors. A failure of the moment is
reported and the file read again next run: a read that used `read_timeout` seconds of its own
CPU, or ran `read_wall_timeout` seconds (a hung mount), an I/O error, a file that kept changing
while it was read (a file that changes once is read again at once, `Reader`). Only regular
files are read (see media). A run that dies while reading (a hostile file OOM-killed it) leaves
the files it was reading in a journal (`inflight`): the next run records them as failures.

Each batch (--batch-size files, on either engine) is one store transaction followed by the
matching vector-index update; the FAISS files are saved at the end, stamped with the store
generation. A run killed at any point keeps every batch it committed, and the next open rebuilds
the stale FAISS files from the store.

Where the parts are: what a run is asked and reports (`options`); reading one file (`reader`)
in a pool of threads under the per-file limits (`readers`, with `LocalEngine`; `ray_engine`
reads on Ray); what each media kind decodes and how it is encoded (`handlers.HANDLERS`); here,
the diff and the batches.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from index.kinds import IMAGE
from index.records import FailureRecord, FileRecord, FileState, ItemRecord, ModelRecord
from retriever.encoding.backends import precision_of
from retriever.encoding.encoders import Encoder
from retriever.errors import NonFiniteVectors
from retriever.ingest.handlers import HANDLERS, PreparedFile, encode_now
from retriever.ingest.inflight import JOURNAL_FILE, InFlight, died_reading
from retriever.ingest.ocr_pass import read_missing_words
from retriever.ingest.options import FileItems, IngestOptions, IngestReport
from retriever.ingest.reader import reader_for
from retriever.ingest.readers import Engine, LocalEngine
from retriever.library.collection import Collection
from retriever.media.ocr import check_tesseract
from retriever.media.scan import (
    SIDECAR_SUFFIXES,
    MediaFile,
    ScanResult,
    check_roots,
    path_key,
    scan,
)
from retriever.progress import NullProgress, Progress


def ingest_media(
    collection: Collection,
    encoder: Encoder,
    options: IngestOptions,
    progress: Progress | None = None,
    engine: Engine | None = None,
) -> IngestReport:
    """Bring the collection up to date with the folders; see the module docstring. `engine`
    reads (and may encode) the files to encode: None, threads here (`LocalEngine`)."""
    progress = progress or NullProgress()
    roots = check_roots(options.roots)
    reads, runs = collection.reads, collection.runs
    if reads.model() is None:  # probed once, when an index first takes a model: later
        _check_output(encoder)  # runs are pinned to it by its fingerprint (bind_model)
    if options.ocr:
        check_tesseract()
    collection.bind_model(  # with the precision its vectors are made in (backends)
        ModelRecord(encoder.model_id.name, encoder.model_id.pretrained, encoder.dim,
                    encoder.fingerprint, precision_of(encoder))
    )
    run_id = runs.start_run()
    with progress.task("scanning the folders", None):
        found = scan(roots, options.exclude, options.follow_symlinks_outside)
    report = IngestReport(scanned=len(found.files), not_indexed=found.not_indexed)
    report.failures = [FailureRecord(f.path, f.reason) for f in found.failures]
    stored = reads.file_states()  # path -> size, mtime, hash as of the start of the run
    missing = _missing(roots, found, stored)
    journal = InFlight(collection.directory / JOURNAL_FILE)
    died = _died_reading(journal.path, found.files)
    runs.record_failures(run_id, died)  # now: kept should this run die too
    todo = _to_read(found.files, stored, reads.failures(), missing, report)
    report.known_failures -= len(died)  # skipped as known ones are, but reported by this run
    report.failures += died
    spec = encoder.input_spec()
    read, again = reader_for(spec, stored, options), reader_for(spec, {}, options)
    with progress.task("indexing", total=len(todo)) as task, journal, \
            (engine or LocalEngine(options.read_timeout, options.read_wall_timeout,
                                   journal)) as running:

        def reread(media: MediaFile) -> PreparedFile:
            return running.read_now(again, media)

        for chunk in running.chunks(todo, read, options.batch_size):
            _index_chunk(collection, encoder, chunk, stored, reread, report)
            task.advance(len(chunk))
    report.removed = _remove_missing(collection, missing)
    _drop_failed(collection, report.failures, stored)
    if options.ocr:  # images indexed before without --ocr: their words only
        read_missing_words(collection, encoder, found.files, options, report, progress)
    runs.clear_failures([path_key(f.path) for f in todo])
    runs.record_failures(run_id, report.failures)
    with progress.task("building and saving the vector index (FAISS)", None):
        collection.save()
    runs.finish_run(run_id, report.to_json())
    return report


def _to_read(
    files: list[MediaFile],
    stored: dict[str, FileState],
    failed: dict[str, FailureRecord],
    missing: list[str],
    report: IngestReport,
) -> list[MediaFile]:
    """Files whose size or mtime differ from the store (or that are new), minus known failures
    (a failure without size and mtime is not one: tried again).

    An unchanged image whose sidecar caption is to be read, or whose stored sidecar is gone
    (`missing`: deleted, renamed, excluded), is read again too: its caption is set or cleared.
    """
    def same(a: FileState | FailureRecord | None, f: MediaFile) -> bool:
        return a is not None and a.size == f.size and a.mtime == f.mtime

    todo, unchanged, reading = [], [], set()
    for f in files:
        key = path_key(f.path)
        if same(failed.get(key), f):  # first: an unchanged stored file may have killed a run
            report.known_failures += 1
        elif same(stored.get(key), f):
            unchanged.append(f)
        else:
            todo.append(f)
            reading.add(f.path)
    gone = {os.path.splitext(p)[0] for p in missing
            if os.path.splitext(p)[1].lower() in SIDECAR_SUFFIXES}
    recaption = [f for f in unchanged if f.kind == IMAGE and (
        f.sidecar in reading or path_key(f.path.with_suffix("")) in gone)]
    report.unchanged = len(unchanged) - len(recaption)
    return todo + recaption


def _index_chunk(
    collection: Collection,
    encoder: Encoder,
    chunk: list[PreparedFile],
    stored: dict[str, FileState],
    reread: Callable[[MediaFile], PreparedFile],
    report: IngestReport,
) -> None:
    """One chunk of read files stored in one transaction: touched ones updated, copies of
    stored (or earlier) bytes given those items, the rest encoded by their kind's handler."""
    new = [r.record.content_hash for r in chunk
           if r.record is not None and not _same_bytes(stored, r.record)]
    copies = collection.reads.items_with_hashes(new) if new else {}  # one query a chunk
    touched: list[FileRecord] = []
    ready: list[FileItems] = []  # in the chunk's order, the batched kinds' (images) last
    later: dict[str, list[tuple[FileRecord, Any]]] = defaultdict(list)  # batched kinds
    for read in chunk:
        record = read.record
        if record is None:
            report.failures.append(cast(FailureRecord, read.failure))
        elif _same_bytes(stored, record):
            touched.append(record)
        elif (copy := _stored_copy(record, ready, copies)) is not None:
            ready.append(copy)
            report.reused += 1
        elif read.encoded is not None:  # encoded where it was read (the Ray engine)
            ready += read.encoded.items
            report.add(read.encoded.report)
        elif read.decoded is not None and HANDLERS[record.kind].batched:
            later[record.kind].append((record, read.decoded))
        elif read.decoded is not None:
            ready += encode_now([(record, read.decoded)], record.kind, encoder, report)
        else:  # its bytes were stored when the reader looked, and replaced since: read again
            ready += _encode_reread(encoder, reread(read.media), report)
    for kind, files in later.items():
        ready += encode_now(files, kind, encoder, report)
    collection.touch_files(touched)
    collection.write_files(ready)
    report.touched += len(touched)


def _same_bytes(stored: dict[str, FileState], record: FileRecord) -> bool:
    """Whether the file at `record`'s path was stored with these bytes (touched, not new)."""
    previous = stored.get(record.path)
    return previous is not None and previous.content_hash == record.content_hash


def _encode_reread(encoder: Encoder, read: PreparedFile, report: IngestReport
                   ) -> list[FileItems]:
    """A file read again (`reread`): its items, encoded at once, or its failure."""
    if read.record is None:
        report.failures.append(cast(FailureRecord, read.failure))
        return []
    return encode_now([(read.record, read.decoded)], read.record.kind, encoder, report)


def _stored_copy(record: FileRecord, pending: list[FileItems],
                 stored: dict[str, tuple[FileRecord, list[ItemRecord]]]) -> FileItems | None:
    """`record` with the items of a file holding the same bytes: in this batch (`pending`) or
    stored (`stored`: content hash -> a stored file and its items)."""
    hit = next(((f, items) for f, items in pending if f.content_hash == record.content_hash),
               None) or stored.get(record.content_hash)
    if hit is None:
        return None
    source, items = hit
    return replace(record, width=source.width, height=source.height), items


def _check_output(encoder: Encoder) -> None:
    """Refuse, before anything is written, a model whose vectors are not finite: one image
    (mid-grey) and one text encoded show it for a diverged or damaged model."""
    size = encoder.pixels.size
    probe = np.zeros((1, 3, size, size), np.float32)  # (1, 3, S, S)
    if not (np.isfinite(encoder.encode_pixels(probe)).all()
            and np.isfinite(encoder.encode_texts(["a photo"])).all()):
        raise NonFiniteVectors(f"{encoder.model_id.name} ({encoder.model_id.pretrained})")


def _missing(roots: list[Path], found: ScanResult, stored: dict[str, FileState]) -> list[str]:
    """Stored files under `roots` that the scan did not find, and not below a folder it could
    not list (those are unknown this run, not gone). `stored` (the start of the run)
    suffices: every path this run writes was found by the scan."""
    present = {path_key(f.path) for f in found.files}
    inside, unknown = _below(roots), _below(found.unreadable)
    return [p for p in stored
            if p.startswith(inside) and not p.startswith(unknown) and p not in present]


def _below(folders: list[Path]) -> tuple[str, ...]:
    """Prefixes of the path keys below `folders`, for str.startswith."""
    return tuple(path_key(f).rstrip(os.sep) + os.sep for f in folders)


def _remove_missing(collection: Collection, missing: list[str]) -> int:
    if missing:
        collection.remove_files(missing)
        collection.runs.clear_failures(missing)
    return len(missing)


def _drop_failed(collection: Collection, failures: list[FailureRecord],
                 stored: dict[str, FileState]) -> None:
    """Stored files whose current bytes failed (a failure with size and mtime: not one of the
    moment) lose their items: vectors of their earlier bytes are not theirs any more."""
    bad = [f.path for f in failures if f.size is not None and f.path in stored]
    if bad:
        collection.remove_files(bad)


def _died_reading(journal: Path, files: list[MediaFile]) -> list[FailureRecord]:
    """The files a run that died was reading (`inflight`), those unchanged since."""
    now = {path_key(f.path): (f.size, f.mtime) for f in files}
    return [f for f in died_reading(journal) if now.get(f.path) == (f.size, f.mtime)]
