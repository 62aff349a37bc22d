"""The folders keep the architecture they show (tests/check_layout.py, runnable by anyone)."""

from __future__ import annotations

import ast

from .check_layout import ROOT, layer_of, source_files, violations


def test_storage_has_one_door_and_imports_go_one_way():
    assert violations() == []


def test_every_module_belongs_to_a_layer():
    from .check_layout import module_name

    assert [module_name(p) for p in source_files() if layer_of(module_name(p)) is None] == []


def test_the_check_finds_what_it_looks_for(tmp_path, monkeypatch):
    """A module outside the storage layer touching .store, and an import upwards, are both
    reported: the check can fail."""
    import tests.check_layout as check

    bad = ROOT / "retriever" / "media" / "_layout_probe.py"
    bad.write_text("from retriever.search.query import search\n\n"
                   "def f(collection):\n    return collection.store.counts()\n")
    try:
        found = check.violations()
    finally:
        bad.unlink()
    assert any("_layout_probe.py:4: touches .store" in line for line in found)
    assert any("imports retriever.search.query, a layer above" in line for line in found)


def test_no_function_is_longer_than_sixty_lines():
    long = []
    for path in [*source_files(), *sorted((ROOT / "tests").glob("*.py")),
                 *sorted((ROOT / "bench").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {lines}")
    assert long == []
