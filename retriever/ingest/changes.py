"""What changed in watched folders, told by watchfiles (inotify, FSEvents, ...) on a thread of its
own, kept as a bounded set until the next run takes it.

    FolderWatch(roots, ignore, settings, stop)   the thread: watches the roots that exist;
                                                 re-armed when a root is deleted or made again
    FolderWatch.next_batch()                     blocks until the folders were quiet `quiet`
                                                 seconds (or `max_delay` after a burst began);
                                                 None once `stop` is set

Memory stays bounded for hours: paths are coalesced into one set of at most `max_paths`; past
that only `overflowed` is kept (the run after it re-walks the folders, as every run does).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from retriever.errors import RetrieverError

Identity = tuple[int, int] | None  # a root's (st_dev, st_ino); None: not a folder now


@dataclass(frozen=True)
class WatchSettings:
    quiet: float = 1.5  # seconds without a change before a run starts (a copy still going)
    max_delay: float = 15.0  # changes that never stop still get a run this often (seconds)
    max_paths: int = 10_000  # changed paths kept between runs (memory bound); past it: counted
    poll: float = 1.0  # seconds between looks at the roots (deleted, made again) and a busy lock
    nice: int = 10  # niceness added to the watching thread and the threads it starts


@dataclass(frozen=True)
class Batch:
    changed: int  # distinct paths changed since the last run (at most max_paths)
    overflowed: bool  # more than max_paths changed
    roots_changed: bool  # a root was deleted or made again


class WatchFailed(RetrieverError):
    """The folder watcher stopped on an error it cannot get past."""


class Changes:
    """Paths changed since the last `take`, with the times of the first and latest change."""

    def __init__(self, max_paths: int) -> None:
        self.cond = threading.Condition()
        self.max_paths = max_paths
        self.paths: set[str] = set()
        self.overflowed = self.roots_changed = False
        self.first: float | None = None  # time.monotonic() of the first change not yet taken
        self.last = 0.0  # of the latest one
        self.error: BaseException | None = None  # the watching thread's end

    def add(self, paths: Iterable[str], roots_changed: bool = False) -> None:
        paths = list(paths)
        if not paths and not roots_changed:  # watchfiles' timeouts yield empty sets
            return
        with self.cond:
            for path in paths:
                if len(self.paths) < self.max_paths:
                    self.paths.add(path)
                elif path not in self.paths:
                    self.overflowed = True
            self.roots_changed |= roots_changed
            self.last = time.monotonic()
            self.first = self.first or self.last
            self.cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self.cond:
            self.error = error
            self.cond.notify_all()

    def take(self, stop: threading.Event, quiet: float, max_delay: float) -> Batch | None:
        """The changes once quiet (see the module docstring); None when `stop` is set."""
        with self.cond:
            while not stop.is_set() and self.error is None:
                now = time.monotonic()
                if self.first is not None and (now - self.last >= quiet
                                               or now - self.first >= max_delay):
                    return self._taken()
                wait = 1.0 if self.first is None else min(
                    quiet - (now - self.last), max_delay - (now - self.first))
                self.cond.wait(max(wait, 0.01))
            if self.error is not None and not stop.is_set():
                raise WatchFailed(f"watching the folders stopped: {self.error}") from self.error
            return None

    def _taken(self) -> Batch:
        batch = Batch(len(self.paths), self.overflowed, self.roots_changed)
        self.paths, self.overflowed, self.roots_changed, self.first = set(), False, False, None
        return batch


class FolderWatch:
    """The watching thread over `roots` (see the module docstring). Paths under `ignore` (the
    index folder) and hidden ones (the scan skips them) are no change."""

    def __init__(self, roots: Sequence[Path], ignore: Path, settings: WatchSettings,
                 stop: threading.Event) -> None:
        self.roots, self.settings, self.stop = list(roots), settings, stop
        self.ignore = os.path.abspath(ignore).rstrip(os.sep) + os.sep
        self.changes = Changes(settings.max_paths)
        self.polling = False  # the OS's notifications failed (no inotify watch left): poll
        self.thread = threading.Thread(target=self._run, name="retriever-watch", daemon=True)

    def __enter__(self) -> FolderWatch:
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop.set()
        self.thread.join(timeout=max(30.0, 10 * self.settings.poll))

    def next_batch(self) -> Batch | None:
        return self.changes.take(self.stop, self.settings.quiet, self.settings.max_delay)

    def identities(self) -> list[Identity]:
        return [_identity(root) for root in self.roots]

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self._arm(self.identities())
        except BaseException as error:  # noqa: BLE001 (told to the waiting run, not lost)
            self.changes.fail(error)

    def _arm(self, armed: list[Identity]) -> None:
        """Watch the roots there now until `stop`, or until a root is deleted or made again
        (then return: the caller arms again, and the next run sees the change)."""
        import watchfiles

        present = [str(r) for r, known in zip(self.roots, armed, strict=True) if known]
        if not present:
            self.stop.wait(self.settings.poll)
            self._if_roots_changed(armed)
            return
        try:
            for found in watchfiles.watch(
                    *present, watch_filter=self._relevant, debounce=1000, step=200,
                    stop_event=self.stop, rust_timeout=int(self.settings.poll * 1000),
                    yield_on_timeout=True, raise_interrupt=False,
                    force_polling=self.polling or None, ignore_permission_denied=True):
                self.changes.add(path for _, path in found)
                if self._if_roots_changed(armed):
                    return
        except (OSError, RuntimeError):  # a root gone as it was armed; out of inotify watches
            self.polling = self.polling or all(os.path.isdir(p) for p in present)
            self.changes.add((), roots_changed=True)
            self.stop.wait(self.settings.poll)

    def _if_roots_changed(self, armed: list[Identity]) -> bool:
        if self.identities() == armed:
            return False
        self.changes.add((), roots_changed=True)
        return True

    def _relevant(self, change: object, path: str) -> bool:
        if (path + os.sep).startswith(self.ignore):
            return False
        for root in self.roots:
            prefix = str(root).rstrip(os.sep) + os.sep
            if path.startswith(prefix):
                return not any(part.startswith(".")
                               for part in path[len(prefix):].split(os.sep))
        return True


def _identity(root: Path) -> Identity:
    try:
        found = os.stat(root)
    except OSError:
        return None
    return (found.st_dev, found.st_ino) if os.path.isdir(root) else None
