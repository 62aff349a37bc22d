"""Indexing: scan folders, encode only what changed, write store and vectors in batches.

For each file found:
  same size and mtime as stored            -> unchanged, not read
  same bytes as stored (sha256)            -> touched: size/mtime/caption updated, not encoded
  same bytes as another stored file        -> reused: renamed, moved or duplicated; vectors copied
  failed before and unchanged since        -> skipped (retried once it changes)
  otherwise                                -> encoded
Files gone from disk are removed last, so a renamed file's vectors are still there to copy.

Each batch is one store transaction followed by the matching vector-index update; the FAISS files
are saved at the end, stamped with the store generation. A run killed at any point keeps every
batch it committed, and the next open rebuilds the stale FAISS files from the store.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PIL import Image

from index.store import FailureRecord, FileRecord, FileState, ItemRecord, ModelRecord, Store
from retriever.collection import Collection
from retriever.encoders import Encoder
from retriever.errors import ImageError
from retriever.images import DEFAULT_MAX_PIXELS, open_image, taken_at
from retriever.media import IMAGE, TEXT, MediaFile, check_roots, path_key, scan
from retriever.passages import DEFAULT_MAX_TEXT_BYTES, read_text, split_passages
from retriever.progress import NullProgress, Progress

Entry = tuple[FileRecord, list[ItemRecord]]  # a file and its items, ready for the store
Batch = list[Entry]


@dataclass(frozen=True)
class IndexOptions:
    roots: tuple[Path, ...]  # folders to index
    exclude: tuple[str, ...] = ()  # globs on paths relative to a root, or on bare names
    batch_size: int = 64  # files per store transaction (and per encoder batch of images)
    max_pixels: int = DEFAULT_MAX_PIXELS  # images larger than this are refused (bombs)
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES  # longer documents are read up to this


@dataclass
class IndexReport:
    scanned: int = 0  # media files found
    unchanged: int = 0  # same size and mtime as stored: not read
    touched: int = 0  # mtime or size changed, bytes did not: not encoded
    reused: int = 0  # bytes already stored under another path: vectors copied
    encoded: int = 0  # files encoded in this run (images + text files)
    images: int = 0  # of which images
    texts: int = 0  # of which text files
    passages: int = 0  # text passages encoded
    removed: int = 0  # files gone from disk, removed from the index
    known_failures: int = 0  # failed in an earlier run and unchanged since: skipped
    failures: list[FailureRecord] = field(default_factory=list)  # failed in this run

    def to_json(self) -> dict:
        return {**asdict(self), "failures": [asdict(f) for f in self.failures]}


def index_media(
    collection: Collection,
    encoder: Encoder,
    options: IndexOptions,
    progress: Progress | None = None,
) -> IndexReport:
    """Bring the collection up to date with the folders; see the module docstring."""
    progress = progress or NullProgress()
    roots = check_roots(options.roots)
    store = collection.store
    collection.bind_model(
        ModelRecord(encoder.model_id.name, encoder.model_id.pretrained, encoder.dim)
    )
    run_id = store.start_run()
    found = scan(roots, options.exclude)
    report = IndexReport(scanned=len(found.files))
    report.failures = [FailureRecord(f.path, f.reason) for f in found.failures]
    stored = store.file_states()  # path -> size, mtime, hash as of the start of the run
    todo = _to_read(found.files, stored, store.failures(), report)
    with progress.task("indexing", total=len(todo)) as task:
        for chunk in _chunks(todo, options.batch_size):
            _index_chunk(collection, encoder, chunk, stored, options, report)
            task.advance(len(chunk))
    report.removed = _remove_missing(collection, roots, found.files, stored)
    store.clear_failures(path_key(f.path) for f in todo)
    store.record_failures(run_id, report.failures)
    collection.save()
    store.finish_run(run_id, report.to_json())
    return report


def _to_read(
    files: list[MediaFile],
    stored: dict[str, FileState],
    failed: dict[str, FailureRecord],
    report: IndexReport,
) -> list[MediaFile]:
    """Files whose size or mtime differ from the store (or that are new), minus known failures.

    An image whose sidecar caption is to be read is read again too, to pick up the caption.
    """
    def same(a: FileState | FailureRecord | None, f: MediaFile) -> bool:
        return a is not None and a.size == f.size and a.mtime == f.mtime

    todo, reading = [], set()
    for f in files:
        key = path_key(f.path)
        if same(stored.get(key), f):
            report.unchanged += 1
        elif same(failed.get(key), f):
            report.known_failures += 1
        else:
            todo.append(f)
            reading.add(f.path)
    recaption = [f for f in files if f.sidecar in reading and f.path not in reading]
    report.unchanged -= len(recaption)
    return todo + recaption


def _index_chunk(
    collection: Collection,
    encoder: Encoder,
    chunk: list[MediaFile],
    stored: dict[str, FileState],
    options: IndexOptions,
    report: IndexReport,
) -> None:
    store = collection.store
    touched: list[FileRecord] = []
    ready: Batch = []  # reused vectors
    images: list[tuple[FileRecord, Image.Image]] = []
    for media in chunk:
        try:
            record = _file_record(media, options)
            previous = stored.get(record.path)
            if previous is not None and previous.content_hash == record.content_hash:
                touched.append(record)
            elif (copy := _stored_copy(store, record, ready)) is not None:
                ready.append(copy)
                report.reused += 1
            elif media.kind == IMAGE:
                images.append((record, open_image(media.path, options.max_pixels)))
            else:
                ready.append(_encode_text(record, media, encoder, options, report))
        except (ImageError, OSError) as err:
            report.failures.append(_failure(media, err))
    ready += _encode_images(images, encoder, report)
    store.touch_files(touched)
    collection.write_files(ready)
    report.touched += len(touched)


def _file_record(media: MediaFile, options: IndexOptions) -> FileRecord:
    taken = taken_at(media.path) if media.kind == IMAGE else None
    return FileRecord(path_key(media.path), media.kind, _sha256(media.path), media.size,
                      media.mtime, caption=_caption(media, options),
                      taken_at=taken or media.mtime)


def _stored_copy(store: Store, record: FileRecord, pending: Batch) -> Entry | None:
    """`record` with the items of a file holding the same bytes (stored or in this batch)."""
    hit = next(((f, items) for f, items in pending if f.content_hash == record.content_hash),
               None) or store.items_with_hash(record.content_hash)
    if hit is None:
        return None
    source, items = hit
    return replace(record, width=source.width, height=source.height), items


def _encode_images(
    images: list[tuple[FileRecord, Image.Image]], encoder: Encoder, report: IndexReport
) -> Batch:
    vectors = encoder.encode_images([im for _, im in images])  # (len(images), dim)
    report.images += len(images)
    report.encoded += len(images)
    return [
        (replace(record, width=im.width, height=im.height), [ItemRecord(IMAGE, 0, None, vector)])
        for (record, im), vector in zip(images, vectors, strict=True)
    ]


def _encode_text(
    record: FileRecord, media: MediaFile, encoder: Encoder, options: IndexOptions,
    report: IndexReport,
) -> Entry:
    text = read_text(media.path, options.max_text_bytes)
    passages = split_passages(text, encoder.count_tokens, encoder.text_budget)
    vectors = encoder.encode_texts([p.text for p in passages])  # (len(passages), dim)
    report.texts += 1
    report.encoded += 1
    report.passages += len(passages)
    return record, [
        ItemRecord(TEXT, p.position, p.text, v) for p, v in zip(passages, vectors, strict=True)
    ]


def _remove_missing(
    collection: Collection, roots: list[Path], files: list[MediaFile],
    stored: dict[str, FileState],
) -> int:
    """Remove stored files under `roots` that the scan did not find. `stored` (the start of the
    run) suffices: every path this run wrote was found by the scan."""
    present = {path_key(f.path) for f in files}
    prefixes = tuple(path_key(r).rstrip(os.sep) + os.sep for r in roots)
    gone = [p for p in stored if p.startswith(prefixes) and p not in present]
    if gone:
        collection.remove_files(gone)
        collection.store.clear_failures(gone)
    return len(gone)


def _failure(media: MediaFile, err: Exception) -> FailureRecord:
    if isinstance(err, ImageError):
        reason = str(err)
    else:
        reason = f"{media.path}: {getattr(err, 'strerror', None) or err}"
    return FailureRecord(path_key(media.path), reason, media.size, media.mtime)


def _caption(media: MediaFile, options: IndexOptions) -> str | None:
    if media.sidecar is None:
        return None
    try:
        return read_text(media.sidecar, options.max_text_bytes).strip() or None
    except OSError:
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _chunks(items: Sequence[MediaFile], size: int) -> Iterator[list[MediaFile]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
