"""Indexing: scan folders, encode what is new or changed, write store and vectors in batches.

A file whose size and mtime match the store is not re-encoded; files gone from disk are removed.
Each batch of files is one store transaction followed by the matching vector-index update, so a
run that stops part-way keeps every batch it finished. A file that cannot be read is reported
with its reason and the run goes on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from index.store import FileRecord, FileState, ItemRecord, ModelRecord
from retriever.collection import Collection
from retriever.encoders import Encoder
from retriever.errors import ImageError
from retriever.images import DEFAULT_MAX_PIXELS, open_image
from retriever.media import IMAGE, TEXT, MediaFile, ScanFailure, check_roots, scan
from retriever.passages import DEFAULT_MAX_TEXT_BYTES, read_text, split_passages
from retriever.progress import NullProgress, Progress


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
    unchanged: int = 0  # skipped: same size and mtime as stored
    images: int = 0  # images encoded in this run
    texts: int = 0  # text files encoded in this run
    passages: int = 0  # text passages encoded in this run
    removed: int = 0  # files gone from disk, removed from the index
    failures: list[ScanFailure] = field(default_factory=list)


def index_media(
    collection: Collection,
    encoder: Encoder,
    options: IndexOptions,
    progress: Progress | None = None,
) -> IndexReport:
    progress = progress or NullProgress()
    roots = check_roots(options.roots)
    collection.bind_model(
        ModelRecord(encoder.model_id.name, encoder.model_id.pretrained, encoder.dim)
    )
    found = scan(roots, options.exclude)
    report = IndexReport(scanned=len(found.files), failures=list(found.failures))
    stored = collection.store.file_states()
    todo = _changed(found.files, stored)
    report.unchanged = len(found.files) - len(todo)
    report.removed = _remove_missing(collection, roots, found.files, stored)
    with progress.task("encoding", total=len(todo)) as task:
        for batch in _chunks(todo, options.batch_size):
            records = _encode_batch(batch, encoder, options, report)
            collection.write_files(records)
            task.advance(len(batch))
    collection.save()
    return report


def _changed(files: list[MediaFile], stored: dict[str, FileState]) -> list[MediaFile]:
    def same(f: MediaFile) -> bool:
        state = stored.get(str(f.path))
        return state is not None and state.size == f.size and state.mtime == f.mtime

    changed = [f for f in files if not same(f)]
    changed_paths = {f.path for f in changed}
    # An image whose sidecar caption changed is re-indexed to pick up the new caption.
    return changed + [
        f for f in files if f.sidecar in changed_paths and f.path not in changed_paths
    ]


def _remove_missing(
    collection: Collection, roots: list[Path], files: list[MediaFile], stored: dict
) -> int:
    present = {str(f.path) for f in files}
    prefixes = tuple(str(r).rstrip(os.sep) + os.sep for r in roots)
    gone = [p for p in stored if p.startswith(prefixes) and p not in present]
    if gone:
        collection.remove_files(gone)
    return len(gone)


def _encode_batch(
    batch: list[MediaFile], encoder: Encoder, options: IndexOptions, report: IndexReport
) -> list[tuple[FileRecord, list[ItemRecord]]]:
    records: list[tuple[FileRecord, list[ItemRecord]]] = []
    images, image_files = [], []
    for media in batch:
        try:
            digest = _sha256(media.path)
            if media.kind == IMAGE:
                images.append(open_image(media.path, options.max_pixels))
                image_files.append((media, digest))
            else:
                records.append(_text_record(media, digest, encoder, options))
                report.texts += 1
                report.passages += len(records[-1][1])
        except (ImageError, OSError) as err:
            reason = str(err) if isinstance(err, ImageError) else f"{media.path}: {err.strerror}"
            report.failures.append(ScanFailure(str(media.path), reason))
    vectors = encoder.encode_images(images)  # (len(images), dim)
    for (media, digest), image, vector in zip(image_files, images, vectors, strict=True):
        caption = _caption(media, options)
        record = FileRecord(str(media.path), IMAGE, digest, media.size, media.mtime,
                            image.width, image.height, caption)
        records.append((record, [ItemRecord(IMAGE, 0, None, vector)]))
    report.images += len(images)
    return records


def _text_record(
    media: MediaFile, digest: str, encoder: Encoder, options: IndexOptions
) -> tuple[FileRecord, list[ItemRecord]]:
    text = read_text(media.path, options.max_text_bytes)
    passages = split_passages(text, encoder.count_tokens, encoder.text_budget)
    vectors = encoder.encode_texts([p.text for p in passages])  # (len(passages), dim)
    items = [
        ItemRecord(TEXT, p.position, p.text, v) for p, v in zip(passages, vectors, strict=True)
    ]
    return FileRecord(str(media.path), TEXT, digest, media.size, media.mtime), items


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
