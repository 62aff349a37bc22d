"""The tables cli.py prints besides search results (retriever/present/tables.py), rendered as a
terminal would show them: `demo`'s searches."""

from __future__ import annotations

from rich.console import Console

from retriever.present.tables import demo_results
from retriever.search.query import Result


def rendered(table) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def test_demo_results_show_the_score_the_file_name_and_its_caption_or_passage():
    """One row a result: the score to 3 places, the file's name without its folders, the
    image's caption or the text's passage; text from files is shown, never read as markup
    or as terminal controls."""
    results = [
        Result(1, "/media/photos/red-circle-01.jpg", 0.98765, "image", 0, None,
               "a red circle [bold]on the left[/bold]"),
        Result(2, "/media/notes/note-07.txt", 0.5, "text", 2, "green squares\x1b[2J", None),
    ]
    text = rendered(demo_results("a red circle", results))
    lines = [line for line in text.splitlines() if "0.988" in line or "0.500" in line]
    assert "a red circle" in text.splitlines()[0]  # the title: the query
    assert len(lines) == 2
    assert "red-circle-01.jpg" in lines[0] and "/media/photos" not in text
    assert "a red circle [bold]on the left[/bold]" in lines[0]  # markup kept as text
    assert "note-07.txt" in lines[1] and "green squares" in lines[1]
    assert "\x1b" not in text  # the escape made visible, not sent to the terminal
