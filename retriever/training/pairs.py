"""Image-caption pairs for training and evaluation, read from a folder or a table file.

Sources:
  a folder           images with sidecar captions: photo.jpg + photo.txt (one caption per line),
                     searched recursively; hidden files and images without a sidecar are skipped
  .csv / .tsv        a header row naming an image column and a caption column
  .jsonl             one object per line with those two keys (a caption may also be a list)
  .json              COCO-style captions: {"images": [{"id", "file_name"}],
                     "annotations": [{"image_id", "caption"}]}

Relative image paths in a table resolve against the table's folder; COCO file names against
`image_root` (default: the JSON's folder), as COCO keeps annotations and images apart. Rows
naming the same image merge into one `Pair` with several captions. Images a source names but
that do not exist are skipped and listed in `PairList.missing`. Empty or blank captions (a table
cell, a COCO annotation, a sidecar with no text) are dropped and counted in
`PairList.empty_captions`; images left with no caption are listed in `PairList.uncaptioned`.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from retriever.errors import DatasetError
from retriever.media.images import IMAGE_SUFFIXES

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}
COCO_SUFFIX = ".json"
FORMATS = "a folder of captioned images, a .csv, .tsv or .jsonl table, or a COCO captions .json"


@dataclass(frozen=True)
class Pair:
    image: Path
    captions: tuple[str, ...]  # one or more, each non-empty


class PairList(list[Pair]):
    """The pairs found, plus what the source named but could not give."""

    def __init__(
        self,
        pairs: Iterable[Pair] = (),
        missing: Sequence[Path] = (),
        empty_captions: int = 0,
        uncaptioned: Sequence[Path] = (),
    ) -> None:
        super().__init__(pairs)
        self.missing = list(missing)  # named images that do not exist
        self.empty_captions = empty_captions  # blank captions dropped
        self.uncaptioned = list(uncaptioned)  # existing images left out: every caption blank


def load_pairs(
    source: Path,
    image_col: str = "filepath",
    caption_col: str = "caption",
    image_root: Path | None = None,
) -> PairList:
    """Read the pairs in `source` (folder, table or COCO JSON); see the module docstring."""
    source = Path(source).expanduser()
    if not source.exists():
        raise DatasetError(f"{source} does not exist: pass {FORMATS}")
    if source.is_dir():
        pairs = _folder_pairs(source)
        if not pairs:
            raise DatasetError(f"no captioned images in {source}: put each caption file beside "
                               f"its image (photo.jpg + photo.txt, one caption per line)")
        return pairs
    if source.suffix.lower() == COCO_SUFFIX:
        return _coco_pairs(source, Path(image_root).expanduser() if image_root else source.parent)
    if source.suffix.lower() not in TABLE_SUFFIXES:
        raise DatasetError(f"{source}: unknown data format {source.suffix!r}: pass {FORMATS}")
    try:
        return _table_pairs(source, image_col, caption_col)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{source} is not readable as {source.suffix} ({err}): "
                           f"save it as UTF-8 text with one header row") from err


def split_pairs(
    pairs: Sequence[Pair], val_fraction: float, seed: int
) -> tuple[list[Pair], list[Pair]]:
    """Split by image into (train, val), deterministically for a given seed.

    Both keep the input order. With any val_fraction > 0 and two or more pairs, each side
    gets at least one pair.
    """
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"validation fraction {val_fraction} is outside [0, 1): "
                           f"pass e.g. --val-fraction 0.1")
    n_val = round(len(pairs) * val_fraction)
    if val_fraction > 0 and len(pairs) >= 2:
        n_val = min(max(n_val, 1), len(pairs) - 1)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    val_ids = set(order[:n_val])
    train = [p for i, p in enumerate(pairs) if i not in val_ids]
    val = [p for i, p in enumerate(pairs) if i in val_ids]
    return train, val


# --- folders ----------------------------------------------------------------------------------


def _folder_pairs(root: Path) -> PairList:
    """Images with a sidecar; a sidecar without text is an empty caption (blank lines between
    captions are not)."""
    pairs, uncaptioned = [], []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or _hidden(path, root):
            continue
        sidecar = path.with_suffix(".txt")
        if not sidecar.is_file() or not path.is_file():
            continue
        lines = sidecar.read_text(errors="replace").splitlines()
        captions = _unique(line.strip() for line in lines)
        if captions:
            pairs.append(Pair(path, captions))
        else:
            uncaptioned.append(path)
    return PairList(pairs, empty_captions=len(uncaptioned), uncaptioned=uncaptioned)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


# --- tables -----------------------------------------------------------------------------------


def _table_pairs(path: Path, image_col: str, caption_col: str) -> PairList:
    captions: dict[Path, list[str]] = {}  # insertion-ordered: pairs keep the table's order
    for row_image, row_captions in _rows(path, image_col, caption_col):
        image = (path.parent / row_image).resolve()
        captions.setdefault(image, []).extend(row_captions)
    return _existing(path, path.parent, captions)


def _existing(source: Path, root: Path, captions: dict[Path, list[str]]) -> PairList:
    """Pairs whose image exists, in `captions` order; the others listed as missing. Blank
    captions are dropped and counted."""
    empty = sum(1 for texts in captions.values() for t in texts if not t)
    pairs = [Pair(image, _unique(texts)) for image, texts in captions.items()]
    found = PairList((p for p in pairs if p.captions and p.image.is_file()),
                     missing=[p.image for p in pairs if not p.image.is_file()],
                     empty_captions=empty,
                     uncaptioned=[p.image for p in pairs if not p.captions and p.image.is_file()])
    if not found:
        reason = (f"none of its {len(found.missing)} images exist (paths are relative to "
                  f"{root})" if found.missing else "it has no image with a caption")
        raise DatasetError(f"no pairs in {source}: {reason}")
    return found


def _rows(path: Path, image_col: str, caption_col: str) -> Iterator[tuple[str, list[str]]]:
    """(image path as written, captions) per row; a blank caption is kept as ""."""
    delimiter = TABLE_SUFFIXES[path.suffix.lower()]
    records = _csv_records(path, delimiter) if delimiter else _jsonl_records(path)
    for line, record in records:
        _require_columns(path, record, image_col, caption_col)
        image, caption = record[image_col], record[caption_col]
        if not isinstance(image, str) or not image.strip():
            raise DatasetError(f"{path}:{line}: empty or non-text {image_col!r}: "
                               f"give every row an image path")
        texts = caption if isinstance(caption, list) else [caption]
        yield image.strip(), ["" if t is None else str(t).strip() for t in texts]


def _csv_records(path: Path, delimiter: str) -> Iterator[tuple[int, dict]]:
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel writes a BOM
        reader = csv.DictReader(f, delimiter=delimiter)
        for record in reader:
            yield reader.line_num, record
        if reader.fieldnames is None:
            raise DatasetError(f"{path} is empty: write a header row and one row per caption")


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise DatasetError(f"{path}:{line_no}: not JSON ({err}): "
                                   f"write one JSON object per line") from err
            if not isinstance(record, dict):
                raise DatasetError(f"{path}:{line_no}: not a JSON object: "
                                   f"write one object per line")
            yield line_no, record


def _require_columns(path: Path, record: dict, image_col: str, caption_col: str) -> None:
    for column, flag in ((image_col, "--image-col"), (caption_col, "--caption-col")):
        if column not in record:
            known = ", ".join(repr(k) for k in record if k is not None) or "none"
            raise DatasetError(f"{path} has no column {column!r} (columns: {known}): "
                               f"name the right one with {flag}")


# --- COCO captions ---------------------------------------------------------------------------


def _coco_pairs(path: Path, image_root: Path) -> PairList:
    """COCO's captions_*.json: images in file order, each with all its annotations' captions."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        files = {image["id"]: image["file_name"] for image in doc["images"]}
        notes = [(note["image_id"], str(note["caption"]).strip()) for note in doc["annotations"]]
    except (ValueError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path} is not JSON ({err}): pass a COCO captions file") from err
    except (KeyError, TypeError) as err:
        raise DatasetError(f"{path} is not COCO captions (no {err}): it needs \"images\" with "
                           f"id and file_name and \"annotations\" with image_id and caption"
                           ) from err
    captions: dict[Path, list[str]] = {(image_root / name).resolve(): [] for name in files.values()}
    for image_id, caption in notes:
        if image_id not in files:
            raise DatasetError(f"{path}: a caption names image_id {image_id!r}, which is not "
                               f"in \"images\": fix or drop that annotation")
        captions[(image_root / files[image_id]).resolve()].append(caption)
    return _existing(path, image_root, captions)


def _unique(texts: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t for t in texts if t))
