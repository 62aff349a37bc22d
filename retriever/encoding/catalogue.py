"""`retriever models`: the architectures open_clip knows, by family, with their pretrained tags,
which tags are cached on this machine and how large they are. Told without importing torch or
open_clip, without building a model and without the network (~0.2 s):

    architectures   the model-config JSONs in open_clip's package folder (read as files, the
                    package is not imported) and the bundled ones (retriever-tiny)
    family          `retriever.encoding.families.family_of`
    tags            pretrained_tags.json (`retriever.encoding.weights`: open_clip's registry)
    cached          `weights.cached_weights`: huggingface_hub's cache, then open_clip's URL
                    cache (~/.cache/clip), looked up as files
    bytes           of the cached weights file
    parameters      counted from a cached .safetensors file's header (exact), else estimated
                    from the config (`architectures.estimated_parameters`); None when the config
                    names a timm image tower or a Hugging Face text tower without weights here

One line per architecture, or one JSON object per line (`ModelEntry.to_json`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from retriever.encoding.architectures import estimated_parameters
from retriever.encoding.families import FAMILIES, family_of
from retriever.encoding.weights import CLIP_CACHE, cached_weights, known_tags
from retriever.errors import BadSetting, SmallFileError
from retriever.jsonfile import read_json

BUNDLED_CONFIGS = Path(__file__).parent / "model_configs"


@dataclass(frozen=True)
class Caches:
    """Where pretrained weights are looked for."""

    hub: Path | None = None  # huggingface_hub's cache; None: its own (HF_HUB_CACHE / HF_HOME)
    clip: Path | None = None  # open_clip's URL downloads; None: CLIP_CACHE


@dataclass(frozen=True)
class TagEntry:
    tag: str
    source: str  # "hf-hub:org/repo" or the URL the weights come from
    path: Path | None  # the cached weights file, None when not cached
    bytes: int | None  # its size


@dataclass(frozen=True)
class ModelEntry:
    name: str  # as --model takes it
    family: str  # one of FAMILIES
    parameters: int | None  # see the module docstring
    counted: str  # "weights" (exact, a cached file), "config" (estimated) or "" (unknown)
    tags: tuple[TagEntry, ...]  # open_clip's order: the first is --pretrained's default

    def to_json(self) -> dict[str, Any]:
        return {"model": self.name, "family": self.family, "parameters": self.parameters,
                "parameters_from": self.counted or None,
                "tags": [{"tag": t.tag, "source": t.source, "cached": t.path is not None,
                          "path": str(t.path) if t.path else None, "bytes": t.bytes}
                         for t in self.tags]}


def catalogue(caches: Caches, family: str | None = None,
              cached_only: bool = False) -> list[ModelEntry]:
    """Every architecture (of `family`, if given), sorted by family then name; `cached_only`:
    only those with a cached tag, and only their cached tags. BadSetting for an unknown
    family."""
    if family is not None and family not in FAMILIES:
        raise BadSetting("family", repr(family), f"use one of {', '.join(FAMILIES)}")
    tags = known_tags()
    configs = model_configs()
    entries = []
    for name in sorted(set(configs) | set(tags)):
        if family is not None and family_of(name) != family:
            continue
        found = tuple(_tag(tag, cfg, caches) for tag, cfg in tags.get(name, {}).items())
        if cached_only:
            found = tuple(t for t in found if t.path is not None)
            if not found:
                continue
        parameters, counted = _parameters(configs.get(name), found)
        entries.append(ModelEntry(name, family_of(name), parameters, counted, found))
    return sorted(entries, key=lambda e: (FAMILIES.index(e.family), e.name.lower()))


def model_configs() -> dict[str, dict[str, Any]]:
    """Architecture name -> open_clip model config, from open_clip's config folder (found
    without importing open_clip) and the bundled one. A config that cannot be read is left
    out (it cannot be built either)."""
    folders = [BUNDLED_CONFIGS]
    spec = find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        folders.insert(0, Path(next(iter(spec.submodule_search_locations))) / "model_configs")
    found: dict[str, dict[str, Any]] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            try:
                cfg = read_json(path)
            except (OSError, SmallFileError):
                continue
            if isinstance(cfg, dict):
                found[path.stem] = cfg
    return found


def _tag(tag: str, cfg: dict[str, str], caches: Caches) -> TagEntry:
    hub = cfg.get("hf_hub", "").rstrip("/")
    source = f"hf-hub:{hub}" if hub else cfg.get("url", "")
    try:
        path = cached_weights(cfg, caches.hub, caches.clip)
        size = path.stat().st_size if path is not None else None
    except OSError:  # an unreadable cache holds nothing usable
        path = size = None
    return TagEntry(tag, source, path, size)


def _parameters(config: dict[str, Any] | None,
                tags: tuple[TagEntry, ...]) -> tuple[int | None, str]:
    for tag in tags:
        if tag.path is not None and tag.path.suffix == ".safetensors":
            counted = safetensors_parameters(tag.path)
            if counted is not None:
                return counted, "weights"
    if config is None or config.get("vision_cfg", {}).get("timm_model_name") or \
            config.get("text_cfg", {}).get("hf_model_name"):
        return None, ""
    try:
        return estimated_parameters(config), "config"
    except (ValueError, KeyError, TypeError):
        return None, ""


def safetensors_parameters(path: Path) -> int | None:
    """Numbers held in a .safetensors file, read from its header (the tensors are not read);
    None when the file is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "np") as tensors:
            names = tensors.keys()  # a safe_open is not iterable
            return sum(math.prod(tensors.get_slice(name).get_shape()) for name in names)
    except (OSError, SafetensorError, ValueError):
        return None


def default_caches(home_clip_cache: str = CLIP_CACHE) -> Caches:
    """huggingface_hub's cache as it reads its variables (HF_HUB_CACHE, HF_HOME,
    XDG_CACHE_HOME), and open_clip's URL cache."""
    from huggingface_hub import constants

    return Caches(Path(constants.HF_HUB_CACHE), Path(home_clip_cache).expanduser())


def human_count(n: int | None) -> str:
    """151277313 -> "151.3 M"; None -> "?"."""
    if n is None:
        return "?"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def describe(entry: ModelEntry) -> str:
    """One line: family, name, parameters, tags (a cached one with * and its size)."""
    tags = ", ".join(f"{t.tag}* ({human_bytes(t.bytes or 0)})" if t.path else t.tag
                     for t in entry.tags) or "no pretrained tags (--pretrained none or a file)"
    return f"{entry.family:<12} {entry.name:<32} {human_count(entry.parameters):>9}  {tags}"


def summary(entries: list[ModelEntry], caches: Caches) -> str:
    cached = [t for e in entries for t in e.tags if t.path is not None]
    total = sum(t.bytes or 0 for t in cached)
    places = f"{caches.hub or 'the Hugging Face cache'} and {caches.clip or CLIP_CACHE}"
    return (f"{len(entries)} models in {len({e.family for e in entries})} families, "
            f"{sum(len(e.tags) for e in entries)} pretrained tags, {len(cached)} cached "
            f"({human_bytes(total)}) in {places}; * = cached")
