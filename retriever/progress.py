"""Progress reporting. The library reports through `Progress`; the CLI renders it with rich.

Library code never prints progress itself, so tests and other callers get silence by default.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None) -> AbstractContextManager[Task]: ...


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass


class NullProgress:
    """Reports nothing."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Task]:
        yield _NullTask()


class _RichTask:
    def __init__(self, bar, task_id) -> None:
        self._bar, self._id = bar, task_id

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._id, n)


class RichProgress:
    """Bars on stderr; quiet when stderr is not a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        console = Console(stderr=True)
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=console, disable=not console.is_terminal,
                             transient=True)
        self._open = 0  # stages currently open

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Task]:
        """A bar for one stage; stages may nest (the display lives while any is open)."""
        if self._open == 0:
            self._bar.start()
        self._open += 1
        task_id = self._bar.add_task(description, total=total)
        try:
            yield _RichTask(self._bar, task_id)
        finally:
            self._bar.remove_task(task_id)
            self._open -= 1
            if self._open == 0:
                self._bar.stop()
