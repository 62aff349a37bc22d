"""Zero-shot classification accuracy on a folder of labelled images, CLIP_benchmark's protocol.

The folder holds one subfolder per class (torchvision's ImageFolder layout): the classes are the
subfolders sorted by name, a class's images every image file under its subfolder. A class is
named by its folder, or by line i of `classnames.txt` in the folder (one name per line, in the
subfolders' sorted order). Each name is put into every template, the prompts are encoded, and the
class vector is their mean, renormalised (CLIP's prompt ensembling, as `retriever tag` does it).
An image's logits are its cosines with the class vectors.

- acc1 / acc5: the fraction of images whose class is among their 1 / 5 highest logits (acc5 is
  None with fewer than 5 classes, where CLIP_benchmark reports NaN)
- mean_per_class_recall: per class, the fraction of its images whose top-1 is that class,
  averaged over the classes that have images (scikit-learn's balanced accuracy, as CLIP_benchmark)

Ties and non-finite scores rank as in retrieval (retriever.training.evaluation): by default a
class tied with the right one ranks ahead of it only when it comes first, as CLIP_benchmark's
`topk` and `argmax` have it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retriever.encoding.encoders import Encoder
from retriever.encoding.prompts import DEFAULT_TEMPLATES, label_vectors
from retriever.errors import BadSetting, DatasetError
from retriever.media.images import IMAGE_SUFFIXES
from retriever.progress import Progress
from retriever.training.evaluation import (
    SILENT,
    Ties,
    check_ties,
    encode_image_files,
    query_ranks,
)

CLASSNAMES = "classnames.txt"  # optional, in the folder: one class name per line
TOP_K = 5  # the second accuracy reported, as CLIP_benchmark


@dataclass(frozen=True)
class ClassFolder:
    """A folder of labelled images: `images[i]` belongs to class `labels[i]`."""

    root: Path
    classes: tuple[str, ...]  # class names, in the sorted order of their folders
    images: tuple[Path, ...]
    labels: tuple[int, ...]  # index into `classes`, one per image


@dataclass(frozen=True)
class Accuracy:
    """Zero-shot classification scores, fractions of 1."""

    acc1: float
    acc5: float | None  # None with fewer than TOP_K classes
    mean_per_class_recall: float

    @classmethod
    def from_json(cls, metrics: dict[str, Any]) -> Accuracy:
        return cls(metrics["acc1"], metrics["acc5"], metrics["mean_per_class_recall"])

    def to_json(self) -> dict[str, float | None]:
        return {"acc1": self.acc1, "acc5": self.acc5,
                "mean_per_class_recall": self.mean_per_class_recall}

    def line(self) -> str:
        """For a log: "classification top-1 0.412 top-5 0.833"."""
        top5 = "" if self.acc5 is None else f" top-5 {self.acc5:.3f}"
        return f"classification top-1 {self.acc1:.3f}{top5}"

    def shown(self) -> dict[str, str]:
        """As a person reads them: percentages, "-" for a score that is not defined."""
        return {"top-1": f"{100 * self.acc1:.1f}%",
                "top-5": "-" if self.acc5 is None else f"{100 * self.acc5:.1f}%",
                "mean per-class recall": f"{100 * self.mean_per_class_recall:.1f}%"}


def read_class_folder(root: Path) -> ClassFolder:
    """The classes and images of an ImageFolder-style tree; DatasetError if it is not one."""
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder: pass a folder with one subfolder of images "
                           f"per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        raise DatasetError(f"{root} has {len(folders)} class folders: zero-shot classification "
                           f"needs one subfolder of images per class, 2 or more")
    classes = _class_names(root, folders)
    images, labels = [], []
    for label, folder in enumerate(folders):
        for path in sorted(folder.rglob("*")):
            hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not hidden:
                images.append(path)
                labels.append(label)
    if not images:
        raise DatasetError(f"{root}: no images in its {len(folders)} class folders")
    return ClassFolder(root, classes, tuple(images), tuple(labels))


def _class_names(root: Path, folders: list[Path]) -> tuple[str, ...]:
    listed = root / CLASSNAMES
    if not listed.is_file():
        return tuple(folder.name for folder in folders)
    names = [line.strip() for line in listed.read_text(errors="replace").splitlines()]
    names = [name for name in names if name]
    if len(names) != len(folders):
        raise DatasetError(f"{listed} names {len(names)} classes but {root} has {len(folders)} "
                           f"class folders: give one name per folder, in sorted folder order")
    return tuple(names)


def check_templates(templates: Sequence[str]) -> None:
    if not templates:
        raise BadSetting("template", "(none)", "give one or more, e.g. 'a photo of {}.'")
    for template in templates:
        if template.count("{}") != 1:
            raise BadSetting("template", repr(template),
                             "needs one {} where the class name goes, e.g. 'a photo of {}.'")


def classification_metrics(image_emb: np.ndarray, labels: np.ndarray, class_emb: np.ndarray,
                           ties: Ties = "topk") -> dict[str, float | None]:
    """acc1, acc5 and mean_per_class_recall of images `image_emb` of classes `labels`."""
    labels = np.asarray(labels)
    ranks = query_ranks(image_emb, labels, class_emb, np.arange(len(class_emb)), ties)
    right = ranks == 1  # (images,): the top-1 class is the image's own
    per_class = [float(np.mean(right[labels == c])) for c in np.unique(labels)]
    acc5 = float(np.mean(ranks <= TOP_K)) if len(class_emb) >= TOP_K else None
    return Accuracy(float(np.mean(right)), acc5, float(np.mean(per_class))).to_json()


def evaluate_classes(encoder: Encoder, folder: ClassFolder,
                     templates: Sequence[str] = DEFAULT_TEMPLATES, progress: Progress = SILENT,
                     ties: Ties = "topk") -> dict[str, Any]:
    """Encode `folder`'s images and class prompts with `encoder` and score classification.

    Unreadable images are skipped and counted under "unreadable"."""
    check_templates(templates)
    check_ties(ties)
    image_emb, kept, unreadable = encode_image_files(encoder, folder.images, progress)
    if not kept:
        raise DatasetError(f"none of the {len(folder.images)} images in {folder.root} could be "
                           f"read: check the image files")
    class_emb = label_vectors(encoder, folder.classes, templates)
    labels = np.asarray(folder.labels)[kept]
    metrics: dict[str, Any] = classification_metrics(image_emb, labels, class_emb, ties)
    metrics.update(images=len(kept), classes=len(folder.classes), unreadable=unreadable,
                   templates=len(templates), ties=ties)
    return metrics
