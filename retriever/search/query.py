"""The query layer: one `search` the CLI, the web server and the tests share.

A query is one or more weighted parts: words, an image file, or an item already in the index.
Its vector is the weighted sum of the parts' unit vectors (`sub` parts with negative weight),
renormalised:  q = normalize(w0 * e(main) + sum_i w_i * e(add_i) - sum_j w_j * e(sub_j)).
It is searched in the images index, the texts index, or both (`all`: merged by score).

Filters run where they are cheap: the folder prefix and the date range are one SQL query whose
ids become a FAISS id selector (evaluated inside the index, not by scanning rows in Python);
`min_score` cuts the ranked list.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from index.kinds import IMAGE, TEXT
from retriever.encoding.specs import ModelId, ModelSpec
from retriever.errors import IndexNotFound, ItemNotFound, ModelMismatch, UsageError

if TYPE_CHECKING:  # Query and Result are on the CLI's path to a running server: keep it light
    import numpy as np

    from retriever.encoding.encoders import Encoder
    from retriever.library.collection import Collection

TARGETS = {"images": (IMAGE,), "texts": (TEXT,), "all": (IMAGE, TEXT)}
MAX_ID = 2**63 - 1  # item ids are SQLite integers
# A query is cut to this many characters per context token before tokenizing: a BPE token
# covers at least one character, so this keeps every token the model can see unless the text
# is mostly whitespace, and a 20 MB query costs what a page does.
CHARS_PER_TOKEN = 32


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
    target: str = "all"  # "images", "texts" or "all"
    k: int = 10  # results wanted
    path_prefix: str | None = None  # only files whose absolute path starts with this
    add: tuple[Term, ...] = ()  # more of this
    sub: tuple[Term, ...] = ()  # less of this
    after: float | None = None  # unix time: only files taken (EXIF) or modified at/after this
    before: float | None = None  # ... and before this
    min_score: float | None = None  # drop results with a lower cosine score

    @property
    def main(self) -> Term:
        return Term(1.0, self.text, self.image, self.item)

    def check(self) -> None:
        """Raise `UsageError` for a query that cannot run (before any model is loaded)."""
        if self.target not in TARGETS:
            raise UsageError(f"unknown target {self.target!r}: use images, texts or all")
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
    kind: str  # "image" or "text"
    position: int  # passage number in its file (0 for images)
    passage: str | None  # the matching passage, for texts
    caption: str | None  # the sidecar caption, for images

    def to_json(self) -> dict:
        return asdict(self)


SEARCH_FIX = "drop {flag} to use the index's model, or pass another --db"
INDEX_FIX = "pass --reindex to re-encode everything with it, or drop {flag}"


def open_encoder(
    collection: Collection,
    asked: ModelSpec | None = None,
    batch_size: int = 64,
    fix: str = SEARCH_FIX,
    backend: str = "auto",
    quick_start: bool = False,
) -> Encoder:
    """The encoder the collection was built with, on `backend` (see `retriever.encoding.backends`);
    `asked` (from --model/--pretrained) must agree, else `ModelMismatch` ending with `fix`."""
    record = collection.model()
    if record is None:
        raise IndexNotFound(f"{collection.directory} holds no index yet: run `retriever index`")
    if asked is not None:
        for flag, value, recorded in (("--model", asked.model, record.name),
                                      ("--pretrained", asked.pretrained, record.pretrained)):
            if value is not None and not _same(value, recorded):
                raise ModelMismatch(
                    f"{flag} {value} differs from {recorded}, which {collection.directory} was "
                    f"built with: " + fix.format(flag=flag)
                )
    from retriever.encoding.backends import open_encoder as open_backend

    encoder = open_backend(ModelId(record.name, record.pretrained), backend,
                           collection.directory, batch_size, quick_start)
    # the files behind the recorded names may have changed since: same names, another model
    collection.check_model(replace(record, dim=encoder.dim, fingerprint=encoder.fingerprint))
    return encoder


def search(collection: Collection, encoder: Encoder, query: Query) -> list[Result]:
    query.check()
    vector = query_vector(collection, encoder, query)  # (1, dim)
    hits: list[tuple[float, int]] = []
    for kind in TARGETS[query.target]:
        searcher = collection.searcher(kind)
        k = min(query.k, len(searcher))  # FAISS allocates k results up front
        if k == 0:
            continue
        scores, ids = searcher.search(vector, k, _allowed(collection, kind, query))
        hits += [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
    hits = sorted(hits, reverse=True)[: query.k]
    if query.min_score is not None:
        hits = [(s, i) for s, i in hits if s >= query.min_score]
    views = collection.items([i for _, i in hits])
    return [
        Result(i, v.path, score, v.kind, v.position, v.passage, v.caption)
        for score, i in hits
        if (v := views.get(i)) is not None
    ]


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
        stored = collection.item_vector(term.item)
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
    if query.path_prefix is None and query.after is None and query.before is None:
        return None
    prefix = os.path.abspath(query.path_prefix) if query.path_prefix else None
    return collection.ids_where(kind, prefix, query.after, query.before)


def _same(asked: str, recorded: str) -> bool:
    return asked == recorded or os.path.abspath(os.path.expanduser(asked)) == recorded


def parse_term(spec: str) -> Term:
    """`--add`/`--sub` values: "TEXT", "W:TEXT", "FILE", "W:FILE" or "item:ID" / "W:item:ID".

    A value naming an existing file is an image; anything else is words. W is a positive
    weight (default 1).
    """
    weight, rest = 1.0, spec
    head, sep, tail = spec.partition(":")
    if sep and _is_number(head):
        weight, rest = float(head), tail
    if rest.startswith("item:") and rest[5:].isdigit():
        return Term(weight, item=int(rest[5:]))
    if Path(rest).expanduser().is_file():
        return Term(weight, image=Path(rest).expanduser())
    return Term(weight, text=rest)


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
