"""Where an index lives, found without opening it (no SQLAlchemy, no FAISS: the CLI's first
step, also when a running server answers the query)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from retriever.errors import IndexNotFound

INDEX_DIRNAME = ".retriever"
STORE_FILE = "store.db"
ENV_DB = "RETRIEVER_DB"  # index folder, instead of <first folder>/.retriever
ENV_STORE_URL = "RETRIEVER_STORE_URL"  # any SQLAlchemy URL, instead of <index folder>/store.db


def index_dir_for(roots: Sequence[Path], db: Path | None = None) -> Path:
    """Where `index` writes: --db, else $RETRIEVER_DB, else <first folder>/.retriever."""
    if db is not None:
        return db
    if os.environ.get(ENV_DB):
        return Path(os.environ[ENV_DB])
    return roots[0] / INDEX_DIRNAME


def find_index_dir(db: Path | None = None, start: Path | None = None) -> Path:
    """Where `search`/`info` read: --db, $RETRIEVER_DB, or the nearest .retriever/ upwards."""
    if db is not None or os.environ.get(ENV_DB):
        found = index_dir_for([Path(".")], db)
        if not (found / STORE_FILE).is_file() and not os.environ.get(ENV_STORE_URL):
            raise IndexNotFound(f"no index in {found}: run `retriever index FOLDER --db {found}`")
        return found
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / INDEX_DIRNAME / STORE_FILE).is_file():
            return folder / INDEX_DIRNAME
    raise IndexNotFound(
        f"no {INDEX_DIRNAME}/ index in {here} or its parents: run `retriever index FOLDER` "
        f"first, or pass --db DIR"
    )
