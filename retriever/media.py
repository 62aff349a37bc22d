"""Finding media: walk folders for images and text documents.

A text file beside an image with the same stem (`photo.jpg` + `photo.txt`) is that image's
sidecar caption: it is indexed as a text document like any other, and its content is also
stored as the image's caption. Hidden files and folders are skipped; symlinked folders are not
followed (no loops); `exclude` globs match a path relative to its root, or a bare name.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retriever.errors import FolderNotFound
from retriever.images import IMAGE_SUFFIXES

TEXT_SUFFIXES = frozenset({".txt", ".md"})
IMAGE = "image"
TEXT = "text"


@dataclass(frozen=True)
class MediaFile:
    path: Path  # absolute, symlinks kept as named
    kind: str  # IMAGE or TEXT
    size: int
    mtime: float
    sidecar: Path | None = None  # for an image: its caption file, if any


@dataclass(frozen=True)
class ScanFailure:
    path: str
    reason: str


@dataclass
class ScanResult:
    files: list[MediaFile] = field(default_factory=list)
    failures: list[ScanFailure] = field(default_factory=list)

    @property
    def images(self) -> list[MediaFile]:
        return [f for f in self.files if f.kind == IMAGE]

    @property
    def texts(self) -> list[MediaFile]:
        return [f for f in self.files if f.kind == TEXT]


def path_key(path: Path) -> str:
    """The text a path is stored and shown as. File names are bytes on POSIX; bytes that are
    not UTF-8 (SQLite text must be) become backslash escapes, the same way every time."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_roots(roots: Sequence[Path]) -> list[Path]:
    """Absolute folder paths; a missing one or a file is a `FolderNotFound`."""
    checked = []
    for root in roots:
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise FolderNotFound(f"{root} {what}: pass a folder of images and text documents")
        checked.append(Path(os.path.abspath(root)))
    return checked


def scan(roots: Sequence[Path], exclude: Sequence[str] = ()) -> ScanResult:
    result = ScanResult()
    seen: set[Path] = set()
    for root in check_roots(roots):
        for path in _walk(root, exclude, result.failures):
            if path in seen:
                continue
            seen.add(path)
            media = _media_file(path, result.failures)
            if media is not None:
                result.files.append(media)
    _attach_sidecars(result.files)
    return result


def _walk(root: Path, exclude: Sequence[str], failures: list[ScanFailure]) -> Iterator[Path]:
    def on_error(err: OSError) -> None:
        where = path_key(Path(err.filename or "?"))
        failures.append(ScanFailure(where, f"{where}: cannot read folder ({err.strerror})"))

    for folder, dirs, names in os.walk(root, onerror=on_error):
        base = Path(folder)
        dirs[:] = sorted(d for d in dirs if not _skipped(base / d, root, exclude))
        for name in sorted(names):
            path = base / name
            if not _skipped(path, root, exclude):
                yield path


def _skipped(path: Path, root: Path, exclude: Sequence[str]) -> bool:
    if path.name.startswith("."):
        return True
    relative = path.relative_to(root).as_posix()
    return any(fnmatch.fnmatch(relative, g) or fnmatch.fnmatch(path.name, g) for g in exclude)


def _media_file(path: Path, failures: list[ScanFailure]) -> MediaFile | None:
    suffix = path.suffix.lower()
    kind = IMAGE if suffix in IMAGE_SUFFIXES else TEXT if suffix in TEXT_SUFFIXES else None
    if kind is None:
        return None
    try:
        st = path.stat()  # follows symlinks: a broken one fails here
    except OSError as err:
        failures.append(ScanFailure(path_key(path), f"{path_key(path)}: {err.strerror}"))
        return None
    return MediaFile(path=path, kind=kind, size=st.st_size, mtime=st.st_mtime)


def _attach_sidecars(files: list[MediaFile]) -> None:
    texts = {f.path.with_suffix(""): f.path for f in files if f.kind == TEXT}
    for i, f in enumerate(files):
        if f.kind == IMAGE and f.path.with_suffix("") in texts:
            files[i] = MediaFile(f.path, f.kind, f.size, f.mtime, texts[f.path.with_suffix("")])
