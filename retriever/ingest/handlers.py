"""One handler per media kind, in one table (`HANDLERS`): how a file of that kind is decoded
into what the encoder takes (in a reader thread, under the per-file limits) and how that is
encoded into the file's items (on the encoder's path). Everything else about a file (hashing,
the incremental diff, failures, transactions) is the same for every kind and lives elsewhere:
add a kind here and the indexer and both engines take it.

    kind    decoded (`PreparedFile.decoded`)        items
    image   ImageInput: pixels, words (--ocr)       one image item, then its words (image-text)
    text    DocumentText: passages, notes           one text item a passage (page, section)
    video   Frames: (seconds, pixels) sampled       one video item a frame, at its moment

Images are `batched`: a chunk's images go to the model in one call at the end of the chunk.
Texts and videos are encoded one file at a time, in order, so a copy later in the same chunk
finds them (`pipeline._index_chunk`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, cast

import numpy as np

from index.kinds import IMAGE, TEXT, VIDEO
from index.records import FailureRecord, FileRecord, ItemRecord
from retriever.encoding.encoders import Encoder, InputSpec
from retriever.encoding.pixels import Pixels, load_pixels
from retriever.ingest.media_items import (
    Frames,
    read_image_words,
    read_video,
    video_items,
    word_items,
)
from retriever.ingest.options import FileItems, IngestOptions, IngestReport
from retriever.media.documents import (
    DocumentLimits,
    DocumentText,
    document_passages,
    read_document,
)
from retriever.media.images import taken_at
from retriever.media.passages import OVERLAP_SHARE, Passage
from retriever.media.scan import MediaFile


@dataclass
class PreparedFile:
    """One file as the reader threads leave it: everything but the encoding done."""

    media: MediaFile
    record: FileRecord | None = None  # None when reading failed
    # what the encoder takes, as the kind's handler decoded it; None when the file failed or
    # its bytes are stored already (touched or reused: nothing to decode)
    decoded: Any = None
    failure: FailureRecord | None = None
    encoded: Encoded | None = None  # encoded where it was read (`encode_read`)


@dataclass
class Encoded:
    """A file encoded beside its reader (`encode_read`, in the Ray engine's actors): its items
    (none when the model gave it a vector with NaN or inf), and what encoding it counts."""

    items: list[FileItems]
    report: IngestReport


@dataclass
class Encoding:
    """One file's items as the model gave them, before they are checked for NaN and inf."""

    record: FileRecord
    items: list[ItemRecord]  # the file's own: any not finite and the file is a failure
    extras: list[ItemRecord]  # words read in an image: any not finite and only they are dropped
    notes: tuple[str, ...] = ()  # what reading noted (a PDF's pages without text), reported
    words_read: bool = False  # an image whose words were read (--ocr), words found or not


class Handler(ABC):
    """How the files of one kind are read and encoded: one instance a kind, in `HANDLERS`."""

    batched = False  # a chunk's files of this kind are encoded together, at its end

    def taken(self, fh: BinaryIO) -> float | None:
        """When the file's content was made, as the file itself says (None: not known)."""
        return None

    @abstractmethod
    def decode(self, fh: BinaryIO, record: FileRecord, spec: InputSpec,
               options: IngestOptions) -> tuple[FileRecord, Any]:
        """The open file (at its start) as the encoder takes it, and its record with what
        decoding learnt (a video's size)."""

    @abstractmethod
    def encode(self, files: Sequence[tuple[FileRecord, Any]], encoder: Encoder
               ) -> list[Encoding]:
        """Each file's items, in order."""

    @abstractmethod
    def count(self, report: IngestReport, done: Encoding) -> None:
        """Count a file encoded (and stored) in `report`."""


@dataclass(frozen=True)
class ImageInput:
    pixels: Pixels
    words: list[Passage] | None = None  # with --ocr, words read in the image


class ImageHandler(Handler):
    batched = True

    def taken(self, fh: BinaryIO) -> float | None:
        return taken_at(fh)

    def decode(self, fh: BinaryIO, record: FileRecord, spec: InputSpec,
               options: IngestOptions) -> tuple[FileRecord, ImageInput]:
        pixels = load_pixels(fh, spec.pixels, options.max_pixels)
        words = read_image_words(fh, spec, options.max_pixels) if options.ocr else None
        return record, ImageInput(pixels, words)

    def encode(self, files: Sequence[tuple[FileRecord, ImageInput]], encoder: Encoder
               ) -> list[Encoding]:
        vectors = encoder.encode_pixels(np.stack([i.pixels.data for _, i in files]))  # (n, dim)
        return [Encoding(replace(record, width=i.pixels.width, height=i.pixels.height),
                         [ItemRecord(IMAGE, 0, None, vector)], word_items(i.words or [], encoder),
                         words_read=i.words is not None)
                for (record, i), vector in zip(files, vectors, strict=True)]

    def count(self, report: IngestReport, done: Encoding) -> None:
        report.images += 1
        report.ocr_passages += len(done.extras)
        if done.words_read:
            report.words_read.append(done.record.path)


class TextHandler(Handler):
    """Text documents (retriever.media.documents: PDF pages, DOCX/EPUB/HTML sections, plain
    text): a passage an item, with the page and section it came from."""

    def decode(self, fh: BinaryIO, record: FileRecord, spec: InputSpec,
               options: IngestOptions) -> tuple[FileRecord, DocumentText]:
        limits = DocumentLimits(options.max_text_bytes, options.ocr, options.max_pixels)
        read = read_document(fh, record.path, limits)
        passages = document_passages(read.pieces, spec.count_tokens, spec.text_budget,
                                     overlap=spec.text_budget // OVERLAP_SHARE)
        return record, DocumentText(passages, tuple(read.notes))

    def encode(self, files: Sequence[tuple[FileRecord, DocumentText]], encoder: Encoder
               ) -> list[Encoding]:
        done = []
        for record, document in files:
            passages = document.passages
            vectors = encoder.encode_texts([p.text for p in passages])  # (len(passages), dim)
            done.append(Encoding(record, [ItemRecord(TEXT, p.position, p.text, v, page=p.page,
                                                     section=p.section)
                                          for p, v in zip(passages, vectors, strict=True)], [],
                                 document.notes))
        return done

    def count(self, report: IngestReport, done: Encoding) -> None:
        report.texts += 1
        report.passages += len(done.items)
        report.notes += done.notes


class VideoHandler(Handler):
    def decode(self, fh: BinaryIO, record: FileRecord, spec: InputSpec,
               options: IngestOptions) -> tuple[FileRecord, Frames]:
        return read_video(fh, record, spec.pixels, options.video, options.max_pixels)

    def encode(self, files: Sequence[tuple[FileRecord, Frames]], encoder: Encoder
               ) -> list[Encoding]:
        return [Encoding(record, video_items(frames, encoder), []) for record, frames in files]

    def count(self, report: IngestReport, done: Encoding) -> None:
        report.videos += 1
        report.frames += len(done.items)


HANDLERS: dict[str, Handler] = {IMAGE: ImageHandler(), TEXT: TextHandler(), VIDEO: VideoHandler()}


def encode_now(files: Sequence[tuple[FileRecord, Any]], kind: str, encoder: Encoder,
               report: IngestReport) -> list[FileItems]:
    """`files` of `kind` (records and what they decoded to) encoded, counted in `report`, and
    those whose vectors are all finite returned with their items."""
    if not files:
        return []
    handler = HANDLERS[kind]
    return [done for encoding in handler.encode(files, encoder)
            if (done := _checked(handler, encoding, report)) is not None]


def _checked(handler: Handler, encoding: Encoding, report: IngestReport) -> FileItems | None:
    """A file whose own vectors hold NaN or inf is reported and not stored; an image whose
    words' vectors do is kept without them (the image itself is sound)."""
    record = encoding.record
    if not _finite(encoding.items):
        report.failures.append(FailureRecord(
            record.path, f"{record.path}: the model gave it a vector with NaN or inf",
            record.size, record.mtime))
        return None
    if not _finite(encoding.extras):
        encoding = replace(encoding, extras=[])
    handler.count(report, encoding)
    report.encoded += 1
    return record, encoding.items + encoding.extras


def _finite(items: list[ItemRecord]) -> bool:
    return bool(np.isfinite(np.array([it.vector for it in items])).all())


def encode_read(files: list[PreparedFile], encoder: Encoder) -> None:
    """Encode, where they were read, the files the reader decoded (each kind's in one
    `encode` call): each one's items and counts go in its `encoded`, for the indexer to store,
    and what the encoder took is dropped. Files touched, reused or failed are left as they are."""
    decoded = [f for f in files if f.record is not None and f.decoded is not None]
    for kind in HANDLERS:
        ofkind = [f for f in decoded if cast(FileRecord, f.record).kind == kind]
        if not ofkind:
            continue
        handler = HANDLERS[kind]
        encodings = handler.encode([(cast(FileRecord, f.record), f.decoded) for f in ofkind],
                                   encoder)
        for read, encoding in zip(ofkind, encodings, strict=True):
            report = IngestReport()
            done = _checked(handler, encoding, report)
            read.encoded = Encoded([] if done is None else [done], report)
            read.decoded = None
