"""Pictures in the terminal: inline thumbnails for kitty's graphics protocol and iTerm2's.

Detection reads the variables the terminal sets (`Settings.terminal`, read by the CLI); anything
else gets a message and no images.
A picture is drawn only from the indexed file as the server would serve it (`preview_png`).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retriever.library.collection import Collection

KITTY_CHUNK = 4096  # the kitty protocol carries at most 4096 base64 bytes per escape code
PREVIEW_SIZE = 160  # px, longest side: a few terminal rows


def terminal_protocol(env: Mapping[str, str]) -> str | None:
    """"kitty", "iterm2", or None when the terminal whose variables are `env` (TERM,
    TERM_PROGRAM, KITTY_WINDOW_ID, ITERM_SESSION_ID) shows no inline images."""
    if env.get("TERM") == "xterm-kitty" or "KITTY_WINDOW_ID" in env:
        return "kitty"
    if env.get("TERM_PROGRAM") in ("iTerm.app", "WezTerm") or "ITERM_SESSION_ID" in env:
        return "iterm2"
    return None


def inline_image(png: bytes, protocol: str) -> str:
    """The escape sequence that draws `png` at the cursor."""
    data = base64.standard_b64encode(png).decode("ascii")
    if protocol == "iterm2":
        return f"\x1b]1337;File=inline=1;size={len(png)};preserveAspectRatio=1:{data}\x07"
    chunks = [data[i : i + KITTY_CHUNK] for i in range(0, len(data), KITTY_CHUNK)] or [""]
    out = []
    for n, chunk in enumerate(chunks):
        more = 1 if n < len(chunks) - 1 else 0
        control = f"a=T,f=100,m={more}" if n == 0 else f"m={more}"  # f=100: PNG payload
        out.append(f"\x1b_G{control};{chunk}\x1b\\")
    return "".join(out)


def preview_png(collection: Collection, item_id: int) -> bytes | None:
    """Image item `item_id` as a small PNG (kitty draws PNG only), read from its file only
    while it is the indexed one (retriever.library.thumbnails.open_indexed); None otherwise."""
    from retriever.errors import ImageError, ItemNotFound
    from retriever.library.thumbnails import open_indexed
    from retriever.media.images import thumbnail_bytes

    try:
        _, handle = open_indexed(collection, item_id)
        with handle:
            return thumbnail_bytes(handle, PREVIEW_SIZE, "PNG")  # type: ignore[arg-type]
    except (ItemNotFound, ImageError, OSError):
        return None
