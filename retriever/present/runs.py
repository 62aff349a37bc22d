"""What `index`, `watch` and `serve --watch` print of an indexing run: the summary, the files
skipped or indexed in part, the types not indexed, and a watcher's one line per run."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from retriever.present.output import visible

if TYPE_CHECKING:
    from rich.console import Console

    from retriever.errors import IndexBusy, RetrieverError
    from retriever.ingest.options import IngestReport
    from retriever.ingest.run import IngestOutcome
    from retriever.ingest.watch import WatchRun


def skipped_and_noted(report: IngestReport) -> list[str]:
    """A line per file skipped, then per file indexed in part (a PDF's scanned pages without
    --ocr), as stderr shows them."""
    return ([f"skipped {visible(failure.reason)}" for failure in report.failures]
            + [visible(note) for note in report.notes])


def not_indexed(counts: dict[str, int]) -> list[str]:
    """['not indexed: 14 .pages, 3 .key'], or [] when nothing was left out (index, info)."""
    from retriever.ingest.options import not_indexed_line

    line = not_indexed_line(counts)
    return [visible(line)] if line else []


def indexed_summary(outcome: IngestOutcome, seconds: float) -> str:
    """`index`'s summary: what the run did, then what the index holds (and types left out)."""
    report, counts = outcome.report, outcome.counts
    return (
        f"encoded {report.images} images and {report.texts} text files ({report.passages} "
        f"passages); reused {report.reused}, touched {report.touched}, unchanged "
        f"{report.unchanged}, removed {report.removed}, failed {len(report.failures)}"
        + (f" (+{report.known_failures} known, unchanged)" if report.known_failures else "")
        + (f"; words read in {report.ocr_only} images indexed before (--ocr)"
           if report.ocr_only else "")
        + f" in {seconds:.1f} s\n{visible(str(outcome.directory))}: {counts.images} images, "
        f"{counts.texts} passages in {counts.files} files"
        + "".join(f"\n{line}" for line in not_indexed(report.not_indexed)))


class PrintedWatch:
    """`watch` and `serve --watch` tell each run in one line (and each file skipped) on `err`;
    `worded` words an error as the CLI does."""

    def __init__(self, err: Console, worded: Callable[[RetrieverError], str]) -> None:
        self.err, self.worded = err, worded

    def ran(self, run: WatchRun) -> None:
        report, counts = run.outcome.report, run.outcome.counts
        for line in skipped_and_noted(report):
            self.err.print(line, markup=False)
        what = ("caught up" if run.first else
                f"{'over ' if run.overflowed else ''}{run.changed} paths changed")
        gone = "".join(f"; {visible(str(root))} is gone: its files removed" for root in run.gone)
        self.err.print(
            f"{time.strftime('%H:%M:%S')} {what}: encoded {report.encoded}, reused "
            f"{report.reused}, touched {report.touched}, removed {report.removed}, failed "
            f"{len(report.failures)}{gone}; {counts.files} files indexed", markup=False)

    def waiting(self, busy: IndexBusy) -> None:
        held = str(busy).partition(": wait for it")[0]  # `index`'s fix (--wait) is not ours
        self.err.print(f"waiting: {visible(held)}; the changes are indexed once it is done",
                       markup=False)

    def failed(self, error: RetrieverError) -> None:
        self.err.print(f"error: watching stopped: {visible(self.worded(error))}", markup=False)
