"""Checkpoint files: writing retriever's own, reading any weights file without running code, and
checking what it holds before a model is built from it; the fingerprint of a model's config
and weights.

A retriever checkpoint is one torch.save'd dict (loadable with `weights_only=True`):
    format "retriever-checkpoint", version 1, arch (a plain name, ARCH_NAME), model_cfg (an
    open_clip config), preprocess_cfg (mean/std/interpolation/resize_mode), state_dict
    (tensors by name), extra (the training record, plain JSON-able values)
Any other file is an open_clip state dict (.pt/.bin, or .safetensors).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import open_clip
import torch

from retriever.atomic import replacing
from retriever.encoding.architectures import ARCH_NAME, config_problem
from retriever.encoding.specs import ModelId
from retriever.errors import CheckpointError

if TYPE_CHECKING:  # only for types: models.py builds from what this module reads
    from retriever.encoding.models import LoadedModel

CHECKPOINT_FORMAT = "retriever-checkpoint"
CHECKPOINT_VERSION = 1
# What open_clip and torch raise building a model from a config, or loading weights into it,
# that does not fit (open_clip uses all of these; safetensors its own)
MISFITS = (RuntimeError, AssertionError, KeyError, ValueError, TypeError, AttributeError,
           IndexError, ZeroDivisionError)
# the end of every message about a weights file that cannot be used
CHECKPOINT_FIX = "pass a file written by `retriever train` or an open_clip state dict"


def model_fingerprint(loaded: LoadedModel) -> str:
    """sha256 of the architecture config and every weight: two models with one fingerprint
    make the same vectors. An index records it, so a config or weights file edited in place
    (same name, same path) is refused instead of mixing two spaces. ~0.4 s for ViT-B-32."""
    digest = hashlib.sha256(json.dumps(loaded.config, sort_keys=True).encode())
    if loaded.file_preprocess:  # a config file's preprocess_cfg changes the vectors too
        digest.update(json.dumps(loaded.file_preprocess, sort_keys=True).encode())
    for name, tensor in sorted(loaded.model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: Path, loaded: LoadedModel, extra: dict[str, Any] | None = None) -> None:
    """Write a self-describing checkpoint: architecture config, preprocessing and weights.

    Loadable with `torch.load(weights_only=True)`: only dicts, lists, numbers, strings, tensors.
    Written to a temp file and renamed, so a crash never leaves half a checkpoint. From then
    on `loaded` is that checkpoint: its `model_id` names the file, so an index built with it
    records the trained weights, not the weights training started from.
    """
    state = {k: v.detach().cpu() for k, v in loaded.model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": loaded.arch,
        "model_cfg": loaded.config,
        "preprocess_cfg": _jsonable(open_clip.get_model_preprocess_cfg(loaded.model)),
        "state_dict": state,
        "extra": extra or {},
    }
    with replacing(path) as tmp:
        torch.save(payload, tmp)
    loaded.model_id = ModelId(loaded.arch, str(path.resolve()))


def read_weights(path: Path) -> Any:
    """What the weights file holds (torch.load with weights_only: tensors and plain data, no
    code); a .safetensors file, its tensors' names (its header: read whole by open_clip)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as tensors:  # checks the header against the size
                return dict.fromkeys(tensors.keys(), True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types for a bad file
        raise CheckpointError(f"cannot read checkpoint {path} ({type(err).__name__}: "
                              f"{brief(err)}): {CHECKPOINT_FIX}") from err


def state_dict_problem(payload: Any) -> str | None:
    """Why `payload` is no open_clip state dict (a dict of tensors by name, or one held under
    "state_dict"), or None."""
    if isinstance(payload, dict) and "state_dict" in payload:
        payload = payload["state_dict"]
    if not isinstance(payload, dict):
        return f"holds a {type(payload).__name__}, not a state dict"
    if not payload or not all(isinstance(k, str) for k in payload):
        return "holds no tensors by name"
    return None


def checkpoint_problem(payload: dict[str, Any]) -> str | None:
    """Why a retriever checkpoint's fields cannot be used, or None."""
    arch = payload.get("arch")
    if not isinstance(arch, str) or not ARCH_NAME.fullmatch(arch):
        return f"arch {str(arch)[:60]!r} is not a plain model name"
    problem = config_problem(payload.get("model_cfg"))
    if problem is not None:
        return f"model_cfg {problem}"
    state = payload.get("state_dict")
    if not isinstance(state, dict) or state_dict_problem(state) is not None:
        return "state_dict is not a dict of tensors by name"
    for key in ("preprocess_cfg", "extra"):
        if not isinstance(payload.get(key) or {}, dict):
            return f"{key} is not a dict"
    return _preprocess_problem(payload.get("preprocess_cfg") or {})


def _preprocess_problem(cfg: dict[str, Any]) -> str | None:
    """Why a checkpoint's normalisation (per RGB channel) cannot be used, or None."""
    for key in ("mean", "std"):
        value = cfg.get(key)
        if value is not None and not (isinstance(value, list | tuple) and len(value) == 3 and all(
                isinstance(v, int | float) and math.isfinite(v) and (key == "mean" or v > 0)
                for v in value)):
            return f"preprocess_cfg {key} {str(value)[:40]!r} is not 3 numbers"
    return None


def brief(err: BaseException) -> str:
    """An exception's message on one line, at most 300 characters (torch's name every key)."""
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
