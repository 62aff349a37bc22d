"""Finding media: walk folders for images and text documents.

A text file beside an image with the same stem (`photo.jpg` + `photo.txt`) is that image's
sidecar caption: it is indexed as a text document like any other, and its content is also
stored as the image's caption. Hidden files and folders are skipped; symlinked folders are not
followed (no loops); `exclude` globs match a path relative to its root, or a bare name.

Only regular files are media: a named pipe, socket or device (behind a symlink too) would block
a reader or never end, so it is a scan failure. So is a symlinked file whose target lies outside
every root (`notes/passwd.txt -> /etc/passwd`), unless the caller allows it. `open_regular`
checks again on the opened file, for a file swapped since the scan.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from index.kinds import IMAGE, TEXT, VIDEO
from retriever.errors import FolderNotFound
from retriever.media.images import IMAGE_SUFFIXES
from retriever.media.video import VIDEO_SUFFIXES

TEXT_SUFFIXES = frozenset({".txt", ".md"})


@dataclass(frozen=True)
class MediaFile:
    path: Path  # absolute, symlinks kept as named
    kind: str  # IMAGE, TEXT or VIDEO
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


def scan(roots: Sequence[Path], exclude: Sequence[str] = (),
         follow_symlinks_outside: bool = False) -> ScanResult:
    """Media files under `roots`, and the ones refused, each with its reason."""
    result = ScanResult()
    seen: set[Path] = set()
    checked = check_roots(roots)
    inside = None if follow_symlinks_outside else [os.path.realpath(r) for r in checked]
    for root in checked:
        for path in _walk(root, exclude, result.failures):
            if path in seen:
                continue
            seen.add(path)
            media = _media_file(path, inside, result.failures)
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


def _media_file(path: Path, inside: list[str] | None,
                failures: list[ScanFailure]) -> MediaFile | None:
    """`path` as a media file, or None (not media, or refused: then added to `failures`).
    `inside`: the resolved roots a symlink's target must lie in; None allows any target."""
    suffix = path.suffix.lower()
    kind = (IMAGE if suffix in IMAGE_SUFFIXES else TEXT if suffix in TEXT_SUFFIXES
            else VIDEO if suffix in VIDEO_SUFFIXES else None)
    if kind is None:
        return None
    try:
        st = path.stat()  # follows symlinks: a broken one fails here
        refused = _refusal(path, st.st_mode, inside)
    except OSError as err:
        refused = err.strerror or str(err)
    if refused is not None:
        failures.append(ScanFailure(path_key(path), f"{path_key(path)}: {refused}"))
        return None
    return MediaFile(path=path, kind=kind, size=st.st_size, mtime=st.st_mtime)


def _refusal(path: Path, mode: int, inside: list[str] | None) -> str | None:
    if not stat.S_ISREG(mode):
        return f"not a regular file ({_file_type(mode)})"
    if inside is not None and path.is_symlink():
        target = os.path.realpath(path)
        if not any(target == root or target.startswith(root.rstrip(os.sep) + os.sep)
                   for root in inside):
            return (f"symlink to {path_key(Path(target))}, outside the indexed folders "
                    "(--follow-symlinks-outside indexes it)")
    return None


def _file_type(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a folder" if stat.S_ISDIR(mode) else "a special file"


def open_regular(path: Path) -> BinaryIO:
    """`path` open for binary reading, if it is still a regular file. Opening does not block
    (O_NONBLOCK: a FIFO swapped in since the scan would wait for a writer); the opened file's
    own stat decides. Raises OSError."""
    fh = open(path, "rb", opener=_nonblocking)  # noqa: SIM115 (returned open)
    mode = os.fstat(fh.fileno()).st_mode
    if not stat.S_ISREG(mode):
        fh.close()
        raise OSError(f"not a regular file ({_file_type(mode)})")
    return fh


def _attach_sidecars(files: list[MediaFile]) -> None:
    texts = {f.path.with_suffix(""): f.path for f in files if f.kind == TEXT}
    for i, f in enumerate(files):
        if f.kind == IMAGE and f.path.with_suffix("") in texts:
            files[i] = MediaFile(f.path, f.kind, f.size, f.mtime, texts[f.path.with_suffix("")])


def _nonblocking(name: str, flags: int) -> int:
    return os.open(name, flags | os.O_NONBLOCK)
