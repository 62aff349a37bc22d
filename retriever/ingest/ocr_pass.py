"""`index --ocr` on an index built without it: the words of images stored before are read now,
and nothing else is encoded again.

The store remembers which images had their words read (`files.words_read`, found or not): an
image encoded in this run with --ocr was read while it was decoded (`IngestReport.words_read`);
every other image found by this run's scan and still unread is read here. Its stored items are
written back with its vectors as stored (the image is not encoded again) plus the passages of
its words (`ocr_only` in the report), and its tags are placed again. An image that changed
since the scan is left for the next run; one whose words cannot be read gets a note in the
report, and is tried again next run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from index.kinds import IMAGE_TEXT
from index.records import FileRecord, FileState, ItemRecord
from retriever.encoding.encoders import Encoder, InputSpec
from retriever.errors import ImageError
from retriever.ingest.media_items import read_image_words, word_items
from retriever.ingest.options import IngestOptions, IngestReport
from retriever.library.collection import Collection
from retriever.media.passages import Passage
from retriever.media.paths import path_key
from retriever.media.scan import MediaFile, open_regular
from retriever.progress import Progress

# Tesseract runs this many images at a time (each process uses up to 4 threads of its own)
OCR_WORKERS = max(1, (os.cpu_count() or 2) // 2)
Read = tuple[MediaFile, FileState, "list[Passage] | str"]  # passages, or why none were read


def read_missing_words(collection: Collection, encoder: Encoder, found: list[MediaFile],
                       options: IngestOptions, report: IngestReport, progress: Progress) -> None:
    """Mark the images this run read with --ocr, then read the words of the other images of
    `found` that are stored unread, writing them `options.batch_size` files at a time."""
    collection.mark_words_read(report.words_read)
    unread = set(collection.reads.images_without_words())
    todo = [f for f in found if path_key(f.path) in unread]
    if not todo:
        return
    states = collection.reads.file_states()
    spec = encoder.input_spec()
    tags = [t for t in collection.reads.placed_tags() if t.path in unread]  # kept across
    with progress.task("reading words in images indexed before", total=len(todo)) as task:
        for start in range(0, len(todo), options.batch_size):
            chunk = todo[start:start + options.batch_size]
            read = list(_read_all(chunk, states, spec, options))
            written = _store(collection, encoder, read, report)
            collection.place_tags([t for t in tags if t.path in written])
            task.advance(len(chunk))


def _read_all(files: list[MediaFile], states: dict[str, FileState], spec: InputSpec,
              options: IngestOptions) -> Iterator[Read]:
    """Each file unchanged since it was stored, with its words read (or why not)."""
    same = [(f, states[path_key(f.path)]) for f in files if path_key(f.path) in states]
    with ThreadPoolExecutor(OCR_WORKERS) as pool:
        yield from pool.map(lambda fs: _read_one(fs[0], fs[1], spec, options), same)


def _read_one(media: MediaFile, state: FileState, spec: InputSpec,
              options: IngestOptions) -> Read:
    try:
        with open_regular(media.path) as fh:
            now = os.fstat(fh.fileno())
            if (now.st_size, now.st_mtime) != (state.size, state.mtime):
                return media, state, "changed since it was indexed: read next run"
            return media, state, read_image_words(fh, spec, options.max_pixels)
    except (OSError, ImageError, TimeoutError) as err:
        return media, state, str(err) or type(err).__name__


def _store(collection: Collection, encoder: Encoder, read: list[Read],
           report: IngestReport) -> set[str]:
    """The read images written back with their stored items and vectors plus their words
    (new item ids: their tags are placed again by the caller); returns their paths."""
    hashes = [state.content_hash for _, state, got in read if not isinstance(got, str)]
    stored = collection.reads.items_with_hashes(hashes) if hashes else {}
    batch: list[tuple[FileRecord, list[ItemRecord]]] = []
    for media, state, got in read:
        if isinstance(got, str):
            report.notes.append(f"{path_key(media.path)}: words not read ({got})")
            continue
        if state.content_hash not in stored:
            continue  # its bytes were removed from the store meanwhile
        record, items = stored[state.content_hash]
        record = replace(record, path=path_key(media.path), size=state.size, mtime=state.mtime)
        kept = [item for item in items if item.kind != IMAGE_TEXT]
        words = word_items(got, encoder)
        batch.append((record, kept + words))
        report.ocr_passages += len(words)
    if batch:
        collection.write_files(batch)
        collection.mark_words_read([record.path for record, _ in batch])
        report.ocr_only += len(batch)
    return {record.path for record, _ in batch}

