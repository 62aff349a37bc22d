"""Finding media: walk folders for images, videos and text documents (TEXT_SUFFIXES: plain
text, PDF, DOCX, ODT, EPUB, HTML, RTF). Files of other types are counted by extension
(`ScanResult.not_indexed`), so a run says what it left out.

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
from retriever.media.paths import path_key, shown  # noqa: F401  (re-exported)
from retriever.media.video import VIDEO_SUFFIXES

# text documents (the TEXT kind), read by retriever.media.documents; kept here, below it
TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst", ".org", ".csv", ".pdf", ".docx", ".odt",
                           ".epub", ".html", ".htm", ".rtf"})
SIDECAR_SUFFIXES = frozenset({".txt", ".md"})  # an image's caption file: photo.jpg + photo.txt
NO_SUFFIX = "(none)"  # how a file without extension is counted in `not_indexed`


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
    # folders (a root included) that could not be listed in this run (permission denied, I/O
    # error): what lies below them is unknown, not gone
    unreadable: list[Path] = field(default_factory=list)
    # files of types not indexed, by lowercased extension: {".pages": 14, "(none)": 2}
    not_indexed: dict[str, int] = field(default_factory=dict)

    @property
    def images(self) -> list[MediaFile]:
        return [f for f in self.files if f.kind == IMAGE]

    @property
    def texts(self) -> list[MediaFile]:
        return [f for f in self.files if f.kind == TEXT]


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
        for path in _walk(root, exclude, result):
            if path in seen:
                continue
            seen.add(path)
            media = _media_file(path, inside, result)
            if media is not None:
                result.files.append(media)
    _attach_sidecars(result.files)
    return result


def _walk(root: Path, exclude: Sequence[str], result: ScanResult) -> Iterator[Path]:
    """Files under `root` in sorted order, a folder's files before its subfolders'. A stack,
    not recursion: a tree thousands of folders deep is walked like a flat one. A folder that
    cannot be listed goes to `result.unreadable` and `result.failures`."""
    stack = [root]
    while stack:
        folder = stack.pop()
        listed = _listing(folder, result)
        if listed is None:
            continue
        dirs, names = listed
        for name in names:
            path = folder / name
            if not _skipped(path, root, exclude):
                yield path
        stack.extend(reversed([folder / d for d in dirs
                               if not _skipped(folder / d, root, exclude)]))


def _listing(folder: Path, result: ScanResult) -> tuple[list[str], list[str]] | None:
    """(subfolders to enter, other names), each sorted; symlinked folders are neither. None
    when `folder` cannot be listed (recorded in `result`)."""
    dirs: list[str] = []
    names: list[str] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                kind = _entry_kind(entry)
                if kind != "linked folder":
                    (dirs if kind == "folder" else names).append(entry.name)
    except OSError as err:
        result.unreadable.append(folder)
        where = path_key(folder)
        result.failures.append(ScanFailure(where, f"{where}: cannot read folder ({err.strerror})"))
        return None
    return sorted(dirs), sorted(names)


def _entry_kind(entry: os.DirEntry) -> str:
    """What the walk makes of `entry`: a "folder" (walked into), a "linked folder" (not
    followed: no loops) or a "file" (anything else). As os.walk: an entry that cannot be
    stat'ed is a file, and a folder that may be a link is not walked into."""
    try:
        if not entry.is_dir():
            return "file"
    except OSError:
        return "file"
    try:
        return "linked folder" if entry.is_symlink() else "folder"
    except OSError:
        return "linked folder"


def _skipped(path: Path, root: Path, exclude: Sequence[str]) -> bool:
    if path.name.startswith("."):
        return True
    relative = path.relative_to(root).as_posix()
    return any(fnmatch.fnmatch(relative, g) or fnmatch.fnmatch(path.name, g) for g in exclude)


def _media_file(path: Path, inside: list[str] | None, result: ScanResult) -> MediaFile | None:
    """`path` as a media file, or None (not media: counted in `result.not_indexed`; or
    refused: added to `result.failures`). `inside`: the resolved roots a symlink's target must
    lie in; None allows any target."""
    suffix = path.suffix.lower()
    kind = (IMAGE if suffix in IMAGE_SUFFIXES else TEXT if suffix in TEXT_SUFFIXES
            else VIDEO if suffix in VIDEO_SUFFIXES else None)
    if kind is None:
        key = suffix or NO_SUFFIX
        result.not_indexed[key] = result.not_indexed.get(key, 0) + 1
        return None
    failures = result.failures
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
    texts = {f.path.with_suffix(""): f.path for f in files
             if f.kind == TEXT and f.path.suffix.lower() in SIDECAR_SUFFIXES}
    for i, f in enumerate(files):
        if f.kind == IMAGE and f.path.with_suffix("") in texts:
            files[i] = MediaFile(f.path, f.kind, f.size, f.mtime, texts[f.path.with_suffix("")])


def _nonblocking(name: str, flags: int) -> int:
    return os.open(name, flags | os.O_NONBLOCK)
