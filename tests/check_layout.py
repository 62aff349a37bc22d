"""Checks that the folders keep the architecture they show. Run it: python -m tests.check_layout

1. Storage has one door: only `index/` and `retriever/library/` (the collection on disk) touch
   a `.store` attribute; everything else goes through `Collection`'s methods.
2. Imports go one way: a module imports only from its own layer or the layers below it
   (LAYERS, lowest first), at the top of the file or inside a function alike.
3. Every module belongs to a layer.

Prints one line per violation and exits 1 if there is any; tests/test_layout.py runs it.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE_OWNERS = ("index/", "retriever/library/")
# Lowest first. "name" is that one module; "name.*" is a package: it and every module under it.
# The top-level modules of retriever/ are listed one by one: a new one belongs to no layer (and
# test_layout fails) until it is placed here.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("retriever", "retriever.errors", "retriever.progress", "retriever.userdirs",
     "retriever.jsonfile", "retriever.atomic", "retriever.devices"),
    ("index.*",),
    ("retriever.media.*",),
    ("retriever.encoding.*",),
    ("retriever.library.*",),
    ("retriever.ingest.*", "retriever.search.*", "retriever.training.*"),
    ("retriever.present.*",),
    ("retriever.server.*",),
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


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for path in source_files(root):
        relative = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(), relative)
        if not relative.startswith(STORE_OWNERS):
            found += [f"{relative}:{line}: touches .store outside index/ and "
                      f"retriever/library/: use a Collection method" for line in
                      store_touches(tree)]
        module = module_name(path, root)
        own = layer_of(module)
        for line, name in imported(tree, module, path.name == "__init__.py"):
            theirs = layer_of(name)
            if own is not None and theirs is not None and theirs > own:
                found.append(f"{relative}:{line}: {module} imports {name}, a layer above it")
    return found


def main() -> int:
    found = violations() + [f"{module}: in no layer (tests/check_layout.py LAYERS)"
                            for module in unlayered()]
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
