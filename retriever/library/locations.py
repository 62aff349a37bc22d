"""Where an index lives, found without opening it (no SQLAlchemy, no FAISS: the CLI's first
step, also when a running server answers the query).

Each index records the folders it covers in `<index>/roots.json` ({"roots": [absolute paths]}),
and a per-user registry, `$XDG_DATA_HOME/retriever/indexes.json` ({"indexes": {index folder:
[roots]}}), maps every index to its roots, so `search` from inside any indexed folder finds
its index wherever it lives (as rclip does). Both are written atomically after each run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from index.atomic import replacing
from retriever.errors import IndexNotFound
from retriever.userdirs import data_dir

if TYPE_CHECKING:
    from index.store import ModelRecord

INDEX_DIRNAME = ".retriever"
STORE_FILE = "store.db"
ENV_DB = "RETRIEVER_DB"  # index folder, instead of <first folder>/.retriever
ENV_STORE_URL = "RETRIEVER_STORE_URL"  # any SQLAlchemy URL, instead of <index folder>/store.db
ROOTS_FILE = "roots.json"
REGISTRY_FILE = "indexes.json"


def index_dir_for(roots: Sequence[Path], db: Path | None = None) -> Path:
    """Where `index` writes: --db, else $RETRIEVER_DB, else <first folder>/.retriever."""
    if db is not None:
        return db
    if os.environ.get(ENV_DB):
        return Path(os.environ[ENV_DB])
    return roots[0] / INDEX_DIRNAME


def find_index_dir(db: Path | None = None, start: Path | None = None,
                   store_url: str | None = None) -> Path:
    """Where `search`/`info` read: --db, $RETRIEVER_DB, or the nearest .retriever/ upwards.
    With the store elsewhere (`store_url`, $RETRIEVER_STORE_URL) the folder has no store.db."""
    elsewhere = bool(store_url or os.environ.get(ENV_STORE_URL))
    if db is not None or os.environ.get(ENV_DB):
        found = index_dir_for([Path(".")], db)
        if not (found / STORE_FILE).is_file() and not elsewhere:
            raise IndexNotFound(f"no index in {found}: run `retriever index FOLDER --db {found}`")
        return found
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / INDEX_DIRNAME / STORE_FILE).is_file():
            return folder / INDEX_DIRNAME
    known = registered()
    covering = [(len(root.parts), index) for index, roots in known.items() for root in roots
                if (here == root or root in here.parents) and (index / ROOTS_FILE).is_file()]
    if covering:
        return max(covering)[1]  # the index of the innermost root
    names = ", ".join(str(root) for roots in known.values() for root in roots)
    raise IndexNotFound(
        f"no index covers {here} (indexed folders: {names or 'none yet'}): run `retriever "
        f"index FOLDER` first, cd into an indexed folder, or pass --db DIR"
    )


def registry_path() -> Path:
    return data_dir() / REGISTRY_FILE


def registered() -> dict[Path, tuple[Path, ...]]:
    """index folder -> the folders it covers, from the user's registry (empty if unreadable)."""
    try:
        entries = json.loads(registry_path().read_text())["indexes"]
        return {Path(index): tuple(Path(r) for r in roots) for index, roots in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def recorded_roots(index_dir: Path) -> tuple[Path, ...]:
    """The folders `index_dir` was last built from (its roots.json), or () if unknown."""
    try:
        return tuple(Path(r) for r in json.loads((index_dir / ROOTS_FILE).read_text())["roots"])
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def register(index_dir: Path, roots: Sequence[Path]) -> None:
    """Record `roots` in `index_dir` and in the registry. Best effort: a registry that cannot
    be written (a read-only home) leaves `--db` and walking up from the roots working."""
    index_dir = index_dir.resolve()
    names = [str(Path(r).resolve()) for r in roots]
    known = {str(k): [str(r) for r in v] for k, v in registered().items()}
    known[str(index_dir)] = names
    for path, data in ((index_dir / ROOTS_FILE, {"roots": names}),
                       (registry_path(), {"indexes": known})):
        try:
            with replacing(path) as tmp:
                Path(tmp).write_text(json.dumps(data, indent=1))
        except OSError:
            continue


def where_things_live(directory: Path, model: ModelRecord | None, store: str) -> dict[str, str]:
    """What `info` shows: the folders indexed, the store (its file, or its URL without the
    password), the model's export, the registry."""
    from retriever.encoding.backends import export_dir
    from retriever.encoding.specs import ModelId

    export = export_dir(None, ModelId(model.name, model.pretrained)) if model else None
    return {
        "roots": ", ".join(map(str, recorded_roots(directory))) or "(not recorded)",
        "store": store,
        # os.path.isdir: False, not PermissionError, for another user's cache
        "export": f"{export}{'' if os.path.isdir(export) else ' (none: torch, or not yet made)'}"
        if export else "(no model yet)",
        "registry": str(registry_path())}
