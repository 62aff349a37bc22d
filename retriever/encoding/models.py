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
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import open_clip
import torch

from retriever.atomic import replacing
from retriever.encoding.specs import ModelId, ModelSpec
from retriever.encoding.weights import (
    DEFAULT_MODEL,
    RANDOM,
    cached_weights,
    default_tag,
    require_online,
    weights_url,
)
from retriever.errors import (
    BadSetting,
    CheckpointError,
    ModelMismatch,
    ModelNotFound,
    WeightsUnavailable,
)
from retriever.jsonfile import read_json

CHECKPOINT_FORMAT = "retriever-checkpoint"
CHECKPOINT_VERSION = 1
# Random weights are seeded so two processes building `--pretrained none` get the same model
# (an index built with random weights stays searchable; benchmarks compare identical compute).
RANDOM_SEED = 0

_BUNDLED_CONFIGS = Path(__file__).parent / "model_configs"
# An architecture name (a checkpoint's "arch", a config file's stem) becomes a config file's name
# when registered with open_clip: a plain name as open_clip's own (ViT-B-32, coca_ViT-L-14), no
# path, no "..", no scheme ("hf-hub:", "local-dir:" make open_clip read elsewhere)
ARCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,99}")
# The largest model built: ~2x open_clip's largest config (ViT-e-14, ~4.6e9 parameters as
# `estimated_parameters` counts them), 36 GB in fp32. A config asking for more is refused before
# anything is allocated.
MAX_PARAMETERS = 9_000_000_000
# What open_clip and torch raise building a model from a config, or loading weights into it,
# that does not fit (open_clip uses all of these; safetensors its own)
_MISFITS = (RuntimeError, AssertionError, KeyError, ValueError, TypeError, AttributeError,
            IndexError, ZeroDivisionError)


@cache
def register_bundled_configs() -> None:
    """Make open_clip know the bundled architectures (retriever-tiny) by name. `load_model`
    calls it; call it before asking open_clip itself about them. Once per process."""
    open_clip.add_model_config(_BUNDLED_CONFIGS)


def print_note(line: str) -> None:
    """The default `note` of `load_model`: one "note: ..." line on stderr."""
    print(f"note: {line}", file=sys.stderr)


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


def load_model(spec: ModelSpec, device: torch.device | None = None,
               note: Callable[[str], None] = print_note) -> LoadedModel:
    """Build the model `spec` names; see the module docstring for the resolution rules.

    `note` is told what the user may not expect (random weights)."""
    register_bundled_configs()
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
        pretrained = (default_tag(arch, open_clip.list_pretrained_tags_by_model(arch))
                      if config_path is None else RANDOM)
    if pretrained == RANDOM:
        note(f"{name} built with random weights (--pretrained none)")
        with _seeded(RANDOM_SEED):
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
        return _register(_plain_name(path.stem), cfg), path
    if model not in open_clip.list_models():
        raise ModelNotFound(
            f"unknown model {model!r}: pass an open_clip name (see `python -c "
            f"\"import open_clip; print(open_clip.list_models())\"`) or a model-config JSON path"
        )
    return model, None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        cfg = read_json(path)
    except OSError as err:
        raise ModelNotFound(f"model config {path} is not readable ({err})") from err
    if isinstance(cfg, dict):
        cfg = cfg.get("model_cfg", cfg)
    problem = config_problem(cfg)
    if problem is not None:
        raise BadSetting("model", str(path), f"{problem}: pass an open_clip model config")
    return cfg


def config_problem(cfg: Any) -> str | None:
    """Why `cfg` cannot be built (not an open_clip model config, or too large), or None."""
    if not (isinstance(cfg, dict) and "embed_dim" in cfg and isinstance(cfg.get("vision_cfg"), dict)
            and isinstance(cfg.get("text_cfg"), dict)):
        return "lacks the embed_dim, vision_cfg and text_cfg of an open_clip model config"
    try:
        n = estimated_parameters(cfg)
    except ValueError as err:
        return str(err)
    if n > MAX_PARAMETERS:
        return (f"asks for ~{n / 1e9:.1f} billion parameters ({4 * n / 1e9:.0f} GB in fp32), "
                f"over the {MAX_PARAMETERS / 1e9:.0f} billion retriever builds")
    return None


def estimated_parameters(cfg: dict[str, Any]) -> int:
    """Parameters an open_clip config asks for, from its sizes alone (within 3% for ViT-B-32,
    RN50 and ViT-L-14). A timm image tower or a Hugging Face text tower is named, not sized:
    it counts 0 (its size is the named model's). ValueError for a size that is not a number."""
    dim = _size(cfg, "embed_dim", 512)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    total = 0.0
    if not vision.get("timm_model_name"):
        width, side = _size(vision, "width", 768), _size(vision, "image_size", 224)
        if isinstance(vision.get("layers"), list | tuple):  # ModifiedResNet
            stages = _sizes(vision, "layers", 4)
            if len(stages) > 8:
                raise ValueError(f"layers has {len(stages)} stages, not 4")
            # stage i: bottlenecks of 17 (width 2^i)^2 each; then an attention pool
            total += sum(n * 17 * (width << i) ** 2 for i, n in enumerate(stages))
            embed = width * 32
            total += 4 * embed**2 + (side // 32) ** 2 * embed + embed * dim
        else:  # ViT: per layer 4 w^2 (attention) + 2 r w^2 (MLP); patches, positions
            patch = _size(vision, "patch_size", 16)
            total += _size(vision, "layers", 12) * width**2 * (4 + 2 * _ratio(vision))
            total += (side // patch) ** 2 * width + 3 * patch**2 * width + width * dim
    if not text.get("hf_model_name"):
        width = _size(text, "width", 512)
        total += (_size(text, "vocab_size", 49408) + _size(text, "context_length", 77)) * width
        total += _size(text, "layers", 12) * width**2 * (4 + 2 * _ratio(text)) + width * dim
    return int(total)


def _size(cfg: dict[str, Any], key: str, default: int) -> int:
    """cfg[key] as a positive int (the largest, for an [h, w] pair)."""
    return max(_sizes(cfg, key, default))


def _sizes(cfg: dict[str, Any], key: str, default: int) -> list[int]:
    """cfg[key], one size or a list of them, as positive ints up to 10^12 (past that, the
    arithmetic on them is what would take the time)."""
    value = cfg.get(key, default)
    values = list(value) if isinstance(value, list | tuple) and value else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 10**12
               for v in values):
        raise ValueError(f"{key} {str(value)[:40]!r} is not a whole number from 1 to 10^12")
    return values


def _ratio(cfg: dict[str, Any]) -> float:
    ratio = cfg.get("mlp_ratio", 4.0)
    if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0 < ratio < 1e6:
        raise ValueError(f"mlp_ratio {str(ratio)[:40]!r} is not a positive number")
    return float(ratio)


def _plain_name(stem: str) -> str:
    """A config file's stem as an architecture name (ARCH_NAME): other characters become "-"."""
    name = re.sub(r"[^A-Za-z0-9_+-]+", "-", stem).strip("-_+")[:100]
    return name or "config"


def _register(arch: str, cfg: dict[str, Any]) -> str:
    """Make `cfg` known to open_clip as `arch` (a differing built-in of that name is kept).
    `arch` must be a plain name (ARCH_NAME): it names the file open_clip reads the config from,
    which is written in a temporary folder of retriever's own."""
    if not ARCH_NAME.fullmatch(arch):
        raise ValueError(f"{arch[:40]!r} is not a plain architecture name")
    known = open_clip.get_model_config(arch)
    if known == cfg:
        return arch
    if known is not None:
        digest = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]
        arch = f"{arch[:90]}-{digest}"
        if open_clip.get_model_config(arch) == cfg:
            return arch
    # open_clip reads a config from a file; it keeps what it read after the file is gone
    with tempfile.TemporaryDirectory(prefix="retriever-config-") as folder:
        target = Path(folder) / f"{arch}.json"
        target.write_text(json.dumps(cfg))
        open_clip.add_model_config(target)
    return arch


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Draw from torch's CPU generator (where open_clip initialises weights) seeded with
    `seed`, and put its state back after: building a model leaves the caller's RNG alone."""
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


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
    payload = _read_weights(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        return _load_retriever_checkpoint(model, path, payload, device)
    problem = _state_dict_problem(payload)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} {problem}: {_CHECKPOINT_FIX}")
    return _load_state_file(model, path, device)


_CHECKPOINT_FIX = "pass a file written by `retriever train` or an open_clip state dict"


def _read_weights(path: Path) -> Any:
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
                              f"{_brief(err)}): {_CHECKPOINT_FIX}") from err


def _state_dict_problem(payload: Any) -> str | None:
    """Why `payload` is no open_clip state dict (a dict of tensors by name, or one held under
    "state_dict"), or None."""
    if isinstance(payload, dict) and "state_dict" in payload:
        payload = payload["state_dict"]
    if not isinstance(payload, dict):
        return f"holds a {type(payload).__name__}, not a state dict"
    if not payload or not all(isinstance(k, str) for k in payload):
        return "holds no tensors by name"
    return None


def _checkpoint_problem(payload: dict[str, Any]) -> str | None:
    """Why a retriever checkpoint's fields cannot be used, or None."""
    arch = payload.get("arch")
    if not isinstance(arch, str) or not ARCH_NAME.fullmatch(arch):
        return f"arch {str(arch)[:60]!r} is not a plain model name"
    problem = config_problem(payload.get("model_cfg"))
    if problem is not None:
        return f"model_cfg {problem}"
    state = payload.get("state_dict")
    if not isinstance(state, dict) or _state_dict_problem(state) is not None:
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


def _load_retriever_checkpoint(
    model: str | None, path: Path, payload: dict[str, Any], device: torch.device
) -> LoadedModel:
    problem = _checkpoint_problem(payload)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path}: {problem}: {_CHECKPOINT_FIX}")
    cfg = payload["model_cfg"]
    arch = _register(payload["arch"], cfg)
    if model is not None:
        wanted, _ = _resolve_arch(model)
        if open_clip.get_model_config(wanted) != cfg:
            raise ModelMismatch(
                f"checkpoint {path} holds a {payload['arch']} model, not {model}: "
                f"drop --model (the checkpoint describes itself)"
            )
    try:
        loaded = _build(arch, ModelId(arch, str(path)), device,
                        preprocess_cfg=payload.get("preprocess_cfg"))
        loaded.model.load_state_dict(payload["state_dict"])
    except _MISFITS as err:
        raise CheckpointError(f"checkpoint {path} does not fit its own config "
                              f"({type(err).__name__}: {_brief(err)})") from err
    loaded.model.to(device).eval()
    loaded.extra = dict(payload.get("extra") or {})
    return loaded


def _load_state_file(model: str | None, path: Path, device: torch.device) -> LoadedModel:
    """A plain open_clip state dict (e.g. open_clip_pytorch_model.bin); --model names the arch."""
    from safetensors import SafetensorError

    arch, config_path = _resolve_arch(model or DEFAULT_MODEL)
    try:
        return _build(arch, ModelId(str(config_path or arch), str(path)), device, weights=str(path))
    except (*_MISFITS, SafetensorError, StopIteration) as err:
        raise CheckpointError(
            f"weights {path} do not fit {model or DEFAULT_MODEL}: pass the matching --model "
            f"({type(err).__name__}: {_brief(err)})"
        ) from err


def _brief(err: BaseException) -> str:
    """An exception's message on one line, at most 300 characters (torch's name every key)."""
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _load_tag(arch: str, tag: str, device: torch.device) -> LoadedModel:
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none published"
        raise WeightsUnavailable(
            f"{arch} has no pretrained tag {tag!r} (known: {tags}); "
            f"pass a known tag or a local weights file to --pretrained"
        )
    cached = cached_weights(cfg)
    model_id = ModelId(arch, tag)
    if cached is None:
        require_online(weights_url(cfg), f"{arch} {tag}")
        return _build(arch, model_id, device, weights=tag)
    return _build(arch, model_id, device, weights=str(cached), preprocess_cfg=cfg)


def _load_hub(hub_id: str, device: torch.device) -> LoadedModel:
    from huggingface_hub import constants, try_to_load_from_cache

    repo = hub_id.removeprefix("hf-hub:")
    cached = try_to_load_from_cache(repo, "open_clip_config.json")
    if not isinstance(cached, str):
        require_online(constants.ENDPOINT, hub_id)
    try:
        return _build(hub_id, ModelId(hub_id, hub_id), device)
    except RuntimeError as err:
        raise WeightsUnavailable(f"cannot load {hub_id} from the hub ({err})") from err


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
