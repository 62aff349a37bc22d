"""Where an index lives, found without opening it (no SQLAlchemy, no FAISS: the CLI's first
step, also when a running server answers the query).

Each index records the folders it covers in `<index>/roots.json` ({"roots": [absolute paths]}),
and a per-user registry, `$XDG_DATA_HOME/retriever/indexes.json` ({"indexes": {index folder:
[roots]}}), maps every index to its roots, so `search` from inside any indexed folder finds
its index wherever it lives (as rclip does). Both are written atomically after each run, the
registry under a lock (`indexes.json.lock`), and read with retriever.jsonfile's bounded reader.
A damaged registry is never silently replaced: it is kept aside (`indexes.json.damaged-...`)
and rebuilt from the roots.json of the indexes it still names.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retriever.atomic import replacing
from retriever.errors import IndexNotFound, RetrieverError, RetrieverWarning, SmallFileError
from retriever.jsonfile import MAX_BYTES, open_regular, read_json

if TYPE_CHECKING:
    from index.records import ModelRecord
    from retriever.settings import Settings

INDEX_DIRNAME = ".retriever"
STORE_FILE = "store.db"
ROOTS_FILE = "roots.json"
REGISTRY_FILE = "indexes.json"
JSON_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"')  # a string literal, escapes and all


def index_dir_for(roots: Sequence[Path], db: Path | None = None) -> Path:
    """Where `index` writes: `db` (--db or $RETRIEVER_DB), else <first folder>/.retriever."""
    return db if db is not None else roots[0] / INDEX_DIRNAME


def find_index_dir(db: Path | None = None, start: Path | None = None,
                   store_url: str | None = None, *, data_dir: Path) -> Path:
    """Where `search`/`info` read: `db` (--db or $RETRIEVER_DB), or the nearest .retriever/
    upwards, or the index the registry in `data_dir` (`Settings.data_dir`) says covers the
    folder. With the store elsewhere (`store_url`: --store or $RETRIEVER_STORE_URL) the folder
    has no store.db."""
    if db is not None:
        if not (db / STORE_FILE).is_file() and not store_url:
            raise IndexNotFound(f"no index in {db}: run `retriever index FOLDER --db {db}`")
        return db
    here = (start or Path.cwd()).resolve()
    walked = next((folder / INDEX_DIRNAME for folder in (here, *here.parents)
                   if (folder / INDEX_DIRNAME / STORE_FILE).is_file()), None)
    known = registered(data_dir)
    covering = sorted({(len(root.parts), index) for index, roots in known.items()
                       for root in roots if (here == root or root in here.parents)
                       and (index / ROOTS_FILE).is_file()}, reverse=True)
    found = walked or (covering[0][1] if covering else None)  # else the innermost root's
    if found is not None:
        others = sorted({index for _, index in covering} - {found})
        if others:
            warnings.warn(RetrieverWarning(
                f"{len(others) + 1} indexes cover {here}: using {found} (not "
                f"{', '.join(map(str, others))}); pass --db to choose"), stacklevel=2)
        return found
    names = ", ".join(str(root) for roots in known.values() for root in roots)
    raise IndexNotFound(
        f"no index covers {here} (indexed folders: {names or 'none yet'}): run `retriever "
        f"index FOLDER` first, cd into an indexed folder, or pass --db DIR"
    )


def registry_path(data_dir: Path) -> Path:
    """The registry of indexes in the user's data folder (`Settings.data_dir`)."""
    return data_dir / REGISTRY_FILE


def registered(data_dir: Path, current: Path | None = None) -> dict[Path, tuple[Path, ...]]:
    """index folder -> the folders it covers, from the user's registry in `data_dir` ({} if
    there is none).
    A damaged one (unreadable, not JSON, another shape) is kept aside and rebuilt from the
    indexes' own roots.json: those it still names, and `current` (the index in use); a
    `RetrieverWarning` says so."""
    path = registry_path(data_dir)
    try:
        return _entries(path, read_json(path))
    except FileNotFoundError:
        return {}
    except SmallFileError:
        with _registry_lock(path):  # read again: another process may have rebuilt it meanwhile
            return _read_or_rebuild(path, current)


def _read_or_rebuild(path: Path, current: Path | None) -> dict[Path, tuple[Path, ...]]:
    """registered()'s answer, the lock on the registry at `path` held."""
    try:
        return _entries(path, read_json(path))
    except FileNotFoundError:
        return {}
    except SmallFileError as damaged:
        return _rebuilt(path, damaged.problem, current)


def _entries(path: Path, value: Any) -> dict[Path, tuple[Path, ...]]:
    """The registry's {"indexes": {index: [roots]}} as paths; SmallFileError for any other
    shape."""
    entries = value.get("indexes") if isinstance(value, dict) else None
    if not isinstance(entries, dict) or not all(
            isinstance(roots, list) and all(isinstance(r, str) for r in roots)
            for roots in entries.values()):
        raise SmallFileError(path, 'not {"indexes": {index folder: [folders]}}')
    return {Path(index): tuple(Path(r) for r in roots) for index, roots in entries.items()}


def _rebuilt(path: Path, problem: str, current: Path | None) -> dict[Path, tuple[Path, ...]]:
    """A registry of every index found (`_salvaged` from the damaged file, and `current`) with
    its recorded roots, written in place of the damaged file, which is kept beside it."""
    found = [*_salvaged(path), *([current.resolve()] if current is not None else [])]
    entries = {index: roots for index in dict.fromkeys(found)
               if (roots := recorded_roots(index))}
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.rename(path, aside)
        kept = f"kept as {aside}"
    except OSError as error:
        kept = f"not kept aside ({error.strerror})"
    with suppress(OSError):  # a read-only home: the rebuilt list still serves this command
        _write_json(path, {"indexes": {str(k): [str(r) for r in v] for k, v in entries.items()}})
    warnings.warn(RetrieverWarning(
        f"the index registry {path} was damaged ({problem}): {kept}; rebuilt from the "
        f"roots.json of {len(entries)} index{'' if len(entries) == 1 else 'es'} found"),
        stacklevel=2)
    return entries


def _salvaged(path: Path) -> list[Path]:
    """The index folders a damaged registry still names: each absolute path among its JSON
    strings (its first MAX_BYTES, if it can be opened as a file) holding a roots.json."""
    try:
        with open_regular(path) as handle:
            text = handle.read(MAX_BYTES).decode("utf-8", "replace")
    except (OSError, SmallFileError):
        return []
    found = []
    for literal in JSON_STRING.findall(text):
        with suppress(ValueError, RecursionError):
            name = json.loads(f'"{literal}"')
            if os.path.isabs(name) and (Path(name) / ROOTS_FILE).is_file():
                found.append(Path(name))
    return found


@contextmanager
def _registry_lock(registry: Path) -> Iterator[None]:
    """Held while the registry is read, changed and written: two `retriever index` runs at once
    each keep the other's entry. Without a writable data folder, no lock (nothing is written).
    Not reentrant (flock is per open file): taken once, by registered() or register()."""
    path = registry.with_name(REGISTRY_FILE + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_RDWR | O_NONBLOCK: a FIFO planted there opens at once (and flock then fails)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError:
        yield
        return
    try:
        with suppress(OSError):  # a file flock refuses: unlocked, as without a data folder
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with replacing(path) as tmp:  # atomic: a reader sees the old file or the new, never half
        Path(tmp).write_text(json.dumps(data, indent=1))


def recorded_roots(index_dir: Path) -> tuple[Path, ...]:
    """The folders `index_dir` was last built from (its roots.json), or () if unknown."""
    try:
        roots = read_json(index_dir / ROOTS_FILE)["roots"]
    except (OSError, SmallFileError, KeyError, TypeError):
        return ()
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        return ()
    return tuple(Path(r) for r in roots)


def register(index_dir: Path, roots: Sequence[Path], data_dir: Path) -> None:
    """Record `roots` in `index_dir` and in the registry in `data_dir` (`Settings.data_dir`).
    Best effort: a registry that cannot be written (a read-only home) leaves `--db` and walking
    up from the roots working."""
    index_dir = index_dir.resolve()
    names = [str(Path(r).resolve()) for r in roots]
    with suppress(OSError):
        _write_json(index_dir / ROOTS_FILE, {"roots": names})
    registry = registry_path(data_dir)
    with _registry_lock(registry):
        known = {str(k): [str(r) for r in v]
                 for k, v in _read_or_rebuild(registry, index_dir).items()}
        known[str(index_dir)] = names
        with suppress(OSError):
            _write_json(registry, {"indexes": known})


def forget(index_dir: Path, data_dir: Path) -> Path:
    """Drop `index_dir` (as given, or resolved) from the registry in `data_dir`; the index
    itself is left as it is. Returns the entry dropped; `IndexNotFound` names the registered
    ones when it is not there."""
    candidates = {index_dir, Path(os.path.abspath(index_dir))}
    with suppress(OSError):
        candidates.add(index_dir.resolve())
    dropped = _unregister(data_dir, lambda index: index in candidates)
    if not dropped:
        known = ", ".join(str(index) for index in registered(data_dir)) or "none"
        raise IndexNotFound(f"{index_dir} is not a registered index (registered: {known}): "
                            f"see `retriever indexes`")
    return dropped[0]


def prune(data_dir: Path) -> list[Path]:
    """Drop from the registry in `data_dir` every index whose folder is gone (no roots.json,
    what `retriever indexes` shows as "(gone)"); the indexes dropped."""
    return _unregister(data_dir, lambda index: not still_there(index))


def still_there(index_dir: Path) -> bool:
    """Whether a registered index is still there (its roots.json): `indexes` marks the others
    "(gone)" and `prune` forgets them."""
    return (index_dir / ROOTS_FILE).is_file()


def _unregister(data_dir: Path, drop: Callable[[Path], bool]) -> list[Path]:
    """Remove the registry entries `drop` picks, under the registry's lock; those removed.
    Unlike register(), a registry that cannot be written is an error here: the user asked."""
    registry = registry_path(data_dir)
    with _registry_lock(registry):
        known = _read_or_rebuild(registry, None)
        dropped = sorted(index for index in known if drop(index))
        kept = {str(k): [str(r) for r in v] for k, v in known.items() if k not in dropped}
        try:
            if dropped:
                _write_json(registry, {"indexes": kept})
        except OSError as error:
            raise RetrieverError(f"cannot write the index registry {registry} "
                                 f"({error.strerror}): nothing was forgotten") from None
    return dropped


def where_things_live(directory: Path, model: ModelRecord | None, store: str,
                      settings: Settings) -> dict[str, str]:
    """What `info` shows: the folders indexed, the store (its file, or its URL without the
    password), the model's export and the registry (under the user's folders in `settings`)."""
    from retriever.encoding.backends import export_dir, user_exports
    from retriever.encoding.specs import ModelId

    export = export_dir(user_exports(settings), ModelId(model.name, model.pretrained)) \
        if model else None
    return {
        "roots": ", ".join(map(str, recorded_roots(directory))) or "(not recorded)",
        "store": store,
        # os.path.isdir: False, not PermissionError, for another user's cache
        "export": f"{export}{'' if os.path.isdir(export) else ' (none: torch, or not yet made)'}"
        if export else "(no model yet)",
        "registry": str(registry_path(settings.data_dir))}
