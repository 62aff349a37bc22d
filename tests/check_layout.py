"""Checks that the folders keep the architecture they show. Run it: python -m tests.check_layout

1. Storage has one door: only `index/` and the collection (retriever/library/collection.py)
   touch a `.store` attribute; everything else goes through the collection's typed reads.
2. Imports go one way: a module imports only from its own layer or the layers below it
   (LAYERS, lowest first), at the top of the file or inside a function alike.
3. Every module belongs to a layer.
4. Configuration is read at the edge: only EDGES read an environment variable (`os.environ`
   in any form, `os.getenv`, `from os import environ`); the library takes values as
   parameters (retriever.settings). `**os.environ` in a dict display hands the whole
   environment on to a child process (media.isolation's worker) and is not a read; passing
   `os.environ` itself anywhere (`Settings.from_environ(os.environ)`, `env=os.environ`) is.
5. No ORM: nothing imports `sqlalchemy.orm` (or `sqlalchemy.ext.declarative`, or `orm` from
   `sqlalchemy`): mapped classes and Session reads are gone; the store's SQL is Core text.
6. Small pieces: no function over MAX_FUNCTION_LINES lines (tests/ and bench/ included), no
   module of retriever/ or index/ over MAX_MODULE_LINES lines.
7. One text per statement: a SQL statement (a string or f-string that starts with one of
   SQL_VERBS) is written once in retriever/, index/ and cli.py, whitespace and case aside; a
   second use names the first (index/sql.py holds the store's).

Prints one line per violation and exits 1 if there is any; tests/test_layout.py runs it.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE_OWNERS = ("index/", "retriever/library/collection.py")
# Where an environment variable may be read: a module (every function in it), or the named
# functions of a module (qualified names) that start a process of ours on its own machine.
EDGES: dict[str, tuple[str, ...]] = {
    "cli.py": (),  # each command reads Settings once; click reads the options' envvar=
    "retriever/settings.py": (),  # Settings.from_environ: the one reader
    # a Ray actor, perhaps on another machine: its own GPU and export cache ("auto" backend)
    "retriever/ingest/ray_engine.py": ("_EncoderActor.__init__",),
    # a process `launch` starts: torchrun's RANK/WORLD_SIZE/LOCAL_RANK are set for it alone
    "retriever/training/distributed.py": ("launched_process",),
}
ENV_NAMES = ("environ", "environb", "getenv", "getenvb")
ORM_MODULES = ("sqlalchemy.orm", "sqlalchemy.ext.declarative")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450
SQL_VERBS = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "CREATE", "ALTER", "DROP",
             "PRAGMA", "COPY", "LOCK")
_STATEMENT = re.compile(rf"\s*(?:{'|'.join(SQL_VERBS)})\s+\S", re.IGNORECASE)
# Lowest first. "name" is that one module; "name.*" is a package: it and every module under it.
# The top-level modules of retriever/ are listed one by one: a new one belongs to no layer (and
# test_layout fails) until it is placed here.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("retriever", "retriever.errors", "retriever.progress", "retriever.userdirs",
     "retriever.jsonfile", "retriever.atomic", "retriever.devices", "retriever.settings"),
    ("index.*",),
    ("retriever.media.*",),
    ("retriever.encoding.*",),
    ("retriever.library.*",),
    ("retriever.ingest.*", "retriever.search.*", "retriever.training.*"),
    ("retriever.present.*",),
    ("retriever.server.*", "retriever.mcp.*"),
    ("retriever.demo",),
    ("cli",),
)


def source_files(root: Path = ROOT) -> Iterator[Path]:
    yield root / "cli.py"
    for package in ("retriever", "index"):
        yield from sorted((root / package).rglob("*.py"))


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    for layer, names in enumerate(LAYERS):
        for name in names:
            package = name.removesuffix(".*")
            if module == package or (name != package and module.startswith(package + ".")):
                return layer
    return None


def unlayered(root: Path = ROOT) -> list[str]:
    """The modules under `root` that belong to no layer."""
    return [module_name(p, root) for p in source_files(root)
            if layer_of(module_name(p, root)) is None]


def imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in `tree`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module or ""]).strip(".")
            else:
                name = node.module or ""
            yield node.lineno, name


def store_touches(tree: ast.AST) -> Iterator[int]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "store":
            yield node.lineno


def scoped(tree: ast.AST, scope: str = "") -> Iterator[tuple[str, ast.AST]]:
    """(qualified name of the enclosing function or class, "" at module level; node) for every
    node of `tree`."""
    for child in ast.iter_child_nodes(tree):
        yield scope, child
        named = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        yield from scoped(child, f"{scope}.{child.name}".lstrip(".") if named else scope)


def environment_reads(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, enclosing qualified name) of every read of the process environment."""
    handed_on = {id(value) for node in ast.walk(tree) if isinstance(node, ast.Dict)
                 for key, value in zip(node.keys, node.values, strict=True) if key is None}
    for scope, node in scoped(tree):
        if _environment_read(node, handed_on):
            yield node.lineno, scope


def _environment_read(node: ast.AST, handed_on: set[int]) -> bool:
    """`os.environ` (or environb, getenv, getenvb) not handed on whole, or an import of one."""
    if isinstance(node, ast.Attribute):
        return (node.attr in ENV_NAMES and isinstance(node.value, ast.Name)
                and node.value.id == "os" and id(node) not in handed_on)
    return isinstance(node, ast.ImportFrom) and node.module == "os" and any(
        alias.name in ENV_NAMES for alias in node.names)


def orm_imports(tree: ast.AST) -> Iterator[int]:
    for line, name in imported(tree, "", False):
        if name.startswith(ORM_MODULES):
            yield line
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "sqlalchemy" and any(
                alias.name == "orm" for alias in node.names):
            yield node.lineno


def long_functions(tree: ast.AST) -> Iterator[tuple[int, str, int]]:
    """(line, name, lines) of every function over MAX_FUNCTION_LINES lines."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                yield node.lineno, node.name, lines


def sql_statements(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, text with its whitespace collapsed) of every SQL statement written in `tree`; an
    f-string's fields read as `{}`; docstrings ("Update the files ...") are prose."""
    inner = {id(value) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
             for value in node.values}
    inner |= {id(node.body[0].value) for node in ast.walk(tree)
              if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                            | ast.AsyncFunctionDef)
              and node.body and isinstance(node.body[0], ast.Expr)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inner:
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        else:
            continue
        if _STATEMENT.match(text):
            yield node.lineno, " ".join(text.split())


def repeated_sql(trees: dict[str, ast.AST]) -> list[str]:
    """Rule 7 over the modules' parsed `trees` (relative path -> tree): each statement written a
    second (third, ...) time, with where it was first."""
    places: dict[str, list[str]] = defaultdict(list)
    # the store's statements first, index/sql.py's before all: a repeat elsewhere names them
    for relative in sorted(trees, key=lambda r: (r != "index/sql.py", not r.startswith("index/"))):
        for line, text in sql_statements(trees[relative]):
            places[text.casefold()].append(f"{relative}:{line}")
    return [f"{where}: repeats the SQL of {first}: name it once and use the name"
            for first, *again in places.values() for where in again]


def edge_allows(relative: str, scope: str) -> bool:
    if relative not in EDGES:
        return False
    functions = EDGES[relative]
    return not functions or any(scope == f or scope.startswith(f + ".") for f in functions)


def file_violations(path: Path, root: Path, text: str, tree: ast.AST) -> list[str]:
    """Rules 1, 2, 4, 5 and 6 for one module of retriever/, index/ or cli.py (its `text`,
    parsed: `tree`)."""
    relative = path.relative_to(root).as_posix()
    found = []
    if not relative.startswith(STORE_OWNERS):
        found += [f"{relative}:{line}: touches .store outside index/ and the collection: use "
                  f"Collection.reads" for line in store_touches(tree)]
    module = module_name(path, root)
    own = layer_of(module)
    for line, name in imported(tree, module, path.name == "__init__.py"):
        theirs = layer_of(name)
        if own is not None and theirs is not None and theirs > own:
            found.append(f"{relative}:{line}: {module} imports {name}, a layer above it")
    found += [f"{relative}:{line}: reads the environment outside the edge: take the value "
              f"as a parameter (retriever.settings)" for line, scope in environment_reads(tree)
              if not edge_allows(relative, scope)]
    found += [f"{relative}:{line}: imports the ORM: state the SQL once, run it with Core"
              for line in orm_imports(tree)]
    found += [f"{relative}:{line}: {name} is {lines} lines, over {MAX_FUNCTION_LINES}"
              for line, name, lines in long_functions(tree)]
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES and relative != "cli.py":  # the CLI: one function a command
        found.append(f"{relative}: {lines} lines, over {MAX_MODULE_LINES}: split it by job")
    return found


def violations(root: Path = ROOT) -> list[str]:
    found = []
    trees: dict[str, ast.AST] = {}
    for path in source_files(root):
        relative, text = path.relative_to(root).as_posix(), path.read_text()
        trees[relative] = ast.parse(text, relative)
        found += file_violations(path, root, text, trees[relative])
    for folder in ("tests", "bench"):  # rule 6's function length only
        for path in sorted((root / folder).glob("*.py")):
            relative = path.relative_to(root).as_posix()
            found += [f"{relative}:{line}: {name} is {lines} lines, over {MAX_FUNCTION_LINES}"
                      for line, name, lines in long_functions(ast.parse(path.read_text()))]
    return found + repeated_sql(trees)


def main() -> int:
    found = violations() + [f"{module}: in no layer (tests/check_layout.py LAYERS)"
                            for module in unlayered()]
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
