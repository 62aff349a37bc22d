"""What an indexing run is asked to do (`IngestOptions`) and what it did (`IngestReport`): the
vocabulary every part of `retriever.ingest` shares, below all of them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from index.records import FailureRecord, FileRecord, ItemRecord
from retriever.errors import UsageError
from retriever.media.images import DEFAULT_MAX_PIXELS
from retriever.media.passages import DEFAULT_MAX_TEXT_BYTES
from retriever.media.video import VideoOptions

FileItems = tuple[FileRecord, list[ItemRecord]]  # a file and its items, ready for the store
# Reading, hashing and decoding one file takes well under a second of CPU (a 100 MP photo:
# about 2 s); one that used this much is stuck (a decoder that never ends). CPU time of the
# reading thread, not time waited: a loaded machine slows a read, it does not fail it.
DEFAULT_READ_TIMEOUT = 60.0
# A read that blocks without using CPU (a hung network mount) is given up after this long
DEFAULT_READ_WALL_TIMEOUT = 600.0


@dataclass(frozen=True)
class IngestOptions:
    roots: tuple[Path, ...]  # folders to index
    exclude: tuple[str, ...] = ()  # globs on paths relative to a root, or on bare names
    # files per store transaction, on either engine (a Ray read task's block too); the
    # encoder's own batch comes from the CPU plan (retriever.encoding.cpu)
    batch_size: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS  # images larger than this are refused (bombs)
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES  # longer documents are read up to this
    follow_symlinks_outside: bool = False  # index symlinked files whose target is outside roots
    read_timeout: float = DEFAULT_READ_TIMEOUT  # CPU seconds one file's reading may use
    read_wall_timeout: float = DEFAULT_READ_WALL_TIMEOUT  # seconds, whatever CPU it used
    video: VideoOptions = VideoOptions()  # which frames of a video become items
    ocr: bool = False  # read words in images with Tesseract (items of kind image-text)

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_pixels", "max_text_bytes"):
            value = getattr(self, name)
            if value < 1:
                raise UsageError(f"--{name.replace('_', '-')} {value}: must be at least 1")
        for name in ("read_timeout", "read_wall_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} {getattr(self, name)}: must be more than 0 seconds")


@dataclass
class IngestReport:
    scanned: int = 0  # media files found
    unchanged: int = 0  # same size and mtime as stored: not read
    touched: int = 0  # mtime or size changed, bytes did not: not encoded
    reused: int = 0  # bytes already stored under another path: vectors copied
    encoded: int = 0  # files encoded in this run (images + text files)
    images: int = 0  # of which images
    texts: int = 0  # of which text files
    passages: int = 0  # text passages encoded
    videos: int = 0  # of the files encoded, videos
    frames: int = 0  # video frames encoded
    ocr_passages: int = 0  # passages of words read in images (--ocr)
    ocr_only: int = 0  # images stored before whose words --ocr read now, nothing re-encoded
    removed: int = 0  # files gone from disk, removed from the index
    known_failures: int = 0  # failed in an earlier run and unchanged since: skipped
    failures: list[FailureRecord] = field(default_factory=list)  # failed in this run
    # files found of types not indexed, by lowercased extension: {".pages": 14, "(none)": 2}
    not_indexed: dict[str, int] = field(default_factory=dict)
    # files indexed in part, a line each: "<path>: no text layer on pages 2-3; ..."
    notes: list[str] = field(default_factory=list)
    # images encoded with --ocr this run (their words read): marked so in the store at the end
    words_read: list[str] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        return {**asdict(self), "failures": [asdict(f) for f in self.failures],
                "words_read": len(self.words_read)}

    def add(self, other: IngestReport) -> None:
        """Count `other`'s files, failures, notes and types not indexed in this report too."""
        for counter in fields(self):
            if counter.name not in ("failures", "not_indexed", "notes"):
                setattr(self, counter.name,
                        getattr(self, counter.name) + getattr(other, counter.name))
        self.failures += other.failures
        self.notes += other.notes
        for suffix, count in other.not_indexed.items():
            self.not_indexed[suffix] = self.not_indexed.get(suffix, 0) + count


def not_indexed_line(not_indexed: dict[str, int]) -> str | None:
    """`not indexed: 14 .pages, 3 .key` (most first), as `index` and `info` print it; None
    when every file found was of an indexed type."""
    if not not_indexed:
        return None
    ranked = sorted(not_indexed.items(), key=lambda kv: (-kv[1], kv[0]))
    return "not indexed: " + ", ".join(f"{count} {suffix}" for suffix, count in ranked)
