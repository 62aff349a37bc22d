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
        speed = self._bar.tasks[self._index()].speed  # per second, over rich's recent window
        if speed:
            self._bar.update(self._id, rate=f"{speed:.1f}/s")

    def _index(self) -> int:
        return next(i for i, t in enumerate(self._bar.tasks) if t.id == self._id)


class RichProgress:
    """Bars on stderr; quiet when stderr is not a terminal. A stage without a total (a model
    export, a FAISS build) is a spinner with its description; one with a total shows done/total,
    the rate, elapsed time and time left."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True, highlight=False)
        rate = TextColumn("{task.fields[rate]}")
        self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), rate, TimeElapsedColumn(), TextColumn("left"),
                             TimeRemainingColumn(), console=console,
                             disable=not console.is_terminal, transient=True)
        self._open = 0  # stages currently open

    def log(self, line: str) -> None:
        """A line on stderr above the bars (never glued to one), as plain text."""
        self._bar.console.print(line, markup=False, highlight=False)

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Task]:
        """A bar for one stage; stages may nest (the display lives while any is open)."""
        if self._open == 0:
            self._bar.start()
        self._open += 1
        task_id = self._bar.add_task(description, total=total, rate="")
        try:
            yield _RichTask(self._bar, task_id)
        finally:
            self._bar.remove_task(task_id)
            self._open -= 1
            if self._open == 0:
                self._bar.stop()
