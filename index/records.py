"""What the store holds and answers, as plain records, and how a vector is stored: a float32
blob, little-endian whatever the machine. Standard library and numpy only: a one-off search
imports this without SQLAlchemy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

VECTOR_DTYPE = np.dtype("<f4")  # little-endian float32, whatever the machine


@dataclass(frozen=True)
class ModelRecord:
    name: str
    pretrained: str
    dim: int
    fingerprint: str | None = None  # sha256 of config + weights; None in stores before v4
    # "fp32" | "int8" | "fp16": the arithmetic that made the vectors; None in stores before v10
    # (those were fp32)
    precision: str | None = None


@dataclass(frozen=True)
class FileRecord:
    path: str  # absolute
    kind: str  # IMAGE or TEXT
    content_hash: str  # sha256 hex of the bytes
    size: int
    mtime: float
    width: int | None = None
    height: int | None = None
    caption: str | None = None
    taken_at: float | None = None  # unix time: EXIF DateTimeOriginal, else mtime


@dataclass(frozen=True)
class ItemRecord:
    kind: str
    position: int
    passage: str | None
    vector: np.ndarray  # (dim,) float32, unit norm
    time: float | None = None  # a video frame's moment, seconds from the start
    page: int | None = None  # a document passage's page, 1-based (PDF)
    section: str | None = None  # a document passage's heading or chapter (DOCX, EPUB, HTML)


@dataclass(frozen=True)
class ItemView:
    id: int
    path: str
    kind: str
    position: int
    passage: str | None
    caption: str | None
    time: float | None = None  # a video frame's moment, seconds
    taken_at: float | None = None  # the file's EXIF date, else its mtime (unix seconds)
    page: int | None = None  # a document passage's page, 1-based (PDF)
    section: str | None = None  # a document passage's heading or chapter


@dataclass(frozen=True)
class ImageFile:
    """An image item with its file's facts: what `retriever duplicates` shows and orders by."""

    id: int  # item id
    path: str
    size: int  # bytes
    width: int | None
    height: int | None
    content_hash: str


@dataclass(frozen=True)
class ThresholdRecord:
    """`retriever duplicates`' threshold as measured (retriever.library.calibration)."""

    threshold: float  # cosine at or above which two images are copies
    target_precision: float  # the share of reported pairs asked to be true copies
    sample: int  # images sampled (each copied in memory the ways copies happen)
    images: int  # images in the collection when measured
    recall: float  # share of the in-memory copies at or above `threshold`
    fingerprint: str | None  # the model's (ModelRecord.fingerprint) it was measured with
    measured_at: float  # unix time


@dataclass(frozen=True)
class TagRecord:
    item_id: int
    label: str
    score: float


@dataclass(frozen=True)
class PlacedTag:
    """A tag with its item named by where it is, not by id (`Store.placed_tags`)."""

    path: str
    kind: str
    position: int
    label_set: str
    label: str
    score: float


@dataclass(frozen=True)
class FileState:
    size: int
    mtime: float
    content_hash: str


@dataclass(frozen=True)
class FailureRecord:
    path: str
    reason: str
    size: int | None = None  # the file as it was when it failed; None if it could not be read
    mtime: float | None = None


@dataclass(frozen=True)
class RunRecord:
    id: int
    status: str
    started_at: float
    finished_at: float | None
    stats: dict


@dataclass
class WriteResult:
    added: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # kind -> (ids (n,) int64, vectors (n, dim) float32): what the vector index must add
    removed: list[int] = field(default_factory=list)  # item ids the vector index must drop


@dataclass(frozen=True)
class Counts:
    images: int
    texts: int
    files: int
    videos: int = 0  # video frames
    image_texts: int = 0  # OCR passages of images


def encode(vector: np.ndarray) -> bytes:
    """A vector as its blob: float32, little-endian."""
    return np.ascontiguousarray(vector, dtype=VECTOR_DTYPE).tobytes()


def decode(blob: bytes) -> np.ndarray:
    """A blob as the vector it holds: (dim,) float32 in this machine's order."""
    return np.frombuffer(blob, dtype=VECTOR_DTYPE).astype(np.float32)


def stacked(rows: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(item id, vector blob) rows -> ids (n,) int64 and vectors (n, dim) float32; (0, 0)
    when there are none (the dimension unknown)."""
    if not rows:
        return np.empty(0, np.int64), np.empty((0, 0), np.float32)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    blob = b"".join(bytes(r[1]) for r in rows)
    return ids, np.frombuffer(blob, dtype=VECTOR_DTYPE).reshape(len(rows), -1).astype(np.float32)
