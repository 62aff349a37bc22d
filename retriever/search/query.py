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

A query in words is also matched by keyword (`match`): the store's keyword hits (every word
typed, in a passage, the words read in an image, a caption or a file name) and the cosine
ranking are fused per section by reciprocal rank (retriever.search.fusion), so an exact token
a model cannot read (INV-48213) finds its file first and a paraphrase still finds its meaning.
`semantic` is the cosine ranking alone, `keyword` the keyword hits alone (in keyword order);
the score shown is always the cosine. A query by an image or an item has no words: cosine only.
Each result carries a snippet of its text with the query's words marked (retriever.search.
highlight).
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
from retriever.errors import IndexStillBuilding, ItemNotFound, UsageError
from retriever.media.paths import folder_key, key_path
from retriever.search.fusion import DEFAULT_FUSION, Fusion, fused
from retriever.search.highlight import NO_WORDS, Highlighter

if TYPE_CHECKING:  # Query and Result are on the CLI's path to a running server: keep it light
    import numpy as np

    from retriever.encoding.encoders import Encoder
    from retriever.library.collection import Collection
    from retriever.progress import Progress
    from retriever.settings import Settings

# texts: passages of documents and words read in images (--ocr); videos: video frames
TARGETS = {"images": (IMAGE,), "texts": (TEXT, IMAGE_TEXT), "videos": (VIDEO,),
           "all": (IMAGE, TEXT, VIDEO, IMAGE_TEXT)}
# --type's words, and the web UI's "photos"
TARGET_ALIASES = {"image": "images", "text": "texts", "video": "videos", "photos": "images"}
DEFAULT_TARGET = "images"  # words and images alike find photos unless told otherwise
SECTION_OF = {IMAGE: "images", VIDEO: "images", TEXT: "texts", IMAGE_TEXT: "texts"}
MAX_ID = 2**63 - 1  # item ids are SQLite integers
MATCHES = ("hybrid", "semantic", "keyword")  # --match: both fused, cosine only, keywords only
DEFAULT_MATCH = "hybrid"  # bench/hybrid.py: best recall@1 over exact tokens and paraphrases
FUSION_DEPTH = 50  # candidates each ranking gives the fusion (at least k)
MAX_PARTIAL_WORDS = 8  # words looked up one by one for Fusion.partial


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
    match: str = DEFAULT_MATCH  # "hybrid", "semantic" or "keyword" (words only: see MATCHES)

    @property
    def main(self) -> Term:
        return Term(1.0, self.text, self.image, self.item)

    def check(self) -> None:
        """Raise `UsageError` for a query that cannot run (before any model is loaded)."""
        if self.target not in TARGETS:
            raise UsageError(f"unknown target {self.target!r}: use images, texts, videos or "
                             f"all")
        if self.match not in MATCHES:
            raise UsageError(f"--match {self.match!r} is not a way to match: use hybrid, "
                             f"semantic or keyword")
        if self.match == "keyword" and self.text is None:
            raise UsageError("--match keyword needs words to look for, not an image or item")
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
    found_in: str = "images"  # "images" or "texts": the section, what kind of vector matched
    taken_at: float | None = None  # the file's EXIF date, else its mtime (unix seconds)
    page: int | None = None  # a document passage's page, 1-based (PDF)
    section: str | None = None  # a document passage's heading or chapter
    snippet: str | None = None  # <= ~200 chars of passage or caption (retriever.search.highlight)
    marks: tuple[tuple[int, int], ...] = ()  # [start, end) of each query word in `snippet`

    @property
    def file(self) -> Path:
        """The file on disk (`path` is its key, retriever.media.paths)."""
        return key_path(self.path)

    def to_json(self) -> dict:
        return {**asdict(self), "tags": list(self.tags), "marks": [list(m) for m in self.marks]}


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
    if collection.being_written() and collection.reads.counts().files == 0:  # a first run
        raise IndexStillBuilding(collection.directory)
    encoder = pinned_encoder(collection, asked, backend, quick_start=True, progress=progress,
                             settings=settings)
    return search(collection, encoder, query)


def search(collection: Collection, encoder: Encoder, query: Query,
           fusion: Fusion = DEFAULT_FUSION) -> list[Result]:
    """The best `query.k` results, sections interleaved by rank (the module's docstring);
    `fusion`: how a hybrid match weighs its two rankings (bench/hybrid.py compares choices)."""
    query.check()
    vector = query_vector(collection, encoder, query)  # (1, dim)
    sections = {section: _ranked(collection, kinds, vector, query, fusion)
                for section, kinds in _sections(query).items()}
    ranked = _interleaved(sections)[: query.k]
    if query.min_score is not None:
        ranked = [hit for hit in ranked if hit[1] >= query.min_score]
    return _results(collection, ranked, Highlighter.of(query.text))


def recent_images(collection: Collection, k: int) -> list[Result]:
    """The `k` newest photos (EXIF date, else mtime), newest first; score 0 (no query)."""
    return _results(collection, [(i, 0.0, "images") for i in collection.reads.recent_images(k)])


def _results(collection: Collection, ranked: list[tuple[int, float, str]],
             words: Highlighter = NO_WORDS) -> list[Result]:
    """(id, score, found_in) -> Results, in that order (items deleted meanwhile left out), each
    with its snippet and the spans of `words` in it."""
    ids = [i for i, _, _ in ranked]
    views, tags = collection.reads.items(ids), collection.reads.tags(ids)
    results = []
    for i, score, found_in in ranked:
        if (v := views.get(i)) is None:
            continue
        snippet, marks = words.snippet(v.passage or v.caption)
        results.append(Result(i, v.path, score, v.kind, v.position, v.passage, v.caption,
                              v.time, tuple(tags.get(i, ())), found_in, v.taken_at, v.page,
                              v.section, snippet, tuple(marks)))
    return results


def _sections(query: Query) -> dict[str, tuple[str, ...]]:
    """The groups a query ranks on their own (images, texts) and the kinds each searches."""
    sections: dict[str, tuple[str, ...]] = {}
    for kind in _kinds(query):
        sections[SECTION_OF[kind]] = (*sections.get(SECTION_OF[kind], ()), kind)
    return sections


def _ranked(collection: Collection, kinds: tuple[str, ...], vector: np.ndarray, query: Query,
            fusion: Fusion) -> list[tuple[int, float]]:
    """(id, cosine) of one section's items, best first, each once: by `query.match`."""
    words = query.text if query.match != "semantic" else None
    depth = query.k if words is None else max(query.k, FUSION_DEPTH)
    semantic = [] if query.match == "keyword" else _nearest(collection, kinds, vector, query,
                                                            depth)
    if words is None:
        return fused(semantic, [], {})
    keyword, cosines = _keyword(collection, kinds, vector, query, depth, words)
    if query.match == "keyword":
        return fused([(i, cosines[i]) for i in keyword], [], {})
    partial: list[int] = []
    if fusion.partial > 0:
        partial, more = _partial(collection, kinds, vector, query, depth)
        cosines = {**more, **cosines}
    return fused(semantic, keyword, cosines, fusion, partial)


def _partial(collection: Collection, kinds: tuple[str, ...], vector: np.ndarray,
             query: Query, depth: int) -> tuple[list[int], dict[int, float]]:
    """Items holding some of the query's words (ids: most words first, then best ranks)
    and each one's cosine; nothing for a query of one word."""
    words = list(dict.fromkeys((query.text or "").split()))[:MAX_PARTIAL_WORDS]
    if len(words) < 2:
        return [], {}
    held: dict[int, tuple[int, float]] = {}  # id -> (words held, sum of 1/rank)
    cosines: dict[int, float] = {}
    for word in words:
        ids, found = _keyword(collection, kinds, vector, query, depth, word)
        cosines.update(found)
        for rank, i in enumerate(ids, 1):
            count, ranks = held.get(i, (0, 0.0))
            held[i] = (count + 1, ranks + 1 / rank)
    order = sorted(held, key=lambda i: (-held[i][0], -held[i][1]))
    return order[:depth], cosines


def _nearest(collection: Collection, kinds: tuple[str, ...], vector: np.ndarray,
             query: Query, depth: int) -> list[tuple[int, float]]:
    """(id, cosine) of the `depth` nearest items of each kind, best first."""
    hits = [hit for kind in kinds for hit in _search_kind(collection, kind, vector, query, depth)]
    return sorted(_captions_as_photos(collection, hits), key=lambda hit: -hit[1])


def _keyword(collection: Collection, kinds: tuple[str, ...], vector: np.ndarray,
             query: Query, depth: int, words: str) -> tuple[list[int], dict[int, float]]:
    """The store's hits of `kinds` holding every one of `words` (ids, best first), with
    `query`'s filters, and each one's cosine."""
    folder = folder_key(query.path_prefix) if query.path_prefix else None
    hits = collection.reads.keyword_hits(words, kinds, depth, folder, query.after,
                                         query.before, query.tag)
    ids = [i for i, _ in hits]
    if not ids:
        return [], {}
    found, vectors = collection.reads.vectors_of(ids)
    cosine = dict(zip(found.tolist(), (vectors @ vector[0]).tolist(), strict=True))
    cosines: dict[int, float] = {}
    for i, score in _captions_as_photos(collection, [(i, cosine[i]) for i in ids if i in cosine]):
        cosines.setdefault(i, score)  # a photo found by two passages: its best (first) one
    return list(cosines), cosines


def _search_kind(collection: Collection, kind: str, vector: np.ndarray, query: Query,
                 depth: int) -> list[tuple[int, float]]:
    """(item id, score) of the best `depth` items of one kind, best first."""
    if not collection.reads.has_items(kind):  # no FAISS file to load for a kind never indexed
        return []
    scores, ids = collection.nearest(kind, vector, depth, _allowed(collection, kind, query))
    return [(int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]


def _captions_as_photos(collection: Collection,
                        hits: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Passages of a sidecar caption become hits on the photo it captions."""
    views = collection.reads.items([i for i, _ in hits])
    texts = sorted({v.path for v in views.values() if v.kind == TEXT})
    owners = collection.caption_owners(texts) if texts else {}
    return [(owners.get(views[i].path, i) if i in views and views[i].kind == TEXT else i, score)
            for i, score in hits]


def _interleaved(sections: dict[str, list[tuple[int, float]]]) -> list[tuple[int, float, str]]:
    """(id, score, found_in), each id once: the sections' rankings merged by rank (ties at a
    rank by score). One section is simply its ranking."""
    ranked = sorted((rank, -score, i, score, section) for section, hits in sections.items()
                    for rank, (i, score) in enumerate(hits, 1))
    merged, taken = [], set()
    for _, _, i, score, section in ranked:
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
