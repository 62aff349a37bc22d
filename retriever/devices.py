"""Which accelerators this machine has, told cheaply (no torch or FAISS import)."""

from __future__ import annotations

import os


def gpu_visible(cuda_visible_devices: str | None) -> bool:
    """A CUDA GPU, told without importing FAISS or torch: the driver's device file, not hidden
    by `cuda_visible_devices` ($CUDA_VISIBLE_DEVICES, `Settings.cuda_visible_devices`: "" hides
    every GPU). With one, readers search with FAISS on the GPU instead."""
    return os.path.exists("/dev/nvidiactl") and cuda_visible_devices != ""
