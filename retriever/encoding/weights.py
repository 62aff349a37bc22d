"""Where a pretrained tag's weights come from, told without importing torch or open_clip.

open_clip's registry of pretrained tags lives in a module that imports torch (~2 s of a cold
start), so a copy of what matters here ships as pretrained_tags.json: per architecture, its tags
in open_clip's order, each with its Hugging Face repo and/or URL. `check_available` uses it to
refuse an uncached tag while offline before anything heavy is imported; a tag the copy does not
know (a newer open_clip) is left to `retriever.encoding.models`, which checks it the same way
after importing open_clip. tests/test_models.py keeps the copy equal to the installed registry;
`python -m retriever.encoding.weights` writes it again.

    {"ViT-B-32": {"laion2b_s34b_b79k": {"hf_hub": "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/",
                                         "url": ""}, ...}, ...}
"""

from __future__ import annotations

import json
import os
import socket
import threading
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from retriever.encoding.specs import ModelSpec
from retriever.errors import WeightsUnavailable

TAGS_FILE = Path(__file__).with_name("pretrained_tags.json")
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
RANDOM = "none"
# where open_clip's download_pretrained_from_url keeps weights it fetched by URL
CLIP_CACHE = "~/.cache/clip"
# A weights host that does not answer within this is treated as offline: fail in seconds, not
# after huggingface_hub's minute of retries.
PROBE_TIMEOUT_S = 3.0


@cache
def known_tags() -> dict[str, dict[str, dict[str, str]]]:
    return dict(json.loads(TAGS_FILE.read_text()))


def default_tag(arch: str, tags: list[str]) -> str:
    """The tag `--pretrained` defaults to for `arch`, given its tags in open_clip's order."""
    if arch == DEFAULT_MODEL:
        return DEFAULT_PRETRAINED
    return tags[0] if tags else RANDOM


def check_available(spec: ModelSpec) -> None:
    """Raise `WeightsUnavailable` for a pretrained tag whose weights are neither cached nor
    reachable. Only for a plain open_clip name and tag known to pretrained_tags.json; every
    other spec (files, hf-hub ids, config JSONs, `none`) passes, to be resolved when loaded."""
    arch = spec.model or DEFAULT_MODEL
    tags = known_tags().get(arch)
    if tags is None:
        return
    tag = spec.pretrained or default_tag(arch, list(tags))
    cfg = tags.get(tag)
    if cfg is None or cached_weights(cfg) is not None:
        return
    require_online(weights_url(cfg), f"{arch} {tag}")


def cached_weights(cfg: dict[str, Any], hub_cache: Path | None = None,
                   clip_cache: Path | None = None) -> Path | None:
    """Local path of a tag's weights if huggingface_hub or open_clip's URL cache holds them.
    `hub_cache`: None for huggingface_hub's own (HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME, as it
    reads them); `clip_cache`: None for CLIP_CACHE. Looks at files only, never the network."""
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors",
                                             "open_clip_pytorch_model.bin"]
        for name in names:
            hit = try_to_load_from_cache(repo, name, cache_dir=hub_cache)
            if isinstance(hit, str):
                return Path(hit)
    url = cfg.get("url", "")
    if url:
        local = (clip_cache or Path(CLIP_CACHE).expanduser()) / os.path.basename(url)
        if local.is_file():
            return local
    return None


def weights_url(cfg: dict[str, Any]) -> str:
    if cfg.get("hf_hub"):
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    return str(cfg.get("url", ""))


def require_online(url: str, what: str) -> None:
    """Fail in seconds when the host of `url` cannot be reached, not after minutes of retries."""
    parsed = urlparse(url)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    if not _reachable(host, port):
        raise WeightsUnavailable(
            f"weights for {what} are not cached and {host} cannot be reached: download them on "
            f"a connected machine and pass the file: --pretrained /path/to/open_clip_model.bin"
        )


def _reachable(host: str, port: int) -> bool:
    result: list[bool] = []

    def probe() -> None:  # getaddrinfo has no timeout of its own, hence the thread
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 0.5)
    return bool(result and result[0])


def registry() -> dict[str, dict[str, dict[str, str]]]:
    """open_clip's registry as pretrained_tags.json holds it (imports open_clip)."""
    import open_clip

    found: dict[str, dict[str, dict[str, str]]] = {}
    for arch, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        found.setdefault(arch, {})[tag] = {"hf_hub": cfg.get("hf_hub", ""),
                                           "url": cfg.get("url", "")}
    return found


if __name__ == "__main__":
    TAGS_FILE.write_text(json.dumps(registry(), indent=1, sort_keys=False) + "\n")
    print(f"wrote {TAGS_FILE}")
