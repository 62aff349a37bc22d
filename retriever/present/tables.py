"""The CLI's tables other than search results (those are retriever.present.output's): metrics
of `train`, `evaluate` and `demo`, `demo`'s searches, and the groups of `duplicates`. Rich
tables, printed by cli.py through `output.unbounded` (never cut when piped)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

from rich.table import Table

from retriever.present.output import plain


def metrics_table(first: dict, second: dict | None = None, *names: str, title: str = "") -> Table:
    """One row per (task, metric) of `first`; a column per metrics dict given (`names`:
    their headers, e.g. "untrained", "trained"), "-" where the second lacks a row."""
    columns = names or ("value",)
    table = Table("task", "metric", *columns, title=title or None)
    shown = [shown_metrics(m) for m in (first, second) if m]
    for task, rows in shown[0].items():
        for metric in rows:
            table.add_row(task, metric, *(s.get(task, {}).get(metric, "-") for s in shown))
    return table


def shown_metrics(metrics: dict) -> dict[str, dict[str, str]]:
    """{row group: {metric: value as read}}: retrieval both ways and/or classification (its
    own output, or under "classification" in training's held-out metrics)."""
    from retriever.training.classification import Accuracy
    from retriever.training.evaluation import DIRECTIONS, recalls

    shown = ({DIRECTIONS[d]: r.shown() for d, r in recalls(metrics).items()}
             if "text_to_image" in metrics else {})
    classes = metrics.get("classification", metrics)
    if "acc1" in classes:
        shown["classification"] = Accuracy.from_json(classes).shown()
    if "captions" in metrics:  # how many queries each way was scored over
        shown["queries"] = {"captions (text->image)": str(metrics["captions"]),
                            "images (image->text)": str(metrics["images"])}
    return shown


def demo_results(label: str, results: Sequence[Any]) -> Table:
    """`demo`'s searches: one table a query (`label`), each result's score, file name and
    caption or passage (retriever.search.query's Results)."""
    table = Table("score", "path", "caption / passage", title=label)
    for r in results:
        table.add_row(f"{r.score:.3f}", plain(PurePath(r.path).name), plain(r.caption or r.passage))
    return table


def before_after(before: dict, after: dict) -> str:
    """`train`'s one line: each direction's held-out R@1 (and classification top-1) before ->
    after, e.g. "held-out: text->image R@1 3.0% -> 41.0%, image->text R@1 2.5% -> 38.0%"."""
    first, last = shown_metrics(before), shown_metrics(after)
    parts = [f"{task} {metric} {rows[metric]} -> {last.get(task, {}).get(metric, '-')}"
             for task, rows in first.items() for metric in ("R@1", "top-1") if metric in rows]
    return "held-out: " + (", ".join(parts) or "nothing measured")


def duplicates_table(groups: Sequence[Any]) -> Table:
    """`retriever duplicates`: each group's copies, best first, with what tells them apart
    (retriever.library.duplicates' groups)."""
    table = Table("group", "score", "pixels", "bytes", "path", "note")
    table.columns[4].overflow = "fold"  # a long path wraps on a terminal; it is never cut
    for number, group in enumerate(groups, 1):
        for i, c in enumerate(group.copies):
            note = "best copy" if i == 0 else ""
            if c.same_bytes_as:
                note = f"same bytes as {c.same_bytes_as}"
            table.add_row(str(number) if i == 0 else "", f"{c.score:.3f}",
                          f"{c.width}x{c.height}" if c.width else "?", f"{c.size:,}",
                          plain(c.path), plain(note))
    return table
