"""A model config's Hugging Face sources: the tokenizer (text_cfg.hf_tokenizer_name) and the
text model's config (text_cfg.hf_model_name) of SigLIP, SigLIP 2 and multilingual models.

Each is a local folder (a tokenizer or transformers config saved with `save_pretrained`) or a
hub id ("timm/ViT-B-16-SigLIP", "xlm-roberta-base"), never a URL. Before transformers is asked
for one (`retriever.encoding.models`), `require_sources` checks that it can be had: a folder
that exists, a hub id cached by huggingface_hub, or a hub that can be reached and is not turned
off (HF_HUB_OFFLINE, as huggingface_hub read it). Otherwise `TextSourceUnavailable`, one line
naming what to fetch on a connected machine, in seconds instead of transformers' minute of
retries and its traceback. No torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from retriever.errors import TextSourceUnavailable

# text_cfg key -> the role its source plays (TextSourceUnavailable.role)
ROLES = {"hf_tokenizer_name": "tokenizer", "hf_model_name": "text model"}
# files transformers reads first from a hub repo, by role: one cached means the repo was fetched
FIRST_FILES = {"tokenizer": ("tokenizer_config.json", "tokenizer.json"),
               "text model": ("config.json",)}
# a hub id: "name" or "org/name" (huggingface_hub's repo-id characters)
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")


def sources(cfg: dict[str, Any]) -> dict[str, str]:
    """role -> source of the Hugging Face sources `cfg` (an open_clip model config) names."""
    text = cfg.get("text_cfg") if isinstance(cfg, dict) else None
    if not isinstance(text, dict):
        return {}
    return {role: text[key] for key, role in ROLES.items() if text.get(key)}


def source_problem(cfg: dict[str, Any]) -> str | None:
    """Why `cfg`'s Hugging Face sources cannot be named so (architectures.config_problem)."""
    text = cfg.get("text_cfg", {})
    for key in ROLES:
        value = text.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or "://" in value or value.startswith(("hf-hub:",
                                                                              "local-dir:")):
            return (f"text_cfg.{key} {str(value)[:60]!r} is not a local folder nor a hub id "
                    f"(org/name)")
        if not _is_folder_name(value) and not HUB_ID.fullmatch(value):
            return f"text_cfg.{key} {value[:60]!r} is not a local folder nor a hub id (org/name)"
    return None


def require_sources(cfg: dict[str, Any], model: str) -> None:
    """Raise TextSourceUnavailable for a source of `cfg` that cannot be had now."""
    for role, source in sources(cfg).items():
        if _is_folder_name(source):
            if not Path(source).expanduser().is_dir():
                raise TextSourceUnavailable(source, role, model, "missing folder")
            continue
        if _cached(source, role):
            continue
        reason = _unreachable()
        if reason is not None:
            raise TextSourceUnavailable(source, role, model, reason)


def _is_folder_name(value: str) -> bool:
    """A path (absolute, ~, ./, ../, or a folder that exists), not a hub id."""
    return value.startswith(("/", "~", "./", "../")) or Path(value).is_dir()


def _cached(repo: str, role: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in FIRST_FILES[role])


def _unreachable() -> str | None:
    """Why the hub cannot be asked now, or None when it can."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    from retriever.encoding.weights import PROBE_TIMEOUT_S, _reachable

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    host = urlparse(str(constants.ENDPOINT)).hostname or "huggingface.co"
    if not _reachable(host, 443):
        return f"{host} cannot be reached (waited {PROBE_TIMEOUT_S:.0f} s)"
    return None
