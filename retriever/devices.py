"""Which accelerators this machine has, told cheaply (no torch or FAISS import)."""

from __future__ import annotations

import os


def gpu_visible() -> bool:
    """A CUDA GPU, told without importing FAISS or torch. With one, readers search with FAISS
    on the GPU instead."""
    return os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES") != ""
