"""The folders keep the architecture they show (tests/check_layout.py, runnable by anyone)."""

from __future__ import annotations

import ast

from .check_layout import ROOT, source_files, unlayered, violations


def test_storage_has_one_door_and_imports_go_one_way():
    assert violations() == []


def test_every_module_belongs_to_a_layer():
    assert unlayered() == []


def probe_tree(root, modules: dict[str, str]):
    """A copy of the project's shape under `root`: cli.py, the two packages, and `modules`
    (path -> source)."""
    for path, source in {"cli.py": "", "retriever/__init__.py": "", "index/__init__.py": "",
                         "retriever/media/__init__.py": "", **modules}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(source)
    return root


def test_a_module_outside_every_layer_is_reported(tmp_path):
    """A new top-level module of retriever/, a new package, a new top-level package: in no
    layer until LAYERS places them; those it places are not reported."""
    root = probe_tree(tmp_path, {"retriever/newthing.py": "", "retriever/newpkg/__init__.py": "",
                                 "retriever/newpkg/part.py": "", "retriever/errors.py": "",
                                 "retriever/media/scan.py": "", "other/__init__.py": ""})
    assert sorted(unlayered(root)) == ["retriever.newpkg", "retriever.newpkg.part",
                                       "retriever.newthing"]


def test_the_check_finds_what_it_looks_for(tmp_path):
    """A module outside the storage layer touching .store, and an import upwards, are both
    reported: the check can fail. The probe is written under tmp_path, never the source tree."""
    root = probe_tree(tmp_path, {"retriever/media/_layout_probe.py":
                                 "from retriever.search.query import search\n\n"
                                 "def f(collection):\n    return collection.store.counts()\n"})
    found = violations(root)
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
