"""The files being read right now, in a journal file, so that a run killed by one of them
(OOM-killed by a hostile file, a native decoder's crash, SIGKILL) leaves its name behind.

A reader writes a line when it starts a file and another when it is done with it; the next run
reads what the dead one left (`died_reading`) and records the files still in flight as failures,
skipped until they change. Only those: not every file of the batch that was never stored.

    + <token> ["<path key>", <size>, <mtime>]     a read started
    - <token>                                      that read ended, however it ended

Each line is one `os.write` to a file opened O_APPEND: a killed process loses nothing it wrote
(the page cache outlives it), so there is no fsync per file; a machine that loses power may
lose the tail, and a torn line is ignored. A run that ends in Python, even by an exception or
Ctrl-C, removes the journal (`InFlight.__exit__`): only a process that died leaves one.
Every `COMPACT_EVERY` lines the journal is rewritten to the reads still in flight and swapped
in by rename, so it stays small however many files a run reads.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from pathlib import Path

from index.records import FailureRecord
from retriever.media.scan import MediaFile, open_regular, path_key

JOURNAL_FILE = "reading.journal"  # in the index folder
DIED = "was being read when an earlier run died; skipped until it changes"
COMPACT_EVERY = 10_000  # lines; a compacted journal holds only the reads in flight
MAX_LINE = 64 * 1024  # a path key is at most a few kB; a longer line is damage


def died_reading(path: Path) -> list[FailureRecord]:
    """The files a run that died left in flight in the journal at `path`, as failures with
    the size and mtime they had then (so they are skipped until they change); [] when there is
    no journal. A journal that cannot be read is as good as none."""
    started: dict[str, tuple[str, int, float]] = {}
    try:
        with open_regular(path) as fh:
            while line := fh.readline(MAX_LINE):
                _replay(line, started)
    except OSError:
        return []
    return [FailureRecord(key, f"{key}: {DIED}", size, mtime)
            for key, size, mtime in dict.fromkeys(started.values())]


def _replay(line: bytes, started: dict[str, tuple[str, int, float]]) -> None:
    """One journal line applied to `started` (token -> file); a damaged line changes nothing."""
    op, _, rest = line.rstrip(b"\n").partition(b" ")
    token, _, entry = rest.partition(b" ")
    if op == b"-":
        started.pop(token.decode("ascii", "replace"), None)
        return
    try:
        key, size, mtime = json.loads(entry)
        started[token.decode("ascii")] = (str(key), int(size), float(mtime))
    except (ValueError, TypeError, UnicodeDecodeError):
        pass


class InFlight:
    """The journal of one run at `path`, open while the run reads (a context manager): any
    number of threads call `start` and `done`. Writing it never fails a read: a journal that
    cannot be written (a full disk) is given up on, and the run goes on without one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lines = 0
        self._open: dict[str, str] = {}  # token -> its "+" line: the reads in flight
        self._tokens = itertools.count()
        self._lock = threading.Lock()

    def __enter__(self) -> InFlight:
        self._fd = self._create(self.path)  # a dead run's journal is read before this
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self.path.unlink(missing_ok=True)

    def start(self, media: MediaFile) -> str:
        """Note that `media` is being read; returns the token to pass to `done`."""
        token = str(next(self._tokens))
        entry = json.dumps([path_key(media.path), media.size, media.mtime])
        line = f"+ {token} {entry}\n"
        with self._lock:
            self._open[token] = line
            self._write(line)
        return token

    def done(self, token: str) -> None:
        with self._lock:
            self._open.pop(token, None)
            self._write(f"- {token}\n")

    def _write(self, line: str) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            os.write(fd, line.encode())
            self._lines += 1
            if self._lines >= COMPACT_EVERY:
                self._fd = self._compacted()
                os.close(fd)
        except OSError:  # a stale journal would blame files wrongly: none at all instead
            os.close(fd)
            self._fd = None
            self.path.unlink(missing_ok=True)

    def _compacted(self) -> int:
        """A journal of the reads in flight alone, swapped in by rename (a kill meanwhile
        leaves the old journal or the new one, each whole); returns its descriptor."""
        fresh = self.path.with_name(self.path.name + ".new")
        fd = self._create(fresh)
        try:
            os.write(fd, "".join(self._open.values()).encode())
            os.replace(fresh, self.path)
        except OSError:
            os.close(fd)
            raise
        self._lines = len(self._open)
        return fd

    @staticmethod
    def _create(path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW,
                       0o600)
