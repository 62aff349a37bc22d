"""The query layer: one `search` the CLI, the web server and the tests share.

A query is one or more weighted parts: words, an image file, or an item already in the index.
Its vector is the weighted sum of the parts' unit vectors (`sub` parts with negative weight),
renormalised:  q = normalize(w0 * e(main) + sum_i w_i * e(add_i) - sum_j w_j * e(sub_j)).
It is searched in the images index (the default), the texts index, or both. `all` gives both
sections a fair place: cosines of text->text pairs (0.6-1.0 for CLIP) dwarf text->image ones
(0.2-0.35), so a merge by score would hide every photo behind any notes. Instead each section
(images: photos and video frames; texts: passages and words read in images) is ranked on its
own and the two are interleaved by rank (the best image, the best passage, the second image,
...), ties at a rank ordered by score; scores stay cosines. A passage of a sidecar caption
(`photo.txt` beside `photo.jpg`) is not a document of its own: its hit is the photo's row
(caption shown), in the texts section, where it was found.

Filters run where they are cheap: the folder (that folder and below it, on a path component:
`--in X/2024` is not `X/2024-old`), the date range and a tag are one SQL query
whose ids become a FAISS id selector (evaluated inside the index, not by scanning rows in Python);
`min_score` cuts the ranked list.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from index.kinds import IMAGE, IMAGE_TEXT, TEXT, VIDEO
from retriever.encoding.specs import ModelSpec
from retriever.encoding.tokenizer import CHARS_PER_TOKEN  # as every text a model reads
from retriever.errors import ItemNotFound, UsageError
from retriever.media.paths import folder_key, key_path

if TYPE_CHECKING:  # Query and Result are on the CLI's path to a running server: keep it light
    import numpy as np

    from retriever.encoding.encoders import Encoder
    from retriever.library.collection import Collection
    from retriever.progress import Progress
    from retriever.settings import Settings

# texts: passages of documents and words read in images (--ocr); videos: video frames
TARGETS = {"images": (IMAGE,), "texts": (TEXT, IMAGE_TEXT), "videos": (VIDEO,),
           "all": (IMAGE, TEXT, VIDEO, IMAGE_TEXT)}
TARGET_ALIASES = {"image": "images", "text": "texts", "video": "videos"}  # --type's words
DEFAULT_TARGET = "images"  # words and images alike find photos unless told otherwise
SECTION_OF = {IMAGE: "images", VIDEO: "images", TEXT: "texts", IMAGE_TEXT: "texts"}
MAX_ID = 2**63 - 1  # item ids are SQLite integers


@dataclass(frozen=True)
class Term:
    """One weighted part of a query: exactly one of text, image, item."""

    weight: float = 1.0
    text: str | None = None
    image: Path | None = None
    item: int | None = None  # an indexed item id: its stored vector

    def check(self) -> None:
        given = [v for v in (self.text, self.image, self.item) if v is not None]
        if len(given) != 1:
            raise UsageError("give either a text query, --image FILE or an item, not "
                             "both or neither")
        if self.image is not None and not self.image.is_file():
            raise UsageError(f"query image {self.image} does not exist: pass an image file")
        if self.text is not None and not self.text.strip():
            raise UsageError("the query text is empty: say what to look for")
        if self.item is not None and not -MAX_ID <= self.item <= MAX_ID:
            raise UsageError(f"item {self.item} is not an item id: pass an id from a search "
                             f"result")
        if not math.isfinite(self.weight) or self.weight <= 0:
            raise UsageError(f"weight {self.weight} must be positive and finite (use --sub "
                             f"to subtract)")


@dataclass(frozen=True)
class Query:
    text: str | None = None  # what to look for, in words
    image: Path | None = None  # or: an image to look for things like
    item: int | None = None  # or: an item already indexed ("more like this")
    target: str = DEFAULT_TARGET  # "images", "texts", "videos" or "all"
    k: int = 10  # results wanted
    path_prefix: str | None = None  # only files in this folder, or this file (`folder_key`)
    add: tuple[Term, ...] = ()  # more of this
    sub: tuple[Term, ...] = ()  # less of this
    after: float | None = None  # unix time: only files taken (EXIF) or modified at/after this
    before: float | None = None  # ... and before this
    min_score: float | None = None  # drop results with a lower cosine score
    video_frames: bool = False  # target "images": video frames are found too
    tag: str | None = None  # only images tagged with this label (`retriever tag`)

    @property
    def main(self) -> Term:
        return Term(1.0, self.text, self.image, self.item)

    def check(self) -> None:
        """Raise `UsageError` for a query that cannot run (before any model is loaded)."""
        if self.target not in TARGETS:
            raise UsageError(f"unknown target {self.target!r}: use images, texts, videos or "
                             f"all")
        if self.k < 1:
            raise UsageError(f"-k must be at least 1, not {self.k}")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise UsageError(f"--min-score must be a number between -1 and 1, not "
                             f"{self.min_score}")
        for term in (self.main, *self.add, *self.sub):
            term.check()
        if self.after is not None and self.before is not None and self.after >= self.before:
            raise UsageError("--after must be earlier than --before")


@dataclass(frozen=True)
class Result:
    id: int  # store item id (= FAISS id)
    path: str
    score: float  # cosine similarity to the query
    kind: str  # "image", "text", "video" (a frame) or "image-text" (words read in an image)
    position: int  # passage number in its file (0 for images), frame number in a video
    passage: str | None  # the matching passage, for texts
    caption: str | None  # the sidecar caption, for images
    time: float | None = None  # a video frame's moment, seconds from the start
    tags: tuple[str, ...] = ()  # labels `retriever tag` gave it
    section: str = "images"  # "images" or "texts": what kind of vector matched (see `all`)
    taken_at: float | None = None  # the file's EXIF date, else its mtime (unix seconds)

    @property
    def file(self) -> Path:
        """The file on disk (`path` is its key, retriever.media.paths)."""
        return key_path(self.path)

    def to_json(self) -> dict:
        return {**asdict(self), "tags": list(self.tags)}


def search_index(index_dir: Path, query: Query, asked: ModelSpec | None = None,
                 backend: str = "auto", store_url: str | None = None,
                 progress: Progress | None = None, *, settings: Settings) -> list[Result]:
    """One query on the index in `index_dir` (its store at `store_url`, if not the default),
    with the model it was built with (`asked`, a model or weights expected, must agree: else
    `AskedModelDiffers`), on this machine as `settings` describe it (export cache, GPU, index
    on disk). `progress` shows a first query's model export as a step. Made for a
    one-off query: the collection is opened for reading only (a current SQLite store without
    SQLAlchemy), the encoder to start fast (`quick_start`)."""
    from index.ann import configured
    from retriever.library.collection import Collection
    from retriever.library.pinned_encoder import pinned_encoder

    collection = Collection.open(index_dir, configured(settings), store_url, reading=True)
    encoder = pinned_encoder(collection, asked, backend, quick_start=True, progress=progress,
                             settings=settings)
    return search(collection, encoder, query)


def search(collection: Collection, encoder: Encoder, query: Query) -> list[Result]:
    query.check()
    vector = query_vector(collection, encoder, query)  # (1, dim)
    sections: dict[str, list[tuple[float, int]]] = {}
    for kind in _kinds(query):
        hits = _search_kind(collection, kind, vector, query)
        if kind == TEXT:
            hits = _captions_as_photos(collection, hits)
        sections.setdefault(SECTION_OF[kind], []).extend(hits)
    ranked = _interleaved(sections)[: query.k]
    if query.min_score is not None:
        ranked = [hit for hit in ranked if hit[1] >= query.min_score]
    return _results(collection, ranked)


def recent_images(collection: Collection, k: int) -> list[Result]:
    """The `k` newest photos (EXIF date, else mtime), newest first; score 0 (no query)."""
    return _results(collection, [(i, 0.0, "images") for i in collection.reads.recent_images(k)])


def _results(collection: Collection, ranked: list[tuple[int, float, str]]) -> list[Result]:
    """(id, score, section) -> Results, in that order (items deleted meanwhile left out)."""
    ids = [i for i, _, _ in ranked]
    views, tags = collection.reads.items(ids), collection.reads.tags(ids)
    return [Result(i, v.path, score, v.kind, v.position, v.passage, v.caption, v.time,
                   tuple(tags.get(i, ())), section, v.taken_at)
            for i, score, section in ranked if (v := views.get(i)) is not None]


def _search_kind(collection: Collection, kind: str, vector: np.ndarray,
                 query: Query) -> list[tuple[float, int]]:
    """(score, item id) of the best `query.k` items of one kind, best first."""
    if not collection.reads.has_items(kind):  # no FAISS file to load for a kind never indexed
        return []
    scores, ids = collection.nearest(kind, vector, query.k, _allowed(collection, kind, query))
    return [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]


def _captions_as_photos(collection: Collection,
                        hits: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Passages of a sidecar caption become hits on the photo it captions."""
    views = collection.reads.items([i for _, i in hits])
    owners = collection.caption_owners(sorted({v.path for v in views.values()}))
    return [(score, owners.get(views[i].path, i) if i in views else i) for score, i in hits]


def _interleaved(sections: dict[str, list[tuple[float, int]]]) -> list[tuple[int, float, str]]:
    """(id, score, section), each id once: every section ranked by score, then merged by rank
    (ties at a rank by score). One section is simply its ranking."""
    ranked: list[tuple[int, float, float, int, str]] = []  # (rank, -score, ...) sorts fairly
    for section, hits in sections.items():
        seen: set[int] = set()
        for score, i in sorted(hits, reverse=True):
            if i not in seen:
                seen.add(i)
                ranked.append((len(seen), -score, score, i, section))
    merged, taken = [], set()
    for _, _, score, i, section in sorted(ranked):
        if i not in taken:  # a photo found by its pixels and by its caption: its best place
            taken.add(i)
            merged.append((i, score, section))
    return merged


def _kinds(query: Query) -> tuple[str, ...]:
    """The vector indexes a query searches: its target's, and video frames with images when
    `video_frames` is set."""
    extra = (VIDEO,) if query.video_frames and query.target == "images" else ()
    return TARGETS[query.target] + extra


def query_vector(collection: Collection, encoder: Encoder, query: Query) -> np.ndarray:
    """(1, dim) unit vector: the weighted sum of the parts' vectors, renormalised."""
    import numpy as np

    total = np.zeros(encoder.dim, dtype=np.float64)
    parts = [(query.main, 1.0), *((t, 1.0) for t in query.add), *((t, -1.0) for t in query.sub)]
    # only the weights' ratios matter (the sum is renormalised): scaled to at most 1, any
    # finite weights (1e308 too) add up without overflow
    largest = max(term.weight for term, _ in parts)
    for term, sign in parts:
        vector = _embed(collection, encoder, term).astype(np.float64)
        total += sign * (term.weight / largest) * vector
    norm = np.linalg.norm(total)
    if not np.isfinite(norm):
        raise UsageError("the query vector is not finite: a stored or encoded vector holds "
                         "NaN or inf; re-index with a sound model")
    if norm < 1e-6:
        raise UsageError("the positive and negative parts cancel out: change a weight")
    return (total / norm).astype(np.float32)[None, :]


def _embed(collection: Collection, encoder: Encoder, term: Term) -> np.ndarray:
    if term.item is not None:
        stored = collection.reads.item_vector(term.item)
        if stored is None:
            raise ItemNotFound(f"no item {term.item} in {collection.directory}: pass an id "
                               f"from a search result")
        return stored[1]
    if term.image is not None:
        from retriever.encoding.pixels import load_pixels

        # decoded like indexed images are, so an indexed photo finds itself at score 1
        return encoder.encode_pixels(load_pixels(term.image, encoder.pixels).data[None])[0]
    text = (term.text or "")[: CHARS_PER_TOKEN * encoder.context_length]  # see CHARS_PER_TOKEN
    return encoder.encode_texts([text])[0]


def _allowed(collection: Collection, kind: str, query: Query) -> np.ndarray | None:
    if query.path_prefix is None and query.after is None and query.before is None \
            and query.tag is None:
        return None
    folder = folder_key(query.path_prefix) if query.path_prefix else None
    return collection.reads.item_ids_where(kind, folder, query.after, query.before, query.tag)


def resolve_target(to: str | None, kind: str | None = None) -> str:
    """What `--to` and `--type` ask for, as a TARGETS key (singular forms accepted); both given
    must agree. Neither: DEFAULT_TARGET."""
    chosen = {TARGET_ALIASES.get(v, v) for v in (to, kind) if v}
    if len(chosen) > 1:
        raise UsageError(f"--type {kind} and --to {to} ask for different things: pass one")
    target = chosen.pop() if chosen else DEFAULT_TARGET
    if target not in TARGETS:
        raise UsageError(f"unknown target {target!r}: use images, texts, videos or all")
    return target


def parse_term(spec: str, flag: str = "--add") -> Term:
    """`--add`/`--sub` values: "TEXT", "W:TEXT", "FILE", "W:FILE" or "item:ID" / "W:item:ID".

    A value naming an existing file is an image; one that looks like an image file name but
    names none is a `UsageError` (not silently words); anything else is words. W is a
    positive weight (default 1).
    """
    weight, rest = 1.0, spec
    head, sep, tail = spec.partition(":")
    if sep and _is_number(head):
        weight, rest = float(head), tail
    if rest.startswith("item:") and rest[5:].isdigit():
        return Term(weight, item=int(rest[5:]))
    if Path(rest).expanduser().is_file():
        return Term(weight, image=Path(rest).expanduser())
    if _looks_like_image_file(rest):
        raise UsageError(f"{flag} {spec}: no such file {rest}: pass an existing image, or "
                         f"words without a file extension")
    return Term(weight, text=rest)


def _looks_like_image_file(text: str) -> bool:
    from retriever.media.images import IMAGE_SUFFIXES

    return " " not in text.strip() and os.path.splitext(text)[1].lower() in IMAGE_SUFFIXES


def parse_date(value: str, flag: str) -> float:
    """YYYY-MM-DD or an ISO date-time (local time, like camera clocks) -> unix time."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise UsageError(f"{flag} {value!r} is not a date: use YYYY-MM-DD") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
