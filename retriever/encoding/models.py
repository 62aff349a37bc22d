"""Loading open_clip models: names, config files, pretrained tags, hf-hub ids and checkpoints.

Everything that builds a model goes through `load_model`, so `index`, `search`, `train` and `eval`
resolve `--model` / `--pretrained` the same way, and a checkpoint written by `retriever train`
loads through the same path as any other weights file.

Resolution of `ModelSpec(model, pretrained)`:
  pretrained is a retriever checkpoint  -> architecture and preprocessing from the checkpoint
  pretrained is another file            -> `model` architecture + that state dict
  pretrained "none"                     -> `model` architecture, random weights (seeded)
  pretrained "hf-hub:org/repo"          -> config and weights from the hub (`model` is ignored)
  pretrained a tag                      -> open_clip's tag for `model`, cached or downloaded
  pretrained None                       -> the default tag for `model`, random for config files
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch

from index.atomic import replacing
from retriever.encoding.specs import ModelId, ModelSpec
from retriever.errors import CheckpointError, ModelMismatch, ModelNotFound, WeightsUnavailable

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
RANDOM = "none"
CHECKPOINT_FORMAT = "retriever-checkpoint"
CHECKPOINT_VERSION = 1
# Random weights are seeded so two processes building `--pretrained none` get the same model
# (an index built with random weights stays searchable; benchmarks compare identical compute).
RANDOM_SEED = 0
# A weights host that does not answer within this is treated as offline: fail in seconds, not
# after huggingface_hub's minute of retries.
PROBE_TIMEOUT_S = 3.0

_BUNDLED_CONFIGS = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_BUNDLED_CONFIGS)


@dataclass
class LoadedModel:
    model: torch.nn.Module  # open_clip CLIP / CustomTextCLIP, eval mode, on `device`
    preprocess: Callable[[Any], torch.Tensor]  # PIL image -> (3, H, W) for inference
    train_preprocess: Callable[[Any], torch.Tensor]  # same, with open_clip's train augmentation
    tokenizer: Any  # open_clip tokenizer: list[str] -> (n, context_length) int64
    arch: str  # the name open_clip knows the architecture by
    config: dict[str, Any]  # open_clip model config (embed_dim, vision_cfg, text_cfg)
    model_id: ModelId
    device: torch.device
    extra: dict[str, Any] = field(default_factory=dict)  # checkpoint metadata (training record)

    @property
    def dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(spec: ModelSpec, device: torch.device | None = None) -> LoadedModel:
    """Build the model `spec` names; see the module docstring for the resolution rules."""
    device = device or default_device()
    pretrained = spec.pretrained
    if pretrained and pretrained != RANDOM and not pretrained.startswith("hf-hub:"):
        path = Path(pretrained).expanduser()
        if path.is_file():
            return _load_file(spec.model, path, device)
        if _looks_like_path(pretrained):
            raise CheckpointError(
                f"checkpoint {pretrained} does not exist: pass an existing file to --pretrained"
            )
    if pretrained and pretrained.startswith("hf-hub:"):
        return _load_hub(pretrained, device)
    model = spec.model or DEFAULT_MODEL
    if model.startswith("hf-hub:"):
        return _load_hub(model, device)
    arch, config_path = _resolve_arch(model)
    name = str(config_path) if config_path else arch
    if pretrained is None:
        pretrained = _default_tag(arch) if config_path is None else RANDOM
    if pretrained == RANDOM:
        print(f"note: {name} built with random weights (--pretrained none)", file=sys.stderr)
        torch.manual_seed(RANDOM_SEED)
        return _build(arch, ModelId(name, RANDOM), device)
    return _load_tag(arch, pretrained, device)


def model_fingerprint(loaded: LoadedModel) -> str:
    """sha256 of the architecture config and every weight: two models with one fingerprint
    make the same vectors. An index records it, so a config or weights file edited in place
    (same name, same path) is refused instead of mixing two spaces. ~0.4 s for ViT-B-32."""
    digest = hashlib.sha256(json.dumps(loaded.config, sort_keys=True).encode())
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


# --- resolution helpers -----------------------------------------------------------------------


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _resolve_arch(model: str) -> tuple[str, Path | None]:
    """open_clip architecture name for `model`; config files are registered under their stem."""
    if model.endswith(".json") or Path(model).is_file():
        path = Path(model).expanduser().resolve()
        if not path.is_file():
            raise ModelNotFound(f"model config {model} does not exist: pass an existing JSON file")
        cfg = _read_config(path)
        return _register(path.stem, cfg), path
    if model not in open_clip.list_models():
        raise ModelNotFound(
            f"unknown model {model!r}: pass an open_clip name (see `python -c "
            f"\"import open_clip; print(open_clip.list_models())\"`) or a model-config JSON path"
        )
    return model, None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelNotFound(f"model config {path} is not readable JSON ({err})") from err
    cfg = cfg.get("model_cfg", cfg)
    if not all(key in cfg for key in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ModelNotFound(
            f"model config {path} lacks embed_dim/vision_cfg/text_cfg: use an open_clip config"
        )
    return cfg


_registry_dir: Path | None = None


def _register(arch: str, cfg: dict[str, Any]) -> str:
    """Make `cfg` known to open_clip as `arch` (a differing built-in of that name is kept)."""
    known = open_clip.get_model_config(arch)
    if known == cfg:
        return arch
    if known is not None:
        digest = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]
        arch = f"{arch}-{digest}"
        if open_clip.get_model_config(arch) == cfg:
            return arch
    global _registry_dir
    if _registry_dir is None:
        _registry_dir = Path(tempfile.mkdtemp(prefix="retriever-configs-"))
    target = _registry_dir / f"{arch}.json"
    target.write_text(json.dumps(cfg))
    open_clip.add_model_config(target)
    return arch


def _default_tag(arch: str) -> str:
    if arch == DEFAULT_MODEL:
        return DEFAULT_PRETRAINED
    tags = open_clip.list_pretrained_tags_by_model(arch)
    return tags[0] if tags else RANDOM


# --- builders ---------------------------------------------------------------------------------


def _build(
    arch: str,
    model_id: ModelId,
    device: torch.device,
    weights: str | None = None,
    preprocess_cfg: dict[str, Any] | None = None,
) -> LoadedModel:
    pp = preprocess_cfg or {}
    model, train_pp, val_pp = open_clip.create_model_and_transforms(
        arch,
        pretrained=weights,
        device=device,
        image_mean=pp.get("mean"),
        image_std=pp.get("std"),
        image_interpolation=pp.get("interpolation"),
        image_resize_mode=pp.get("resize_mode"),
        weights_only=True,
    )
    model.eval()
    config = open_clip.get_model_config(arch)
    if config is None:  # hf-hub models are not registered by name
        config = open_clip.get_model_config(model_id.name)
    return LoadedModel(
        model=model,
        preprocess=val_pp,
        train_preprocess=train_pp,
        tokenizer=open_clip.get_tokenizer(
            arch if arch in open_clip.list_models() else model_id.name
        ),
        arch=arch,
        config=config,
        model_id=model_id,
        device=device,
    )


def _load_file(model: str | None, path: Path, device: torch.device) -> LoadedModel:
    path = path.resolve()
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        if path.suffix == ".safetensors":
            return _load_state_file(model, path, device)
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(err).__name__}): pass a file written by "
            f"`retriever train` or an open_clip state dict"
        ) from err
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        return _load_retriever_checkpoint(model, path, payload, device)
    return _load_state_file(model, path, device)


def _load_retriever_checkpoint(
    model: str | None, path: Path, payload: dict[str, Any], device: torch.device
) -> LoadedModel:
    cfg = payload["model_cfg"]
    arch = _register(payload["arch"], cfg)
    if model is not None:
        wanted, _ = _resolve_arch(model)
        if open_clip.get_model_config(wanted) != cfg:
            raise ModelMismatch(
                f"checkpoint {path} holds a {payload['arch']} model, not {model}: "
                f"drop --model (the checkpoint describes itself)"
            )
    loaded = _build(arch, ModelId(arch, str(path)), device,
                    preprocess_cfg=payload.get("preprocess_cfg"))
    try:
        loaded.model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit its own config: {err}") from err
    loaded.model.to(device).eval()
    loaded.extra = dict(payload.get("extra", {}))
    return loaded


def _load_state_file(model: str | None, path: Path, device: torch.device) -> LoadedModel:
    """A plain open_clip state dict (e.g. open_clip_pytorch_model.bin); --model names the arch."""
    arch, config_path = _resolve_arch(model or DEFAULT_MODEL)
    try:
        return _build(arch, ModelId(str(config_path or arch), str(path)), device, weights=str(path))
    except (RuntimeError, AssertionError, KeyError, ValueError) as err:  # open_clip uses all four
        raise CheckpointError(
            f"weights {path} do not fit {model or DEFAULT_MODEL}: pass the matching --model ({err})"
        ) from err


def _load_tag(arch: str, tag: str, device: torch.device) -> LoadedModel:
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none published"
        raise WeightsUnavailable(
            f"{arch} has no pretrained tag {tag!r} (known: {tags}); "
            f"pass a known tag or a local weights file to --pretrained"
        )
    cached = _cached_weights(cfg)
    model_id = ModelId(arch, tag)
    if cached is None:
        _require_online(_weights_url(cfg), f"{arch} {tag}")
        return _build(arch, model_id, device, weights=tag)
    return _build(arch, model_id, device, weights=str(cached), preprocess_cfg=cfg)


def _load_hub(hub_id: str, device: torch.device) -> LoadedModel:
    from huggingface_hub import constants, try_to_load_from_cache

    repo = hub_id.removeprefix("hf-hub:")
    cached = try_to_load_from_cache(repo, "open_clip_config.json")
    if not isinstance(cached, str):
        _require_online(constants.ENDPOINT, hub_id)
    try:
        return _build(hub_id, ModelId(hub_id, hub_id), device)
    except RuntimeError as err:
        raise WeightsUnavailable(f"cannot load {hub_id} from the hub ({err})") from err


def _cached_weights(cfg: dict[str, Any]) -> Path | None:
    """Local path of a tag's weights if huggingface_hub or open_clip's URL cache holds them."""
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors",
                                             "open_clip_pytorch_model.bin"]
        for name in names:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str):
                return Path(hit)
    url = cfg.get("url", "")
    if url:
        local = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if local.is_file():
            return local
    return None


def _weights_url(cfg: dict[str, Any]) -> str:
    if cfg.get("hf_hub"):
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    return str(cfg.get("url", ""))


def _require_online(url: str, what: str) -> None:
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
