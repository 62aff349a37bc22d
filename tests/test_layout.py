"""The folders keep the architecture they show (tests/check_layout.py, runnable by anyone).

Each rule is proved able to fail on a small tree planted under tmp_path (never the source
tree), and the real tree passes them all."""

from __future__ import annotations

from . import check_layout
from .check_layout import MAX_FUNCTION_LINES, MAX_MODULE_LINES, unlayered, violations


def test_the_tree_keeps_every_rule():
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


def found_in(root, name: str) -> list[str]:
    """The violations reported for the module `name` of the tree at `root`."""
    return [line for line in violations(root) if line.startswith(name)]


def test_a_module_outside_every_layer_is_reported(tmp_path):
    """A new top-level module of retriever/, a new package, a new top-level package: in no
    layer until LAYERS places them; those it places are not reported."""
    root = probe_tree(tmp_path, {"retriever/newthing.py": "", "retriever/newpkg/__init__.py": "",
                                 "retriever/newpkg/part.py": "", "retriever/errors.py": "",
                                 "retriever/settings.py": "", "retriever/media/scan.py": "",
                                 "other/__init__.py": ""})
    assert sorted(unlayered(root)) == ["retriever.newpkg", "retriever.newpkg.part",
                                       "retriever.newthing"]


def test_an_upward_import_is_reported(tmp_path):
    root = probe_tree(tmp_path, {"retriever/media/probe.py":
                                 "from retriever.search.query import search\n\n"
                                 "def f():\n    from ..library import collection\n"})
    found = found_in(root, "retriever/media/probe.py")
    assert any(":1: retriever.media.probe imports retriever.search.query, a layer above" in line
               for line in found)
    assert any(":4: retriever.media.probe imports retriever.library, a layer above" in line
               for line in found)


def test_store_is_touched_only_by_index_and_the_collection(tmp_path):
    """Anywhere else, library/ included, `.store` is reported; index/ and the collection
    may."""
    touch = "def f(collection):\n    return collection.store.counts()\n"
    root = probe_tree(tmp_path, {"retriever/media/probe.py": touch,
                                 "retriever/library/thumbnails.py": touch,
                                 "retriever/library/collection.py": touch,
                                 "index/store.py": touch})
    found = [line for line in violations(root) if "touches .store" in line]
    assert sorted(line.split(": ")[0] for line in found) == [
        "retriever/library/thumbnails.py:2", "retriever/media/probe.py:2"]


def test_the_environment_is_read_only_at_the_edge(tmp_path):
    """os.environ in any form, os.getenv and `from os import environ` are reads outside the
    edge; `**os.environ` hands the environment on to a child; cli.py and retriever/settings.py
    read freely, an edge module only in its named functions."""
    reads = ("import os\nfrom os import environ\n\n"
             "def f(settings):\n"
             "    a = os.environ['A']\n"  # 5
             "    b = os.environ.get('B')\n"  # 6
             "    c = os.getenv('C')\n"  # 7
             "    d = settings.from_environ(os.environ)\n"  # 8
             "    child = {**os.environ, 'PATH': '/bin'}\n"  # 9: handed on, not read
             "    return a, b, c, d, child, environ\n")
    root = probe_tree(tmp_path, {"retriever/media/probe.py": reads, "retriever/settings.py": reads,
                                 "cli.py": reads, "retriever/training/distributed.py":
                                 reads + "\ndef launched_process():\n    return os.environ\n"})
    lines = [line.split(": ")[0] for line in violations(root) if "reads the environment" in line]
    assert [line for line in lines if line.startswith("retriever/media/")] == [
        f"retriever/media/probe.py:{n}" for n in (2, 5, 6, 7, 8)]
    assert not [line for line in lines if line.startswith(("cli.py", "retriever/settings.py"))]
    assert "retriever/training/distributed.py:5" in lines  # not the edge function
    assert "retriever/training/distributed.py:13" not in lines  # launched_process


def test_the_orm_is_imported_nowhere(tmp_path):
    root = probe_tree(tmp_path, {
        "index/probe.py": "from sqlalchemy.orm import Session\nimport sqlalchemy.orm\n"
                          "from sqlalchemy import orm, select\n"
                          "from sqlalchemy.ext.declarative import declarative_base\n",
        "index/core.py": "from sqlalchemy import select, text\n"})
    found = [line.split(": ")[0] for line in violations(root) if "imports the ORM" in line]
    assert found == [f"index/probe.py:{n}" for n in (1, 2, 4, 3)]


def test_long_functions_and_modules_are_reported(tmp_path):
    body = "".join(f"    x{n} = {n}\n" for n in range(MAX_FUNCTION_LINES - 2))
    fits, over = f"def fits():\n{body}    return 0\n", f"async def over():\n{body}    x = 1\n" \
        "    return x\n"
    root = probe_tree(tmp_path, {"retriever/media/probe.py": fits + over,
                                 "tests/test_probe.py": over,
                                 "index/big.py": "x = 1\n" * MAX_MODULE_LINES,
                                 "index/bigger.py": "x = 1\n" * (MAX_MODULE_LINES + 1),
                                 "cli.py": "x = 1\n" * (MAX_MODULE_LINES + 1)})
    found = violations(root)
    assert [line for line in found if "lines, over" in line] == [
        f"retriever/media/probe.py:{MAX_FUNCTION_LINES + 1}: over is "
        f"{MAX_FUNCTION_LINES + 1} lines, over {MAX_FUNCTION_LINES}",
        f"index/bigger.py: {MAX_MODULE_LINES + 1} lines, over {MAX_MODULE_LINES}: split it "
        "by job",
        f"tests/test_probe.py:1: over is {MAX_FUNCTION_LINES + 1} lines, over "
        f"{MAX_FUNCTION_LINES}"]


def test_a_sql_statement_written_twice_is_reported(tmp_path):
    """Across modules and within one, whitespace and case aside, f-strings alike, each repeat
    naming index/sql.py's text; a statement written once, a name used twice, and docstrings
    that start with a verb's word, twice, are not."""
    first = 'GET = "SELECT id FROM items WHERE path = :path"\n'
    root = probe_tree(tmp_path, {
        "index/sql.py": first + 'PRAGMA = f"PRAGMA page_size = {SIZE}"\nONE = "DELETE FROM tags"\n',
        "index/probe.py": "from index.sql import GET\n\ndef f(db, SIZE):\n"
                          "    db.run(GET)\n    db.run(GET)\n"
                          "    db.run('''SELECT id\n  FROM items   WHERE path = :path''')\n"
                          "    db.run(f'PRAGMA page_size = {SIZE}')\n"
                          "    return 'select a file to index'\n\n"
                          "def g():\n    \"\"\"Update the files.\"\"\"\n\n"
                          "def h():\n    \"\"\"Update the files.\"\"\"\n",
        "retriever/media/probe.py": 'AGAIN = "select id from items where path = :path"\n'})
    found = sorted(line for line in violations(root) if "repeats the SQL" in line)
    assert found == [
        "index/probe.py:6: repeats the SQL of index/sql.py:1: name it once and use the name",
        "index/probe.py:8: repeats the SQL of index/sql.py:2: name it once and use the name",
        "retriever/media/probe.py:1: repeats the SQL of index/sql.py:1: name it once and use "
        "the name"]


def test_the_edges_named_exist():
    """An edge that names a module or function no longer there would silently allow nothing:
    each is in the tree."""
    for relative, functions in check_layout.EDGES.items():
        source = (check_layout.ROOT / relative).read_text()
        for function in functions:
            assert f"def {function.split('.')[-1]}(" in source, (relative, function)
