"""Per-user folders (XDG base directories): where retriever keeps what is not the user's media.

    $XDG_DATA_HOME/retriever/indexes.json   (default ~/.local/share) the registry of indexes
    $XDG_CACHE_HOME/retriever/onnx/<key>/   (default ~/.cache) models exported to ONNX, shared
                                            by every index; safe to delete (re-exported)

The variables are read by retriever.settings (`Settings.data_dir`, `Settings.cache_dir`).
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

APP = "retriever"


def user_dir(xdg_value: str, home: str | None, default: str) -> Path:
    """retriever's folder under the XDG base directory `xdg_value`, else under `home`/`default`
    (`home` None: the user's home in the password database, as os.path.expanduser does)."""
    # the spec: a relative value is invalid and ignored
    if os.path.isabs(xdg_value):
        return Path(xdg_value) / APP
    if home is None:
        home = pwd.getpwuid(os.getuid()).pw_dir
    return Path(home.rstrip("/") or "/") / default / APP  # HOME="": /.cache, as expanduser
