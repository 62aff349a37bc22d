"""Naming a model without loading it (no torch import): what was asked, what was built."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for on the command line."""

    model: str | None = None  # open_clip name, hf-hub:org/repo, or a model-config JSON path
    pretrained: str | None = None  # tag, hf-hub:org/repo, weights file, "none", or None = default


@dataclass(frozen=True)
class ModelId:
    """What an index or checkpoint records: enough to load the same model again."""

    name: str  # registered open_clip architecture, hf-hub:org/repo, or absolute config path
    pretrained: str  # tag, hf-hub id, absolute weights path, or "none"
