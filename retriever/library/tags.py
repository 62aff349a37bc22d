"""Zero-shot tags: each image's best label(s) among the labels given, as CLIP classifies.

Each label is put into every prompt template ("a photo of {}."), the prompts are encoded by the
text tower, and the label's vector is their mean, renormalised (CLIP's prompt ensembling). An
image gets the label whose vector has the highest cosine with its stored vector (all labels
within TIE of the best, if several), unless that cosine is below `min_score`. The tags are stored
under the label set (the sorted labels): tagging with the same labels again replaces that set's
tags of the images tagged; other sets' tags stay. Nothing is encoded but the prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from index.kinds import IMAGE
from index.records import TagRecord
from retriever.encoding.encoders import Encoder
from retriever.encoding.prompts import DEFAULT_TEMPLATES, label_vectors
from retriever.errors import UnknownTag, UsageError
from retriever.library.collection import Collection
from retriever.media.paths import folder_key

TIE = 1e-6  # labels scoring within this of the best are all the image's tags


@dataclass(frozen=True)
class TagRequest:
    labels: tuple[str, ...]  # what each image may be tagged as
    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # prompts, "{}" standing for the label
    prefix: str | None = None  # only images in this folder, or this file (`folder_key`)
    min_score: float | None = None  # no tag for an image whose best cosine is below this

    def check(self) -> None:
        """`UsageError` for labels or templates that cannot run (before a model loads)."""
        labels = [label.strip() for label in self.labels]
        if not labels or not all(labels):
            raise UsageError("give one or more non-empty LABELs, e.g. retriever tag cat dog")
        if len(set(labels)) != len(labels):
            raise UsageError(f"a LABEL is given twice: {', '.join(self.labels)}")
        for template in self.templates:
            if template.count("{}") != 1:
                raise UsageError(f"--prompt {template!r} needs one {{}} where the label goes, "
                                 f"e.g. 'a photo of {{}}'")

    @property
    def label_set(self) -> str:
        """How the store names this set: its sorted labels as a JSON list."""
        return json.dumps(sorted(label.strip() for label in self.labels))


@dataclass(frozen=True)
class Tagged:
    id: int  # item id
    path: str
    labels: tuple[str, ...]  # best label(s); empty when below min_score
    score: float  # the best cosine

    def to_json(self) -> dict:
        return {"id": self.id, "path": self.path, "labels": list(self.labels),
                "score": round(self.score, 6)}


def tag_images(collection: Collection, encoder: Encoder, request: TagRequest) -> list[Tagged]:
    """Tag every image under `request.prefix` and store the tags (the caller holds
    `collection.writing()`); returns each image's tags, path order."""
    request.check()
    labels = [label.strip() for label in request.labels]
    folder = folder_key(request.prefix) if request.prefix else None
    ids, vectors = collection.reads.vectors(IMAGE, folder)
    if not len(ids):
        return []
    scores = vectors @ label_vectors(encoder, labels, request.templates).T  # (images, labels)
    best = scores.max(axis=1)
    paths = {f.id: f.path for f in collection.reads.image_files(folder)}
    tagged = []
    for row, item_id in enumerate(ids.tolist()):
        kept = request.min_score is None or best[row] >= request.min_score
        chosen = np.flatnonzero(scores[row] >= best[row] - TIE).tolist() if kept else []
        tagged.append(Tagged(item_id, paths[item_id], tuple(labels[i] for i in chosen),
                             float(best[row])))
    records = [TagRecord(t.id, label, float(scores[row, labels.index(label)]))
               for row, t in enumerate(tagged) for label in t.labels]
    collection.replace_tags(request.label_set, ids.tolist(), records)
    return sorted(tagged, key=lambda t: t.path)


def check_tag(collection: Collection, tag: str) -> None:
    """`UnknownTag` (listing the labels known) when `tag` is no label of a label set stored:
    a typo in `search --tag` is told apart from a filter that simply excludes everything."""
    known = sorted({label for placed in collection.reads.placed_tags()
                    for label in json.loads(placed.label_set)})
    if tag not in known:
        raise UnknownTag(tag, tuple(known))
