"""Checks that the folders keep the architecture they show. Run it: python -m tests.check_layout

1. Storage has one door: only `index/` and `retriever/library/` (the collection on disk) touch
   a `.store` attribute; everything else goes through `Collection`'s methods.
2. Imports go one way: a module imports only from its own layer or the layers below it
   (LAYERS, lowest first), at the top of the file or inside a function alike.

Prints one line per violation and exits 1 if there is any; tests/test_layout.py runs it.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE_OWNERS = ("index/", "retriever/library/")
# Lowest first. A module belongs to the longest prefix that names it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("retriever.errors", "retriever.progress", "retriever"),
    ("index",),
    ("retriever.media",),
    ("retriever.encoding",),
    ("retriever.library",),
    ("retriever.search", "retriever.training"),
    ("retriever.demo",),
    ("cli",),
)


def source_files() -> Iterator[Path]:
    yield ROOT / "cli.py"
    for package in ("retriever", "index"):
        yield from sorted((ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for layer, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            named = module == prefix or module.startswith(prefix + ".")
            if named and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer)
    return None if best is None else best[1]


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


def violations() -> list[str]:
    found = []
    for path in source_files():
        relative = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), relative)
        if not relative.startswith(STORE_OWNERS):
            found += [f"{relative}:{line}: touches .store outside index/ and "
                      f"retriever/library/: use a Collection method" for line in
                      store_touches(tree)]
        module = module_name(path)
        own = layer_of(module)
        for line, name in imported(tree, module, path.name == "__init__.py"):
            theirs = layer_of(name)
            if own is not None and theirs is not None and theirs > own:
                found.append(f"{relative}:{line}: {module} imports {name}, a layer above it")
    return found


def main() -> int:
    found = violations()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
