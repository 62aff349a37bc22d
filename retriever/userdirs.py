"""Per-user folders (XDG base directories): where retriever keeps what is not the user's media.

    $XDG_DATA_HOME/retriever/indexes.json   (default ~/.local/share) the registry of indexes
    $XDG_CACHE_HOME/retriever/onnx/<key>/   (default ~/.cache) models exported to ONNX, shared
                                            by every index; safe to delete (re-exported)
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "retriever"


def data_dir() -> Path:
    return _base("XDG_DATA_HOME", "~/.local/share") / APP


def cache_dir() -> Path:
    return _base("XDG_CACHE_HOME", "~/.cache") / APP


def _base(variable: str, default: str) -> Path:
    value = os.environ.get(variable, "")
    # the spec: a relative value is invalid and ignored
    return Path(value) if os.path.isabs(value) else Path(default).expanduser()
